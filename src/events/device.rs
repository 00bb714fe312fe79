//! The server's own events of kind `device`: a device registered, paired,
//! updated or revoked. Their payload is JSON the server writes (device
//! metadata, never user content); the `devices` view is their projection.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, NewEvent, Op};
use crate::events::version::VersionVector;

/// Form factor of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    Desktop,
    Mobile,
    Tablet,
    Web,
    Cli,
}

impl DeviceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Tablet => "tablet",
            Self::Web => "web",
            Self::Cli => "cli",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Desktop, Self::Mobile, Self::Tablet, Self::Web, Self::Cli].into_iter().find(|t| t.as_str() == text)
    }
}

/// What a device says about itself when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub device_name: String,
    pub device_type: DeviceType,
    pub platform: String,
    pub public_key: String,
    pub capabilities: serde_json::Map<String, serde_json::Value>,
}

/// The payload of a `device` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DeviceAction {
    /// The first device of a new user.
    Registered(DeviceProfile),
    /// A device enrolled by another (the event's `device_id`).
    Paired(DeviceProfile),
    /// New name or capabilities.
    Updated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capabilities: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// The device lost access (by the event's `device_id`).
    Revoked,
    /// The event's device sealed a new user key to every active device.
    KeysRotated { key_epoch: u64 },
}

impl DeviceAction {
    /// The event recording this action on `device` (the aggregate), whose
    /// `counter`th device event this is.
    pub fn into_event(self, device: Uuid, counter: u64, now: DateTime<Utc>) -> NewEvent {
        let payload = serde_json::to_vec(&self).unwrap_or_else(|_| unreachable!("device actions always serialize"));
        NewEvent {
            event_id: Uuid::new_v4(),
            kind: Kind::Device,
            aggregate_id: device,
            parent_id: None,
            op: Op::Put,
            version: VersionVector::single(device, counter),
            payload: Some(payload),
            client_time: now,
        }
    }

    pub fn from_payload(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}
