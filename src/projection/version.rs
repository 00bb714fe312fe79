//! Version vectors: device id → counter of that device's edits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A version vector. Ordered by device id, so its JSON form is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<Uuid, u64>);

impl VersionVector {
    pub fn single(device: Uuid, counter: u64) -> Self {
        Self(BTreeMap::from([(device, counter)]))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, device: &Uuid) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &u64)> {
        self.0.iter()
    }

    /// The canonical text stored in the log.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| unreachable!("a map of uuids to integers always serializes"))
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl FromIterator<(Uuid, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (Uuid, u64)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_canonical_and_round_trips() {
        let a = Uuid::from_bytes([1; 16]);
        let b = Uuid::from_bytes([2; 16]);
        let vv: VersionVector = [(b, 1), (a, 3)].into_iter().collect();
        let json = vv.to_json();
        assert_eq!(json, format!(r#"{{"{a}":3,"{b}":1}}"#));
        assert_eq!(VersionVector::from_json(&json).unwrap(), vv);
        assert_eq!(vv.get(&a), 3);
        assert_eq!(vv.get(&Uuid::nil()), 0);
    }
}
