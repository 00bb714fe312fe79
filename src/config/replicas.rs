//! `EMBEDDED_REPLICAS`: reads of a remote backend from local replica files
//! ([`crate::store::replica`]). Off unless asked for; only with a remote
//! `DATABASE_BACKEND`, and only in a build with the `embedded-replicas` feature.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::{invalid, parse_or, BackendKind, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// How often every open replica syncs (`REPLICA_SYNC_INTERVAL_MS`).
    pub sync_interval: Duration,
    /// The oldest a replica may be and still answer a read
    /// (`REPLICA_MAX_STALENESS_MS`); past it a read syncs first, or goes
    /// to the primary. 0: every read syncs first.
    pub max_staleness: Duration,
    /// The longest one sync may take (`REPLICA_SYNC_TIMEOUT_MS`): libSQL has no timeout of its own.
    pub sync_timeout: Duration,
    /// Replicas held open at once (`MAX_OPEN_REPLICAS`, least recently used closed first).
    pub max_open: NonZeroUsize,
}

/// `None` unless `EMBEDDED_REPLICAS=true`.
pub fn from_lookup(
    get: &dyn Fn(&str) -> Option<String>,
    backend: &BackendKind,
) -> Result<Option<ReplicaConfig>, ConfigError> {
    const FLAG: &str = "EMBEDDED_REPLICAS";
    match get(FLAG).as_deref() {
        None | Some("false") => return Ok(None),
        Some("true") => {}
        Some(other) => return Err(invalid(FLAG, format!("`{other}` is not true or false"))),
    }
    if !cfg!(feature = "embedded-replicas") {
        return Err(invalid(FLAG, "this build has no embedded replicas (the `embedded-replicas` cargo feature)"));
    }
    match backend {
        BackendKind::Local => {
            return Err(invalid(
                FLAG,
                "embedded replicas need a remote DATABASE_BACKEND (sqld or turso); `local` reads its files",
            ))
        }
        BackendKind::Sqld(_) | BackendKind::Turso(_) => {}
    }
    let millis = |variable: &'static str, default: &str, min: u64| -> Result<Duration, ConfigError> {
        let ms: u64 = parse_or(variable, get(variable), default)?;
        if !(min..=3_600_000).contains(&ms) {
            return Err(invalid(variable, format!("`{ms}` is not {min} to 3600000 milliseconds")));
        }
        Ok(Duration::from_millis(ms))
    };
    let config = ReplicaConfig {
        sync_interval: millis("REPLICA_SYNC_INTERVAL_MS", "1000", 10)?,
        max_staleness: millis("REPLICA_MAX_STALENESS_MS", "5000", 0)?,
        sync_timeout: millis("REPLICA_SYNC_TIMEOUT_MS", "5000", 100)?,
        max_open: parse_or("MAX_OPEN_REPLICAS", get("MAX_OPEN_REPLICAS"), "256")?,
    };
    Ok(Some(config))
}
