//! Unit tests of App Store verification (compiled only for tests: `#[cfg(test)] mod tests;` in apple.rs).
#![cfg(test)]

use super::*;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/apple");
/// The chain tests' moment: 2025-11-01T02:09:35Z.
const EFFECTIVE_MS: i64 = 1_761_962_975_000;

fn read(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap()
}

fn verifier(root: &str) -> AppleVerifier {
    AppleVerifier::new(vec![read(root)], "com.example".into(), StoreEnvironment::Sandbox, None)
}

#[test]
fn the_test_chain_is_accepted_at_the_effective_date_with_the_leafs_key() {
    let key = verifier("chain/test_root_ca.der")
        .leaf_key(&read("chain/test_leaf.der"), &read("chain/test_intermediate.der"), EFFECTIVE_MS)
        .unwrap();
    let pem = String::from_utf8(read("chain/test_leaf_public_key.pem")).unwrap();
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let spki = STANDARD.decode(body).unwrap();
    assert!(spki.ends_with(&key), "the returned key is the leaf's");
}

#[test]
fn a_chain_without_the_apple_oids_is_rejected() {
    let test = verifier("chain/test_root_ca.der");
    let err = test
        .leaf_key(
            &read("chain/test_leaf_for_invalid_oid_intermediate.der"),
            &read("chain/test_intermediate_invalid_oid.der"),
            EFFECTIVE_MS,
        )
        .unwrap_err();
    assert_eq!(err, AppleError::Certificate("the intermediate lacks Apple's WWDR extension"));
    let err = test
        .leaf_key(&read("chain/test_leaf_invalid_oid.der"), &read("chain/test_intermediate.der"), EFFECTIVE_MS)
        .unwrap_err();
    assert_eq!(err, AppleError::Certificate("the leaf lacks Apple's receipt-signing extension"));
}

#[test]
fn a_chain_is_only_accepted_under_its_own_root_and_in_its_validity() {
    let (leaf, intermediate) = (read("chain/test_leaf.der"), read("chain/test_intermediate.der"));
    let apple = verifier("chain/apple_root_ca_g3.der");
    assert!(matches!(apple.leaf_key(&leaf, &intermediate, EFFECTIVE_MS), Err(AppleError::Chain(_))));
    let bundled = AppleVerifier::new(Vec::new(), "com.example".into(), StoreEnvironment::Production, Some(1));
    assert!(matches!(bundled.leaf_key(&leaf, &intermediate, EFFECTIVE_MS), Err(AppleError::Chain(_))));
    let test = verifier("chain/test_root_ca.der");
    // 2042-04-12: the leaf expired on 2033-01-01.
    assert!(matches!(test.leaf_key(&leaf, &intermediate, 2_280_946_846_000), Err(AppleError::Chain(_))));
}

#[test]
fn apples_production_chain_is_accepted_under_the_bundled_root_only() {
    let (leaf, intermediate) =
        (read("chain/apple_prod_signing_leaf.der"), read("chain/apple_wwdr_g6_intermediate.der"));
    let bundled = AppleVerifier::new(Vec::new(), "com.example".into(), StoreEnvironment::Production, Some(1));
    assert_eq!(bundled.leaf_key(&leaf, &intermediate, EFFECTIVE_MS).unwrap().len(), 65);
    assert_eq!(read("chain/apple_root_ca_g3.der"), APPLE_ROOT_CA_G3, "the bundled root is Apple's");
    let test = verifier("chain/test_root_ca.der");
    assert!(matches!(test.leaf_key(&leaf, &intermediate, EFFECTIVE_MS), Err(AppleError::Chain(_))));
}

#[test]
fn garbage_certificates_are_rejected() {
    let test = verifier("chain/test_root_ca.der");
    let intermediate = read("chain/test_intermediate.der");
    for leaf in [b"abc".to_vec(), STANDARD.encode("abc").into_bytes()] {
        assert!(test.leaf_key(&leaf, &intermediate, EFFECTIVE_MS).is_err());
    }
}
