//! Version vectors as stored (`VersionVector::from_json`) and as pushed: a
//! parsed vector writes back to the same vector, and comparing or merging
//! it never panics.
#![no_main]

use echolia::events::version::VersionVector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(vector) = VersionVector::from_json(text) else { return };
    let written = vector.to_json();
    let again = VersionVector::from_json(&written).expect("what to_json writes parses");
    assert_eq!(again, vector);
    let _ = vector.compare(&again);
    assert!(!vector.dominates(&again));
    let mut merged = vector.clone();
    merged.merge(&again);
    assert_eq!(merged, vector);
});
