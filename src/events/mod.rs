//! Events: what a device did, as appended to its user's log.

pub mod append;
pub mod device;
pub mod hash;
pub mod log;
pub mod verify;
pub mod version;
pub mod wire;

pub use append::{read_tip, LogTip, LogTx};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::version::VersionVector;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Entry,
    Memory,
    Tag,
    Embedding,
    /// The server's own: device registered, paired, updated, revoked.
    Device,
}

/// What the event does to its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entry => "entry",
            Self::Memory => "memory",
            Self::Tag => "tag",
            Self::Embedding => "embedding",
            Self::Device => "device",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Entry, Self::Memory, Self::Tag, Self::Embedding, Self::Device]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }

    /// The tag of the aggregate view this kind folds into, whose rows the
    /// writer's index maps by first seq (`store::IdIndex::created`); `None`
    /// for devices, whose view is keyed by device id.
    pub fn view_tag(self) -> Option<u8> {
        match self {
            Self::Device => None,
            kind => Some(kind as u8),
        }
    }
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "put" => Some(Self::Put),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// A validated event, before the server gives it a place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub kind: Kind,
    pub aggregate_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub op: Op,
    pub version: VersionVector,
    pub payload: Option<Vec<u8>>,
    pub client_time: DateTime<Utc>,
}

/// An event as it stands in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    /// The device that did it, from its token.
    pub device_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub hash: [u8; 32],
    pub event: NewEvent,
}
