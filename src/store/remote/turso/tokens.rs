//! Database tokens: minted through the Platform API once per database and
//! kept until three quarters of their life has passed (so a request never
//! carries one about to expire), then minted again. One mint at a time per
//! database; a token the database refused is forgotten at once (on the
//! batch path, which knows whose it was; on libSQL's client, which does not,
//! every token minted before the refusal: [`super::super::refusals`]).
//! Tokens are secrets: never logged, never in `Debug`.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use secrecy::{ExposeSecret, SecretString};

use super::super::{refusals, same_token};
use super::platform::Platform;
use crate::config::turso::TokenExpiration;
use crate::store::StoreResult;

pub struct Tokens {
    platform: Arc<Platform>,
    expiration: TokenExpiration,
    /// By database name; bounded (a database not used for long mints again).
    slots: Mutex<LruCache<String, Slot>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Minted>>>;

struct Minted {
    token: SecretString,
    renew_at: Instant,
    /// [`refusals`] when it was minted.
    refusals: u64,
}

impl Tokens {
    pub fn new(platform: Arc<Platform>, expiration: TokenExpiration, capacity: NonZeroUsize) -> Self {
        Self { platform, expiration, slots: Mutex::new(LruCache::new(capacity)) }
    }

    fn slot(&self, name: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.get_or_insert_ref(name, Slot::default).clone()
    }

    /// The token of `name` for a request now.
    pub async fn get(&self, name: &str) -> StoreResult<SecretString> {
        let slot = self.slot(name);
        let mut minted = slot.lock().await;
        if let Some(current) = minted.as_ref().filter(|m| Instant::now() < m.renew_at && m.refusals == refusals()) {
            return Ok(current.token.clone());
        }
        let seen = refusals();
        let token = self.platform.mint_token(name, &self.expiration.text).await?;
        metrics::counter!("echolia_turso_tokens_minted_total").increment(1);
        // Its own `exp` says how long it lives, if it says.
        let life = expires_in(&token).map_or(self.expiration.duration, |left| left.min(self.expiration.duration));
        *minted = Some(Minted { token: token.clone(), renew_at: Instant::now() + life.mul_f64(0.75), refusals: seen });
        Ok(token)
    }

    /// `token` was refused: the next request mints another (unless one
    /// newer is cached already, or a mint is under way).
    pub fn forget(&self, name: &str, token: &SecretString) {
        let slot = self.slot(name);
        let Ok(mut minted) = slot.try_lock() else { return };
        if minted.as_ref().is_some_and(|m| same_token(&m.token, token)) {
            *minted = None;
        }
    }

    /// The database is gone: its token with it.
    pub fn remove(&self, name: &str) {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop(name);
    }
}

/// How long a JWT has left, from its `exp` claim (read, not verified: the
/// database verifies it; this only schedules the next mint).
fn expires_in(token: &SecretString) -> Option<Duration> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    let payload = token.expose_secret().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<Claims>(&json).ok()?.exp?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

/// The token of one database, for its clients ([`crate::store::remote::Auth::Minted`]).
#[derive(Clone)]
pub struct DatabaseToken {
    tokens: Arc<Tokens>,
    name: Arc<str>,
}

impl DatabaseToken {
    pub fn new(tokens: Arc<Tokens>, name: &str) -> Self {
        Self { tokens, name: name.into() }
    }

    pub async fn get(&self) -> StoreResult<SecretString> {
        self.tokens.get(&self.name).await
    }

    pub fn forget(&self, token: &SecretString) {
        self.tokens.forget(&self.name, token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_expiry_is_read_from_its_claims() {
        use base64::Engine;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let token = |claims: &str| SecretString::from(format!("{}.{}.sig", encode("{}"), encode(claims)));
        let left = expires_in(&token(&format!(r#"{{"a":"rw","exp":{}}}"#, now + 100))).unwrap();
        assert!(left <= Duration::from_secs(100) && left >= Duration::from_secs(98), "{left:?}");
        assert_eq!(expires_in(&token(&format!(r#"{{"exp":{}}}"#, now - 5))), Some(Duration::ZERO));
        assert_eq!(expires_in(&token(r#"{"a":"rw"}"#)), None);
        assert_eq!(expires_in(&SecretString::from("not a jwt".to_owned())), None);
    }
}
