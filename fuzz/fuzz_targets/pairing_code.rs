//! What a person types as a pairing code: `normalize` yields a canonical
//! 8-character Crockford code or nothing, and the canonical form of a code
//! as shown (`XXXX-XXXX`) is the code.
#![no_main]

use echolia::auth::pairing::code::{display, normalize, CODE_CHARS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(code) = normalize(text) {
        assert_eq!(code.len(), CODE_CHARS);
        assert!(code.bytes().all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)));
        assert_eq!(normalize(&display(&code)).as_deref(), Some(code.as_str()));
        assert_eq!(normalize(&code.to_lowercase()).as_deref(), Some(code.as_str()));
    }
});
