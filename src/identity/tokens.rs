//! Signed tokens: HS256 JWTs bound to one user and one device.
//!
//! Access tokens (1 hour) authenticate requests; refresh tokens (30 days) buy
//! a new pair once. The `typ` claim keeps one from passing for the other.
//! Expiry is checked against the service's [`Clock`](crate::clock::Clock),
//! not the library's, so tests can move time.

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

pub const ACCESS_TTL: Duration = Duration::hours(1);
pub const REFRESH_TTL: Duration = Duration::days(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// The device the token is bound to.
    pub did: Uuid,
    pub typ: TokenType,
    pub iat: i64,
    pub exp: i64,
    /// Unique per token, so two tokens issued in the same second differ.
    pub jti: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed or its signature does not verify")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("this kind of token is not accepted here")]
    WrongType,
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        let code = match err {
            TokenError::Expired => "token_expired",
            TokenError::Invalid | TokenError::WrongType => "invalid_token",
        };
        ApiError::unauthorized(code, err.to_string())
    }
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is ours to check (with the service clock); audience is unused.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// Signs a new token; returns it with its claims.
    pub fn issue(&self, typ: TokenType, user: Uuid, device: Uuid, now: DateTime<Utc>) -> (String, Claims) {
        let ttl = match typ {
            TokenType::Access => ACCESS_TTL,
            TokenType::Refresh => REFRESH_TTL,
        };
        let claims = Claims {
            sub: user,
            did: device,
            typ,
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
            jti: Uuid::new_v4(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_else(|_| unreachable!("HS256 signing of plain claims cannot fail"));
        (token, claims)
    }

    /// Checks signature, algorithm (HS256 only: `none` and others are refused),
    /// type and expiry.
    pub fn verify(&self, token: &str, expected: TokenType, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let claims = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| TokenError::Invalid)?.claims;
        if claims.typ != expected {
            return Err(TokenError::WrongType);
        }
        if claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use proptest::prelude::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32])
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let now = Utc::now();
        let (user, device) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, claims) = keys().issue(TokenType::Access, user, device, now);
        let verified = keys().verify(&token, TokenType::Access, now + Duration::minutes(59)).unwrap();
        assert_eq!(verified, claims);
        assert_eq!((verified.sub, verified.did), (user, device));
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(keys().verify(&token, TokenType::Access, now + ACCESS_TTL), Err(TokenError::Expired));
    }

    #[test]
    fn types_do_not_pass_for_each_other() {
        let now = Utc::now();
        let (access, _) = keys().issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now);
        let (refresh, claims) = keys().issue(TokenType::Refresh, Uuid::new_v4(), Uuid::new_v4(), now);
        assert_eq!(claims.exp - claims.iat, 30 * 24 * 3600);
        assert_eq!(keys().verify(&access, TokenType::Refresh, now), Err(TokenError::WrongType));
        assert_eq!(keys().verify(&refresh, TokenType::Access, now), Err(TokenError::WrongType));
    }

    #[test]
    fn other_keys_and_unsigned_tokens_are_refused() {
        let now = Utc::now();
        let (token, claims) = keys().issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now);
        assert_eq!(TokenKeys::new(&[8u8; 32]).verify(&token, TokenType::Access, now), Err(TokenError::Invalid));
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"HS512","typ":"JWT"}"#] {
            let forged = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
            assert_eq!(keys().verify(&forged, TokenType::Access, now), Err(TokenError::Invalid));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_verify(token in ".{0,300}") {
            prop_assert!(keys().verify(&token, TokenType::Access, Utc::now()).is_err());
        }

        #[test]
        fn any_altered_character_breaks_the_signature(index in any::<prop::sample::Index>()) {
            let now = Utc::now();
            let (token, _) = keys().issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now);
            let mut bytes = token.into_bytes();
            let at = index.index(bytes.len());
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            prop_assert!(keys().verify(&altered, TokenType::Access, now).is_err());
        }
    }
}
