//! Every setting of the service, read once from the environment (and `.env`)
//! and validated before anything starts. A bad value stops the process with a
//! message naming the variable.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use ipnet::IpNet;

pub mod llm;

/// Minimum length of `JWT_SECRET`, in bytes (HS256 wants at least the hash size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub environment: Environment,
    /// `None` in development when unset: generated once into `DATA_DIR`.
    pub jwt_secret: Option<Secret>,
    pub trusted_proxies: Vec<IpNet>,
    pub log_format: LogFormat,
    pub database_backend: BackendKind,
    /// Registrations allowed per client IP per minute.
    pub register_rate_limit: NonZeroU32,
    /// Pairing-code claims allowed per client IP per minute.
    pub pairing_claim_rate_limit: NonZeroU32,
    /// Upper bound on user databases held open at once (LRU).
    pub max_open_databases: NonZeroUsize,
    /// Soft ceiling on SQLite's memory in this process, in MiB (0: none).
    pub sqlite_memory_limit_mb: u32,
    /// Threads of the async runtime.
    pub worker_threads: NonZeroUsize,
    /// The LLM proxy and its OHTTP gateway.
    pub llm: llm::LlmConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Local,
}

/// Secret bytes that never show in `Debug` output or logs, and are zeroed
/// when dropped; read with [`secrecy::ExposeSecret`].
pub type Secret = secrecy::SecretSlice<u8>;

/// A configuration value that cannot be used, naming its variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

fn invalid(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable, message: message.into() }
}

impl Config {
    /// Reads the process environment, after loading `.env` when present.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth failing on.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(err) if err.not_found() => {}
            Err(err) => return Err(invalid(".env", err.to_string())),
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any variable source (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

        let environment = match get("ENVIRONMENT").as_deref() {
            None | Some("development") => Environment::Development,
            Some("production") => Environment::Production,
            Some(other) => {
                return Err(invalid("ENVIRONMENT", format!("`{other}` is not one of development, production")))
            }
        };
        let jwt_secret = match get("JWT_SECRET") {
            Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => {
                return Err(invalid(
                    "JWT_SECRET",
                    format!("must be at least {MIN_JWT_SECRET_BYTES} bytes, got {}", secret.len()),
                ))
            }
            Some(secret) => Some(Secret::from(secret.into_bytes())),
            None if environment == Environment::Production => {
                return Err(invalid("JWT_SECRET", "required when ENVIRONMENT=production"))
            }
            None => None,
        };
        let log_format = match get("LOG_FORMAT").as_deref() {
            None if environment == Environment::Production => LogFormat::Json,
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("LOG_FORMAT", format!("`{other}` is not one of pretty, json"))),
        };
        let database_backend = match get("DATABASE_BACKEND").as_deref() {
            None | Some("local") => BackendKind::Local,
            Some(name @ ("sqld" | "turso")) => {
                return Err(invalid(
                    "DATABASE_BACKEND",
                    format!("the `{name}` backend is not available in this build yet; use `local`"),
                ))
            }
            Some(other) => {
                return Err(invalid("DATABASE_BACKEND", format!("`{other}` is not one of local, sqld, turso")))
            }
        };
        Ok(Self {
            bind_addr: parse_or("BIND_ADDR", get("BIND_ADDR"), "0.0.0.0:8000")?,
            metrics_addr: parse_or("METRICS_ADDR", get("METRICS_ADDR"), "127.0.0.1:9090")?,
            data_dir: PathBuf::from(get("DATA_DIR").unwrap_or_else(|| "./data".into())),
            environment,
            jwt_secret,
            trusted_proxies: parse_cidrs(get("TRUSTED_PROXIES"))?,
            log_format,
            database_backend,
            register_rate_limit: parse_or("REGISTER_RATE_LIMIT", get("REGISTER_RATE_LIMIT"), "10")?,
            pairing_claim_rate_limit: parse_or("PAIRING_CLAIM_RATE_LIMIT", get("PAIRING_CLAIM_RATE_LIMIT"), "10")?,
            max_open_databases: parse_or("MAX_OPEN_DATABASES", get("MAX_OPEN_DATABASES"), "1000")?,
            sqlite_memory_limit_mb: parse_or("SQLITE_MEMORY_LIMIT_MB", get("SQLITE_MEMORY_LIMIT_MB"), "128")?,
            worker_threads: parse_or("WORKER_THREADS", get("WORKER_THREADS"), &default_worker_threads().to_string())?,
            llm: llm::from_lookup(&get)?,
        })
    }

    pub fn is_development(&self) -> bool {
        self.environment == Environment::Development
    }
}

/// libSQL's local calls block the thread that makes them, through every
/// commit's fsync: with three runtime threads a core (at least four), one
/// can compute while others wait on the disk (measured by `benches/load.sh`'s
/// push runs; docs/push-path.md).
fn default_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    (cores * 3).max(4)
}

fn parse_or<T>(variable: &'static str, value: Option<String>, default: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    let raw = value.as_deref().unwrap_or(default);
    raw.parse().map_err(|err| invalid(variable, format!("`{raw}`: {err}")))
}

/// `TRUSTED_PROXIES`: comma-separated CIDRs; a bare address means that one host.
fn parse_cidrs(value: Option<String>) -> Result<Vec<IpNet>, ConfigError> {
    let Some(value) = value else { return Ok(Vec::new()) };
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid("TRUSTED_PROXIES", format!("`{part}` is not a CIDR or IP address")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = load(&[]).unwrap();
        assert_eq!(config.bind_addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(config.metrics_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.environment, Environment::Development);
        assert!(config.jwt_secret.is_none());
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.register_rate_limit.get(), 10);
        assert_eq!(config.pairing_claim_rate_limit.get(), 10);
        assert_eq!(config.max_open_databases.get(), 1000);
        assert_eq!(config.sqlite_memory_limit_mb, 128);
        assert!(config.worker_threads.get() >= 4);
    }

    #[test]
    fn production_requires_a_long_secret_and_logs_json() {
        assert_eq!(load(&[("ENVIRONMENT", "production")]).unwrap_err().variable, "JWT_SECRET");
        let short = load(&[("ENVIRONMENT", "production"), ("JWT_SECRET", "short")]).unwrap_err();
        assert_eq!(short.variable, "JWT_SECRET");
        assert!(short.to_string().contains("at least 32 bytes"));
        let secret = "x".repeat(32);
        let config = load(&[("ENVIRONMENT", "production"), ("JWT_SECRET", &secret)]).unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(!format!("{config:?}").contains(&secret), "the secret must not show in Debug");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("BIND_ADDR", "nowhere"),
            ("METRICS_ADDR", "1.2.3.4"),
            ("ENVIRONMENT", "staging"),
            ("LOG_FORMAT", "xml"),
            ("DATABASE_BACKEND", "postgres"),
            ("DATABASE_BACKEND", "sqld"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, bogus"),
            ("REGISTER_RATE_LIMIT", "0"),
            ("PAIRING_CLAIM_RATE_LIMIT", "many"),
            ("MAX_OPEN_DATABASES", "-1"),
            ("SQLITE_MEMORY_LIMIT_MB", "lots"),
            ("WORKER_THREADS", "0"),
        ] {
            let err = load(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name, "{value}");
        }
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_addresses() {
        let config = load(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1")]).unwrap();
        assert_eq!(config.trusted_proxies.len(), 3);
        assert!(config.trusted_proxies[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
    }
}
