//! Version vectors: device id → counter of that device's edits.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// A version vector. Ordered by device id, so its JSON form is canonical.
/// Keys are always UUID strings, in MessagePack too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<Uuid, u64>);

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left side happened before the right (strictly dominated by it).
    Before,
    /// The left side strictly dominates the right.
    After,
    Concurrent,
}

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (device, counter) in &self.0 {
            map.serialize_entry(&device.hyphenated(), counter)?;
        }
        map.end()
    }
}

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

    /// Compares causally: counters missing on one side count as 0. One walk
    /// over both vectors in key order (linear in their lengths), stopping as
    /// soon as they are known to be concurrent.
    pub fn compare(&self, other: &Self) -> Causality {
        use std::cmp::Ordering;
        let (mut less, mut greater) = (false, false);
        let (mut mine, mut theirs) = (self.0.iter().peekable(), other.0.iter().peekable());
        while !(less && greater) {
            let step = match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                // A device on one side only: its counter (≥ 1 once pushed) against 0.
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            let order = match step {
                Ordering::Less => mine.next().map_or(Ordering::Equal, |(_, counter)| counter.cmp(&0)),
                Ordering::Greater => theirs.next().map_or(Ordering::Equal, |(_, counter)| 0.cmp(counter)),
                Ordering::Equal => match (mine.next(), theirs.next()) {
                    (Some((_, a)), Some((_, b))) => a.cmp(b),
                    _ => Ordering::Equal,
                },
            };
            match order {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` strictly dominates `other`: every counter at least as
    /// high, and the vectors differ.
    pub fn dominates(&self, other: &Self) -> bool {
        self.compare(other) == Causality::After
    }

    /// Raises every counter to the maximum of both sides.
    pub fn merge(&mut self, other: &Self) {
        for (device, counter) in &other.0 {
            let mine = self.0.entry(*device).or_insert(0);
            *mine = (*mine).max(*counter);
        }
    }

    /// The canonical text stored in the log: what `serde_json` writes for
    /// it, byte for byte (a test checks), written directly.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(2 + self.0.len() * 48);
        self.write_json(&mut out);
        out
    }

    /// Appends [`VersionVector::to_json`]'s text to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        for (i, (device, counter)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(device.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
            out.push_str("\":");
            out.push_str(itoa::Buffer::new().format(*counter));
        }
        out.push('}');
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
    use proptest::prelude::*;

    fn device() -> impl Strategy<Value = Uuid> {
        (0u8..4).prop_map(|n| Uuid::from_bytes([n; 16]))
    }

    fn vector() -> impl Strategy<Value = VersionVector> {
        // Few devices, small counters: plenty of equal, ordered and concurrent pairs.
        prop::collection::btree_map(device(), 0u64..4, 0..4)
            .prop_map(|map| map.into_iter().filter(|(_, c)| *c > 0).collect())
    }

    /// `v` with the counters of at least one device raised: it strictly dominates `v`.
    fn raised(v: &VersionVector) -> impl Strategy<Value = VersionVector> {
        let v = v.clone();
        prop::collection::btree_map(device(), 1u64..4, 1..4).prop_map(move |raises| {
            let mut up = v.clone();
            up.merge(&raises.into_iter().map(|(device, by)| (device, v.get(&device) + by)).collect());
            up
        })
    }

    /// `(a, b, c)` with `c < b < a`: each built from the one below by raising counters.
    fn ordered_triple() -> impl Strategy<Value = (VersionVector, VersionVector, VersionVector)> {
        vector().prop_flat_map(|c| (raised(&c), Just(c))).prop_flat_map(|(b, c)| (raised(&b), Just(b), Just(c)))
    }

    proptest! {
        #[test]
        fn the_direct_json_is_serde_jsons(v in vector()) {
            prop_assert_eq!(v.to_json(), serde_json::to_string(&v).unwrap());
        }

        #[test]
        fn compare_is_antisymmetric(a in vector(), b in vector()) {
            let expected = match a.compare(&b) {
                Causality::Equal => Causality::Equal,
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                Causality::Concurrent => Causality::Concurrent,
            };
            prop_assert_eq!(b.compare(&a), expected);
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }

        #[test]
        fn compare_agrees_with_the_counters(a in vector(), b in vector()) {
            let devices: Vec<&Uuid> = a.0.keys().chain(b.0.keys()).collect();
            let less = devices.iter().any(|d| a.get(d) < b.get(d));
            let greater = devices.iter().any(|d| a.get(d) > b.get(d));
            let expected = match (less, greater) {
                (false, false) => Causality::Equal,
                (true, false) => Causality::Before,
                (false, true) => Causality::After,
                (true, true) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
        }

        #[test]
        fn dominance_is_transitive((a, b, c) in ordered_triple()) {
            prop_assert!(a.dominates(&b) && b.dominates(&c), "the premise holds by construction");
            prop_assert!(a.dominates(&c));
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in vector(), b in vector()) {
            let mut merged = a.clone();
            merged.merge(&b);
            prop_assert!(matches!(merged.compare(&a), Causality::After | Causality::Equal));
            prop_assert!(matches!(merged.compare(&b), Causality::After | Causality::Equal));
            let mut other_way = b.clone();
            other_way.merge(&a);
            prop_assert_eq!(&merged, &other_way);
            for (device, counter) in merged.iter() {
                prop_assert_eq!(*counter, a.get(device).max(b.get(device)));
            }
        }
    }

    #[test]
    fn missing_counters_count_as_zero() {
        let (a, b) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
        let one: VersionVector = [(a, 1)].into_iter().collect();
        let both: VersionVector = [(a, 1), (b, 1)].into_iter().collect();
        let other: VersionVector = [(b, 2)].into_iter().collect();
        assert_eq!(both.compare(&one), Causality::After);
        assert_eq!(one.compare(&both), Causality::Before);
        assert_eq!(one.compare(&other), Causality::Concurrent);
        assert!(both.dominates(&one));
        assert!(!one.dominates(&one));
    }

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
