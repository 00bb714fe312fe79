//! Access and refresh tokens: `TokenKeys::verify` on any string refuses
//! without panicking; and claims of any shape signed with the right key
//! (so parsing gets past the signature) are accepted only when well-formed.
#![no_main]

use chrono::{TimeZone, Utc};
use echolia::identity::sessions::token_hash;
use echolia::identity::tokens::{key_id, TokenKeys, TokenType};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef-0123456789";
const PREVIOUS: &[u8] = b"fuzzing-previous-0123456789abcdef-01234567";

fuzz_target!(|data: &[u8]| {
    let keys = TokenKeys::new(SECRET, &[PREVIOUS]);
    let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    if let Ok(token) = std::str::from_utf8(data) {
        for typ in [TokenType::Access, TokenType::Refresh] {
            assert!(keys.verify(token, typ, now).is_err(), "a random string verified");
        }
        let _ = token_hash(token);
    }
    // The same bytes as the claims of a correctly signed token.
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key_id(PREVIOUS));
    let Ok(token) = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(PREVIOUS)) else { return };
    for typ in [TokenType::Access, TokenType::Refresh] {
        if let Ok(verified) = keys.verify(&token, typ, now) {
            assert_eq!(verified.typ, typ);
            assert!(verified.exp + 60 > now.timestamp());
        }
    }
});
