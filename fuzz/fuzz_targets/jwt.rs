//! Access and refresh tokens: `TokenKeys::verify` on any string never
//! panics; and claims of any shape signed with a configured key (so parsing
//! gets past the signature) are accepted only when well-formed, of the asked
//! type and within their lifetime.
#![no_main]

use chrono::{DateTime, TimeZone, Utc};
use echolia::identity::sessions::token_hash;
use echolia::identity::tokens::{key_id, Claims, TokenKeys, TokenType, CLOCK_SKEW};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef-0123456789";
const PREVIOUS: &[u8] = b"fuzzing-previous-0123456789abcdef-01234567";

fuzz_target!(|data: &[u8]| {
    let keys = TokenKeys::new(SECRET, &[PREVIOUS]).unwrap();
    let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    // The bytes as a token: whatever verifies is of the asked type, issued
    // and unexpired within the clock skew (a seed is a real token).
    if let Ok(token) = std::str::from_utf8(data) {
        for typ in [TokenType::Access, TokenType::Refresh] {
            if let Ok(verified) = keys.verify(token, typ, now) {
                check(&verified, typ, now);
            }
        }
        let _ = token_hash(token);
    }
    // The same bytes as the claims of a correctly signed token.
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key_id(PREVIOUS).unwrap());
    let Ok(token) = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(PREVIOUS)) else { return };
    for typ in [TokenType::Access, TokenType::Refresh] {
        if let Ok(verified) = keys.verify(&token, typ, now) {
            check(&verified, typ, now);
        }
    }
});

fn check(claims: &Claims, typ: TokenType, now: DateTime<Utc>) {
    assert_eq!(claims.typ, typ);
    assert!(claims.exp.saturating_add(CLOCK_SKEW.num_seconds()) > now.timestamp(), "expired, yet verified");
    assert!(claims.iat <= (now + CLOCK_SKEW).timestamp(), "issued in the future, yet verified");
    assert!(claims.exp - claims.iat <= (typ.ttl() + CLOCK_SKEW).num_seconds(), "lives too long, yet verified");
}
