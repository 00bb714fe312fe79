//! Signed tokens: HS256 JWTs bound to one user and one device.
//!
//! Access tokens (1 hour) authenticate requests; refresh tokens (30 days) buy
//! a new pair once. The `typ` claim keeps one from passing for the other.
//! Expiry is checked against the service's [`Clock`](crate::clock::Clock),
//! not the library's, so tests can move time.
//!
//! Every token names its key in the `kid` header, so the secret can rotate:
//! new tokens are signed with the current key, and tokens of the previous
//! keys (`JWT_PREVIOUS_SECRETS`) verify until they expire (SECURITY.md).

use chrono::{DateTime, Duration, Utc};
use hmac::digest::InvalidLength;
use hmac::{Hmac, Mac};
use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::error::ApiError;

pub const ACCESS_TTL: Duration = Duration::hours(1);
pub const REFRESH_TTL: Duration = Duration::days(30);

/// How far the clocks of servers sharing one secret may disagree: a token
/// stays valid until this long after its `exp`, and one issued (`iat`) more
/// than this far in the future is refused. Devices' clocks play no part.
pub const CLOCK_SKEW: Duration = Duration::seconds(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

impl TokenType {
    /// How long a token of this type lives.
    pub fn ttl(self) -> Duration {
        match self {
            TokenType::Access => ACCESS_TTL,
            TokenType::Refresh => REFRESH_TTL,
        }
    }
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

/// One signing secret and the id tokens name it by.
struct Key {
    kid: String,
    decoding: DecodingKey,
}

/// The id of a secret: the first 8 bytes of HMAC-SHA256(secret,
/// "echolia-jwt-kid") in hex. It tells keys apart without revealing them.
/// (HMAC takes a key of any length; the error is the library's signature.)
pub fn key_id(secret: &[u8]) -> Result<String, InvalidLength> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)?;
    mac.update(b"echolia-jwt-kid");
    Ok(hex::encode(&mac.finalize().into_bytes()[..8]))
}

pub struct TokenKeys {
    encoding: EncodingKey,
    /// The `kid` of `encoding`.
    kid: String,
    /// The current key first, then the previous ones, newest first.
    keys: Vec<Key>,
    validation: Validation,
}

impl TokenKeys {
    /// Keys that sign with `current` and also verify tokens of `previous`.
    pub fn new(current: &[u8], previous: &[&[u8]]) -> Result<Self, InvalidLength> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is ours to check (with the service clock); audience is unused.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut keys: Vec<Key> = Vec::with_capacity(1 + previous.len());
        for secret in std::iter::once(current).chain(previous.iter().copied()) {
            let kid = key_id(secret)?;
            if keys.iter().all(|key| key.kid != kid) {
                keys.push(Key { kid, decoding: DecodingKey::from_secret(secret) });
            }
        }
        Ok(Self { encoding: EncodingKey::from_secret(current), kid: key_id(current)?, keys, validation })
    }

    /// The `kid` of the key new tokens are signed with.
    pub fn current_kid(&self) -> &str {
        &self.kid
    }

    /// Signs a new token with the current key; returns it with its claims.
    pub fn issue(
        &self,
        typ: TokenType,
        user: Uuid,
        device: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(String, Claims), jsonwebtoken::errors::Error> {
        let ttl = typ.ttl();
        let claims = Claims {
            sub: user,
            did: device,
            typ,
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
            jti: Uuid::new_v4(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current_kid().to_owned());
        let token = encode(&header, &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// Checks signature (with the key its `kid` names; without a `kid`, with
    /// any configured key), algorithm (HS256 only: `none` and others are
    /// refused), type, issue time, expiry and lifetime (`exp - iat` at most
    /// the type's TTL plus [`CLOCK_SKEW`]: a leaked signing key aside, no
    /// token lives longer than the server would have issued it), with
    /// [`CLOCK_SKEW`] either way.
    pub fn verify(&self, token: &str, expected: TokenType, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Invalid)?;
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => self.keys.iter().filter(|key| key.kid == *kid).collect(),
            None => self.keys.iter().collect(),
        };
        let claims = candidates
            .iter()
            .find_map(|key| decode::<Claims>(token, &key.decoding, &self.validation).ok())
            .ok_or(TokenError::Invalid)?
            .claims;
        if claims.typ != expected {
            return Err(TokenError::WrongType);
        }
        if claims.iat > (now + CLOCK_SKEW).timestamp() {
            return Err(TokenError::Invalid);
        }
        // Saturating: a signed `exp` near i64::MAX must not overflow.
        if claims.exp.saturating_add(CLOCK_SKEW.num_seconds()) <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        // Checked: `exp - iat` of signed extremes must not overflow.
        let lifetime = claims.exp.checked_sub(claims.iat).ok_or(TokenError::Invalid)?;
        if lifetime > (expected.ttl() + CLOCK_SKEW).num_seconds() {
            return Err(TokenError::Invalid);
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
        TokenKeys::new(&[7u8; 32], &[]).unwrap()
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let now = Utc::now();
        let (user, device) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, claims) = keys().issue(TokenType::Access, user, device, now).unwrap();
        let verified = keys().verify(&token, TokenType::Access, now + Duration::minutes(59)).unwrap();
        assert_eq!(verified, claims);
        assert_eq!((verified.sub, verified.did), (user, device));
        assert_eq!(claims.exp - claims.iat, 3600);
        assert!(keys().verify(&token, TokenType::Access, now + ACCESS_TTL).is_ok(), "within the clock skew");
        let skew_ends = now + ACCESS_TTL + CLOCK_SKEW;
        assert!(keys().verify(&token, TokenType::Access, skew_ends - Duration::seconds(1)).is_ok());
        assert_eq!(keys().verify(&token, TokenType::Access, skew_ends), Err(TokenError::Expired));
    }

    #[test]
    fn types_do_not_pass_for_each_other() {
        let now = Utc::now();
        let (access, _) = keys().issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now).unwrap();
        let (refresh, claims) = keys().issue(TokenType::Refresh, Uuid::new_v4(), Uuid::new_v4(), now).unwrap();
        assert_eq!(claims.exp - claims.iat, 30 * 24 * 3600);
        assert_eq!(keys().verify(&access, TokenType::Refresh, now), Err(TokenError::WrongType));
        assert_eq!(keys().verify(&refresh, TokenType::Access, now), Err(TokenError::WrongType));
    }

    #[test]
    fn other_keys_and_unsigned_tokens_are_refused() {
        let now = Utc::now();
        let (token, claims) = keys().issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now).unwrap();
        assert_eq!(
            TokenKeys::new(&[8u8; 32], &[]).unwrap().verify(&token, TokenType::Access, now),
            Err(TokenError::Invalid)
        );
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"HS512","typ":"JWT"}"#] {
            let forged = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
            assert_eq!(keys().verify(&forged, TokenType::Access, now), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn tokens_issued_in_the_future_beyond_the_skew_are_refused() {
        let now = Utc::now();
        let (token, _) = keys().issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now).unwrap();
        // Another server whose clock runs up to CLOCK_SKEW ahead issued it.
        assert!(keys().verify(&token, TokenType::Access, now - CLOCK_SKEW).is_ok());
        let behind = now - CLOCK_SKEW - Duration::seconds(1);
        assert_eq!(keys().verify(&token, TokenType::Access, behind), Err(TokenError::Invalid));
    }

    #[test]
    fn tokens_name_their_key_and_previous_keys_verify_until_expiry() {
        let now = Utc::now();
        let (old, new) = ([7u8; 32], [9u8; 32]);
        let before = TokenKeys::new(&old, &[]).unwrap();
        let (token, claims) = before.issue(TokenType::Refresh, Uuid::new_v4(), Uuid::new_v4(), now).unwrap();
        assert_eq!(decode_header(&token).unwrap().kid.as_deref(), Some(key_id(&old).unwrap().as_str()));

        let rotated = TokenKeys::new(&new, &[&old]).unwrap();
        assert_eq!(rotated.current_kid(), key_id(&new).unwrap());
        assert_eq!(rotated.verify(&token, TokenType::Refresh, now).unwrap(), claims);
        let expired_at = now + REFRESH_TTL + CLOCK_SKEW;
        assert_eq!(rotated.verify(&token, TokenType::Refresh, expired_at), Err(TokenError::Expired));
        let (fresh, _) = rotated.issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now).unwrap();
        assert_eq!(decode_header(&fresh).unwrap().kid.as_deref(), Some(key_id(&new).unwrap().as_str()));
        assert_eq!(
            before.verify(&fresh, TokenType::Access, now),
            Err(TokenError::Invalid),
            "the old key cannot verify new tokens"
        );

        // Dropped from the previous keys (it leaked): its tokens stop at once.
        assert_eq!(
            TokenKeys::new(&new, &[]).unwrap().verify(&token, TokenType::Refresh, now),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_kid_naming_no_key_is_refused_and_a_missing_kid_tries_every_key() {
        let now = Utc::now();
        let old = [7u8; 32];
        let rotated = TokenKeys::new(&[9u8; 32], &[&old]).unwrap();
        let claims = Claims {
            sub: Uuid::new_v4(),
            did: Uuid::new_v4(),
            typ: TokenType::Access,
            iat: now.timestamp(),
            exp: (now + ACCESS_TTL).timestamp(),
            jti: Uuid::new_v4(),
        };
        let sign = |kid: Option<&str>| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            encode(&header, &claims, &EncodingKey::from_secret(&old)).unwrap()
        };
        assert_eq!(rotated.verify(&sign(None), TokenType::Access, now).unwrap(), claims);
        assert_eq!(rotated.verify(&sign(Some("0011223344556677")), TokenType::Access, now), Err(TokenError::Invalid));
        let current = key_id(&[9u8; 32]).unwrap();
        assert_eq!(
            rotated.verify(&sign(Some(&current)), TokenType::Access, now),
            Err(TokenError::Invalid),
            "signed by the old key but naming the new one"
        );
    }

    #[test]
    fn extreme_times_in_signed_claims_neither_overflow_nor_pass() {
        let now = Utc::now();
        let sign = |iat: i64, exp: i64| {
            let claims = serde_json::json!({"sub": Uuid::new_v4(), "did": Uuid::new_v4(), "typ": "access",
                                            "iat": iat, "exp": exp, "jti": Uuid::new_v4()});
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(key_id(&[7u8; 32]).unwrap());
            encode(&header, &claims, &EncodingKey::from_secret(&[7u8; 32])).unwrap()
        };
        let t = now.timestamp();
        // Lifetimes longer than the server issues are refused, however signed.
        assert_eq!(keys().verify(&sign(t, i64::MAX), TokenType::Access, now), Err(TokenError::Invalid));
        assert_eq!(keys().verify(&sign(i64::MIN, i64::MAX), TokenType::Access, now), Err(TokenError::Invalid));
        assert_eq!(keys().verify(&sign(i64::MIN, t + 60), TokenType::Access, now), Err(TokenError::Invalid));
        assert_eq!(keys().verify(&sign(t, i64::MIN), TokenType::Access, now), Err(TokenError::Expired));
        assert_eq!(keys().verify(&sign(i64::MAX, i64::MAX), TokenType::Access, now), Err(TokenError::Invalid));
        assert_eq!(keys().verify(&sign(i64::MAX, i64::MIN), TokenType::Access, now), Err(TokenError::Invalid));
    }

    #[test]
    fn a_lifetime_beyond_the_types_ttl_is_refused() {
        let now = Utc::now();
        let t = now.timestamp();
        let sign = |typ: &str, iat: i64, exp: i64| {
            let claims = serde_json::json!({"sub": Uuid::new_v4(), "did": Uuid::new_v4(), "typ": typ,
                                            "iat": iat, "exp": exp, "jti": Uuid::new_v4()});
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(key_id(&[7u8; 32]).unwrap());
            encode(&header, &claims, &EncodingKey::from_secret(&[7u8; 32])).unwrap()
        };
        let (access, refresh, skew) = (ACCESS_TTL.num_seconds(), REFRESH_TTL.num_seconds(), CLOCK_SKEW.num_seconds());
        let verify = |token: &str, typ| keys().verify(token, typ, now).map(|_| ());
        assert_eq!(verify(&sign("access", t, t + access + skew), TokenType::Access), Ok(()));
        assert_eq!(verify(&sign("access", t, t + access + skew + 1), TokenType::Access), Err(TokenError::Invalid));
        assert_eq!(verify(&sign("access", t, t + refresh), TokenType::Access), Err(TokenError::Invalid));
        assert_eq!(verify(&sign("refresh", t, t + refresh + skew), TokenType::Refresh), Ok(()));
        assert_eq!(verify(&sign("refresh", t, t + refresh + skew + 1), TokenType::Refresh), Err(TokenError::Invalid));
        // Issued long ago with an expiry still ahead: too long-lived.
        assert_eq!(verify(&sign("access", t - 10 * access, t + access), TokenType::Access), Err(TokenError::Invalid));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_verify(token in ".{0,300}") {
            prop_assert!(keys().verify(&token, TokenType::Access, Utc::now()).is_err());
        }

        #[test]
        fn any_altered_character_breaks_the_signature(index in any::<prop::sample::Index>()) {
            let now = Utc::now();
            let (token, _) = keys().issue(TokenType::Access, Uuid::new_v4(), Uuid::new_v4(), now).unwrap();
            let mut bytes = token.into_bytes();
            let at = index.index(bytes.len());
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            prop_assert!(keys().verify(&altered, TokenType::Access, now).is_err());
        }
    }
}
