//! Pairing codes: 8 Crockford base32 characters (40 bits from `rand`'s
//! thread-local CSPRNG, ChaCha12 seeded by the OS),
//! shown as `XXXX-XXXX`. Input is forgiving the way Crockford intends:
//! case-insensitive, hyphens and spaces ignored, `I`/`L` read as `1`, `O` as `0`.
//! Stored only as `identity::pairings::CodeKey::hash` of the canonical form.

use rand::RngCore;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
pub const CODE_CHARS: usize = 8;

/// A fresh code in its canonical form (no hyphen).
pub fn generate() -> String {
    let mut bytes = [0u8; 5];
    rand::rng().fill_bytes(&mut bytes);
    let bits = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    (0..CODE_CHARS).rev().map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char).collect()
}

/// `ABCD1234` → `ABCD-1234`.
pub fn display(code: &str) -> String {
    let (left, right) = code.split_at(code.len() / 2);
    format!("{left}-{right}")
}

/// The canonical form of what a person typed, or `None` if it cannot be a code.
pub fn normalize(input: &str) -> Option<String> {
    let mut code = String::with_capacity(CODE_CHARS);
    for c in input.chars().filter(|c| !matches!(c, '-' | ' ')) {
        let c = match c.to_ascii_uppercase() {
            'I' | 'L' => '1',
            'O' => '0',
            other => other,
        };
        if !ALPHABET.contains(&(c as u8)) || !c.is_ascii() {
            return None;
        }
        code.push(c);
    }
    (code.len() == CODE_CHARS).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_are_eight_crockford_characters() {
        let codes: std::collections::HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert!(codes.len() > 990, "40 random bits rarely repeat");
        for code in &codes {
            assert_eq!(code.len(), 8);
            assert_eq!(normalize(code).as_deref(), Some(code.as_str()));
            assert_eq!(display(code).len(), 9);
        }
    }

    #[test]
    fn typing_is_forgiving_but_not_lax() {
        assert_eq!(normalize("abcd-efgh").as_deref(), Some("ABCDEFGH"));
        assert_eq!(normalize(" o1l i-2345 ").as_deref(), Some("01112345"));
        assert_eq!(normalize("ABCD-EFG"), None);
        assert_eq!(normalize("ABCD-EFGHJ"), None);
        assert_eq!(normalize("ABCD-EFGU"), None, "U is not in the alphabet");
        assert_eq!(normalize("ABCD-EFG!"), None);
        assert_eq!(normalize("ABCD-EFGÉ"), None);
    }

    proptest! {
        #[test]
        fn normalize_never_panics_and_only_yields_valid_codes(input in ".{0,20}") {
            if let Some(code) = normalize(&input) {
                prop_assert_eq!(code.len(), CODE_CHARS);
                prop_assert!(code.bytes().all(|b| ALPHABET.contains(&b)));
            }
        }
    }
}
