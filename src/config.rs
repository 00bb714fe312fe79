//! Every setting of the service, read once from the environment (and `.env`)
//! and validated before anything starts. A bad value stops the process with a
//! message naming the variable.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub mod backup;
pub mod embeddings;
pub mod llm;
pub mod replicas;
pub mod turso;

/// Minimum length of `JWT_SECRET`, in bytes (HS256 wants at least the hash size).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Production's floor on `JWT_SECRET`'s variety: catches a repeated
/// character, a short pattern repeated or a placeholder, which length alone
/// lets through. `openssl rand -hex 16` (32 hex digits) clears both with margin.
pub const MIN_JWT_SECRET_DISTINCT_BYTES: usize = 10;
/// Shannon entropy of the byte frequencies times the length: an upper bound
/// on the secret's real entropy, so a floor, not a proof of strength.
pub const MIN_JWT_SECRET_ENTROPY_BITS: f64 = 96.0;

/// Whether `secret` clears [`MIN_JWT_SECRET_DISTINCT_BYTES`] and [`MIN_JWT_SECRET_ENTROPY_BITS`].
fn enough_entropy(secret: &[u8]) -> bool {
    let mut counts = [0usize; 256];
    for &byte in secret {
        counts[usize::from(byte)] += 1;
    }
    let length = secret.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = count as f64 / length;
            -p * p.log2() * length
        })
        .sum();
    counts.iter().filter(|&&count| count > 0).count() >= MIN_JWT_SECRET_DISTINCT_BYTES
        && bits >= MIN_JWT_SECRET_ENTROPY_BITS
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub environment: Environment,
    /// `None` in development when unset: generated once into `DATA_DIR`.
    pub jwt_secret: Option<Secret>,
    /// Earlier secrets whose tokens are still accepted until they expire
    /// (`JWT_PREVIOUS_SECRETS`); nothing new is signed with them.
    pub jwt_previous_secrets: Vec<Secret>,
    pub trusted_proxies: Vec<IpNet>,
    pub log_format: LogFormat,
    pub database_backend: BackendKind,
    /// `EMBEDDED_REPLICAS=true`: reads from local replicas of the remote backend's databases.
    pub replicas: Option<replicas::ReplicaConfig>,
    /// Registrations allowed per client IP per minute.
    pub register_rate_limit: NonZeroU32,
    /// Pairing-code claims allowed per client IP per minute.
    pub pairing_claim_rate_limit: NonZeroU32,
    /// Upper bound on user databases held open at once (LRU).
    pub max_open_databases: NonZeroUsize,
    /// Upper bound on the event ids the open databases' writers hold in memory together.
    pub id_index_max_events: usize,
    /// Soft ceiling on SQLite's memory in this process, in MiB (0: none).
    pub sqlite_memory_limit_mb: u32,
    /// Threads of the async runtime.
    pub worker_threads: NonZeroUsize,
    /// API connections open at once; past it new ones wait (`MAX_CONNECTIONS`).
    pub max_connections: NonZeroUsize,
    /// From a request's first byte to the end of its head (`HEADER_READ_TIMEOUT_SECS`).
    pub header_read_timeout: Duration,
    /// Longest a request body may take to arrive, from the end of its head
    /// (`BODY_READ_TIMEOUT_SECS`), plus a second per 16 KiB received: a
    /// total, so a body sent a byte at a time is cut off too.
    pub body_read_timeout: Duration,
    /// A connection whose client stops reading (a write makes no progress)
    /// is closed after this long, request in flight or not (`WRITE_STALL_TIMEOUT_SECS`).
    pub write_stall_timeout: Duration,
    /// At shutdown, how long connections may finish their requests before
    /// they are closed (`SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// A connection with no request in flight is closed after this long
    /// without a byte (`IDLE_TIMEOUT_SECS`); long-polls are in flight.
    pub idle_timeout: Duration,
    /// How often expired pairings are cleaned up (`PAIRING_SWEEP_SECS`).
    pub pairing_sweep: Duration,
    /// Long-polls (`GET /sync/pull?wait=`) one user may hold at once.
    pub long_polls_per_user: NonZeroUsize,
    /// Long-polls one device may hold at once.
    pub long_polls_per_device: NonZeroUsize,
    /// The LLM proxy and its OHTTP gateway.
    pub llm: llm::LlmConfig,
    /// Fallback embeddings: their provider and limits.
    pub embeddings: embeddings::EmbeddingsConfig,
    /// S3-compatible object storage, for backups (`AWS_*`).
    pub object_storage: backup::ObjectStorageConfig,
    /// The App Store, or the variables it still needs.
    pub apple: Result<AppleStoreConfig, Missing>,
    /// The Play Store (Play Developer API), or the variables it still needs.
    pub google: Result<GooglePlayConfig, Missing>,
    /// Play Store notifications (Pub/Sub push), or the variables they still need.
    pub google_pubsub: Result<PubSubConfig, Missing>,
}

/// The variables an optional feature still needs (it answers 503
/// `not_configured` naming them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub Vec<&'static str>);

/// Which of a store's environments this server serves: sandbox (test)
/// purchases and production ones never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEnvironment {
    Production,
    Sandbox,
}

impl StoreEnvironment {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Sandbox => "sandbox",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppleStoreConfig {
    pub bundle_id: String,
    pub environment: StoreEnvironment,
    /// Required in production (notifications name it).
    pub app_apple_id: Option<i64>,
    /// DER roots from `APPLE_ROOT_CERTS`; empty: the bundled Apple Root CA - G3.
    pub root_certs: Vec<Vec<u8>>,
}

/// Set to `true` to let a production server (`ENVIRONMENT=production`,
/// `APPLE_ENVIRONMENT=Production`) trust `APPLE_ROOT_CERTS`; without it such
/// a server refuses to start (exit 2): trusting a test root in production
/// would let anyone holding its key grant themselves `pro`.
pub const APPLE_ALLOW_CUSTOM_ROOTS: &str = "APPLE_ALLOW_CUSTOM_ROOTS";

#[derive(Debug, Clone)]
pub struct GooglePlayConfig {
    pub package_name: String,
    pub environment: StoreEnvironment,
    pub service_account: GoogleServiceAccount,
    /// Where the Play Developer API answers (tests point it at a fake).
    pub api_base_url: String,
}

/// The parts of a service-account key file used.
#[derive(Debug, Clone)]
pub struct GoogleServiceAccount {
    pub client_email: String,
    /// PEM, PKCS#8 RSA.
    pub private_key: Secret,
    /// The OAuth token endpoint (`token_uri` of the key file).
    pub token_uri: String,
}

#[derive(Debug, Clone)]
pub struct PubSubConfig {
    /// The `aud` of the push subscription's OIDC token.
    pub audience: String,
    /// The push subscription's service account: the token's `email` must be
    /// it (any Google Cloud user can get a Google-signed token for any audience).
    pub service_account_email: String,
    /// Google's OIDC signing keys (JWKS).
    pub jwks_url: String,
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

#[derive(Debug, Clone)]
pub enum BackendKind {
    Local,
    /// A libSQL server (sqld) with namespaces: one per user, and one for the control database.
    Sqld(SqldConfig),
    /// Turso Cloud: a database per user, and one for the control database.
    Turso(turso::TursoConfig),
}

/// `DATABASE_BACKEND=sqld`: where the server answers and how to reach it.
#[derive(Debug, Clone)]
pub struct SqldConfig {
    /// Its data listener (Hrana over HTTP): `SQLD_URL`.
    pub url: String,
    /// Its admin listener (namespaces are created and deleted there): `SQLD_ADMIN_URL`.
    pub admin_url: String,
    /// Sent as `Authorization: Bearer` on every data request (`SQLD_AUTH_TOKEN`): a JWT
    /// signed with the key sqld was given (`--auth-jwt-key-file`).
    pub auth_token: Secret,
    /// Sent as `Authorization: basic <key>` to the admin API (`SQLD_ADMIN_AUTH_KEY`,
    /// sqld's `--admin-auth-key`); optional.
    pub admin_auth_key: Option<Secret>,
    /// The longest any one call to sqld may take (`SQLD_TIMEOUT_SECS`).
    pub timeout: Duration,
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

/// A JWT signing secret as `variable` names it: long enough, and in
/// production varied enough.
fn checked_jwt_secret(variable: &'static str, secret: String, environment: Environment) -> Result<Secret, ConfigError> {
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(invalid(variable, format!("must be at least {MIN_JWT_SECRET_BYTES} bytes, got {}", secret.len())));
    }
    if environment == Environment::Production && !enough_entropy(secret.as_bytes()) {
        return Err(invalid(
            variable,
            format!(
                "has too little entropy: needs at least {MIN_JWT_SECRET_DISTINCT_BYTES} distinct bytes and \
                 {MIN_JWT_SECRET_ENTROPY_BITS} bits by byte frequency (generate one with `openssl rand -hex 32`)"
            ),
        ));
    }
    Ok(Secret::from(secret.into_bytes()))
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
            Some(secret) => Some(checked_jwt_secret("JWT_SECRET", secret, environment)?),
            None if environment == Environment::Production => {
                return Err(invalid("JWT_SECRET", "required when ENVIRONMENT=production"))
            }
            None => None,
        };
        let jwt_previous_secrets = get("JWT_PREVIOUS_SECRETS")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|secret| !secret.is_empty())
                    .map(|secret| checked_jwt_secret("JWT_PREVIOUS_SECRETS", secret.to_owned(), environment))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let log_format = match get("LOG_FORMAT").as_deref() {
            None if environment == Environment::Production => LogFormat::Json,
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("LOG_FORMAT", format!("`{other}` is not one of pretty, json"))),
        };
        let database_backend = match get("DATABASE_BACKEND").as_deref() {
            None | Some("local") => BackendKind::Local,
            Some("sqld") => BackendKind::Sqld(sqld(&get)?),
            Some("turso") => BackendKind::Turso(turso::from_lookup(&get)?),
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
            jwt_previous_secrets,
            trusted_proxies: parse_cidrs(get("TRUSTED_PROXIES"))?,
            log_format,
            replicas: replicas::from_lookup(&get, &database_backend)?,
            database_backend,
            register_rate_limit: parse_or("REGISTER_RATE_LIMIT", get("REGISTER_RATE_LIMIT"), "10")?,
            pairing_claim_rate_limit: parse_or("PAIRING_CLAIM_RATE_LIMIT", get("PAIRING_CLAIM_RATE_LIMIT"), "10")?,
            max_open_databases: parse_or("MAX_OPEN_DATABASES", get("MAX_OPEN_DATABASES"), "1000")?,
            id_index_max_events: parse_or("ID_INDEX_MAX_EVENTS", get("ID_INDEX_MAX_EVENTS"), "2000000")?,
            sqlite_memory_limit_mb: parse_or("SQLITE_MEMORY_LIMIT_MB", get("SQLITE_MEMORY_LIMIT_MB"), "96")?,
            worker_threads: parse_or("WORKER_THREADS", get("WORKER_THREADS"), &default_worker_threads().to_string())?,
            max_connections: parse_or("MAX_CONNECTIONS", get("MAX_CONNECTIONS"), "4096")?,
            header_read_timeout: seconds("HEADER_READ_TIMEOUT_SECS", get("HEADER_READ_TIMEOUT_SECS"), "10")?,
            body_read_timeout: seconds("BODY_READ_TIMEOUT_SECS", get("BODY_READ_TIMEOUT_SECS"), "30")?,
            idle_timeout: seconds("IDLE_TIMEOUT_SECS", get("IDLE_TIMEOUT_SECS"), "75")?,
            write_stall_timeout: seconds("WRITE_STALL_TIMEOUT_SECS", get("WRITE_STALL_TIMEOUT_SECS"), "30")?,
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECS", get("SHUTDOWN_GRACE_SECS"), "10")?,
            pairing_sweep: seconds("PAIRING_SWEEP_SECS", get("PAIRING_SWEEP_SECS"), "60")?,
            long_polls_per_user: parse_or("LONG_POLLS_PER_USER", get("LONG_POLLS_PER_USER"), "16")?,
            long_polls_per_device: parse_or("LONG_POLLS_PER_DEVICE", get("LONG_POLLS_PER_DEVICE"), "4")?,
            apple: apple_store(&get, environment)?,
            google: google_play(&get)?,
            google_pubsub: google_pubsub(&get)?,
            llm: llm::from_lookup(&get)?,
            embeddings: embeddings::from_lookup(&get)?,
            object_storage: backup::from_lookup(&get)?,
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

fn store_environment(variable: &'static str, value: Option<String>) -> Result<StoreEnvironment, ConfigError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("production") => Ok(StoreEnvironment::Production),
        Some("sandbox") => Ok(StoreEnvironment::Sandbox),
        Some(_) => Err(invalid(variable, "must be Production or Sandbox")),
    }
}

/// `APPLE_*`: the bundle id names the app; production needs its Apple id.
fn apple_store(
    get: &impl Fn(&str) -> Option<String>,
    server: Environment,
) -> Result<Result<AppleStoreConfig, Missing>, ConfigError> {
    let environment = store_environment("APPLE_ENVIRONMENT", get("APPLE_ENVIRONMENT"))?;
    let allow_custom_roots = match get(APPLE_ALLOW_CUSTOM_ROOTS).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid(APPLE_ALLOW_CUSTOM_ROOTS, "must be true or false")),
    };
    let app_apple_id = get("APPLE_APP_APPLE_ID")
        .map(|id| id.parse::<i64>().map_err(|_| invalid("APPLE_APP_APPLE_ID", format!("`{id}` is not a number"))))
        .transpose()?;
    let mut root_certs = Vec::new();
    for path in get("APPLE_ROOT_CERTS").unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bytes = std::fs::read(path).map_err(|err| invalid("APPLE_ROOT_CERTS", format!("`{path}`: {err}")))?;
        let der = der_or_pem(&bytes)
            .ok_or_else(|| invalid("APPLE_ROOT_CERTS", format!("`{path}` is not a DER or PEM certificate")))?;
        root_certs.push(der);
    }
    if !root_certs.is_empty()
        && server == Environment::Production
        && environment == StoreEnvironment::Production
        && !allow_custom_roots
    {
        return Err(invalid(
            "APPLE_ROOT_CERTS",
            format!(
                "replaces Apple's root on a production server with APPLE_ENVIRONMENT=Production; \
                 unset it, or set {APPLE_ALLOW_CUSTOM_ROOTS}=true if you really mean it"
            ),
        ));
    }
    let bundle_id = get("APPLE_BUNDLE_ID");
    let mut missing = Vec::new();
    if bundle_id.is_none() {
        missing.push("APPLE_BUNDLE_ID");
    }
    if environment == StoreEnvironment::Production && app_apple_id.is_none() {
        missing.push("APPLE_APP_APPLE_ID");
    }
    Ok(match bundle_id {
        Some(bundle_id) if missing.is_empty() => {
            Ok(AppleStoreConfig { bundle_id, environment, app_apple_id, root_certs })
        }
        _ => Err(Missing(missing)),
    })
}

/// `SQLD_*`: every one of the three that is missing is named at once.
fn sqld(get: &impl Fn(&str) -> Option<String>) -> Result<SqldConfig, ConfigError> {
    if !cfg!(feature = "remote-storage") {
        return Err(invalid(
            "DATABASE_BACKEND",
            "this build has no remote storage (built without the `remote-storage` cargo feature); use `local`",
        ));
    }
    let (url, admin_url, token) = (get("SQLD_URL"), get("SQLD_ADMIN_URL"), get("SQLD_AUTH_TOKEN"));
    let missing: Vec<&str> =
        [(url.is_none(), "SQLD_URL"), (admin_url.is_none(), "SQLD_ADMIN_URL"), (token.is_none(), "SQLD_AUTH_TOKEN")]
            .into_iter()
            .filter_map(|(missing, name)| missing.then_some(name))
            .collect();
    let (Some(url), Some(admin_url), Some(token)) = (url, admin_url, token) else {
        return Err(invalid(
            "DATABASE_BACKEND",
            format!("`sqld` needs {} (see README, Running against sqld)", missing.join(", ")),
        ));
    };
    for (variable, value) in [("SQLD_URL", &url), ("SQLD_ADMIN_URL", &admin_url)] {
        if !value.starts_with("http://") && !value.starts_with("https://") {
            return Err(invalid(variable, format!("`{value}` is not an http(s) URL")));
        }
    }
    Ok(SqldConfig {
        url: url.trim_end_matches('/').to_owned(),
        admin_url: admin_url.trim_end_matches('/').to_owned(),
        auth_token: Secret::from(token.into_bytes()),
        admin_auth_key: get("SQLD_ADMIN_AUTH_KEY").map(|key| Secret::from(key.into_bytes())),
        timeout: seconds("SQLD_TIMEOUT_SECS", get("SQLD_TIMEOUT_SECS"), "10")?,
    })
}

/// A certificate file as DER: DER as it is, or the first PEM block.
fn der_or_pem(bytes: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let der = match std::str::from_utf8(bytes).ok().filter(|text| text.contains("-----BEGIN")) {
        Some(text) => {
            let body: String = text
                .lines()
                .skip_while(|line| !line.starts_with("-----BEGIN"))
                .skip(1)
                .take_while(|line| !line.starts_with("-----END"))
                .collect();
            base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()?
        }
        None => bytes.to_vec(),
    };
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    Some(der)
}

/// `GOOGLE_*` for the Play Developer API.
fn google_play(get: &impl Fn(&str) -> Option<String>) -> Result<Result<GooglePlayConfig, Missing>, ConfigError> {
    let environment = store_environment("GOOGLE_ENVIRONMENT", get("GOOGLE_ENVIRONMENT"))?;
    let api_base_url = get("GOOGLE_API_BASE_URL").unwrap_or_else(|| "https://androidpublisher.googleapis.com".into());
    if !api_base_url.starts_with("http://") && !api_base_url.starts_with("https://") {
        return Err(invalid("GOOGLE_API_BASE_URL", "must be an http(s) URL"));
    }
    let service_account = get("GOOGLE_SERVICE_ACCOUNT_FILE").map(|path| service_account(&path)).transpose()?;
    let package_name = get("GOOGLE_PACKAGE_NAME");
    Ok(match (package_name, service_account) {
        (Some(package_name), Some(service_account)) => Ok(GooglePlayConfig {
            package_name,
            environment,
            service_account,
            api_base_url: api_base_url.trim_end_matches('/').to_owned(),
        }),
        (package_name, service_account) => {
            let mut missing = Vec::new();
            if package_name.is_none() {
                missing.push("GOOGLE_PACKAGE_NAME");
            }
            if service_account.is_none() {
                missing.push("GOOGLE_SERVICE_ACCOUNT_FILE");
            }
            Err(Missing(missing))
        }
    })
}

/// Reads a service-account key file (JSON, as the Cloud console gives it).
fn service_account(path: &str) -> Result<GoogleServiceAccount, ConfigError> {
    const VARIABLE: &str = "GOOGLE_SERVICE_ACCOUNT_FILE";
    #[derive(serde::Deserialize)]
    struct KeyFile {
        client_email: String,
        private_key: String,
        token_uri: Option<String>,
    }
    let bytes = std::fs::read(path).map_err(|err| invalid(VARIABLE, format!("`{path}`: {err}")))?;
    let file: KeyFile = serde_json::from_slice(&bytes).map_err(|_| {
        invalid(VARIABLE, format!("`{path}` is not a service-account key file (client_email, private_key)"))
    })?;
    jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.as_bytes())
        .map_err(|_| invalid(VARIABLE, format!("`{path}`: private_key is not an RSA key in PEM")))?;
    let token_uri = file.token_uri.unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
    if !token_uri.starts_with("http://") && !token_uri.starts_with("https://") {
        return Err(invalid(VARIABLE, format!("`{path}`: token_uri must be an http(s) URL")));
    }
    Ok(GoogleServiceAccount {
        client_email: file.client_email,
        private_key: Secret::from(file.private_key.into_bytes()),
        token_uri,
    })
}

/// `GOOGLE_PUBSUB_*` for real-time developer notifications.
fn google_pubsub(get: &impl Fn(&str) -> Option<String>) -> Result<Result<PubSubConfig, Missing>, ConfigError> {
    let jwks_url = get("GOOGLE_OIDC_JWKS_URL").unwrap_or_else(|| "https://www.googleapis.com/oauth2/v3/certs".into());
    if !jwks_url.starts_with("http://") && !jwks_url.starts_with("https://") {
        return Err(invalid("GOOGLE_OIDC_JWKS_URL", "must be an http(s) URL"));
    }
    Ok(match (get("GOOGLE_PUBSUB_AUDIENCE"), get("GOOGLE_PUBSUB_SERVICE_ACCOUNT")) {
        (Some(audience), Some(service_account_email)) => Ok(PubSubConfig { audience, service_account_email, jwks_url }),
        (audience, account) => Err(Missing(
            [(audience.is_none(), "GOOGLE_PUBSUB_AUDIENCE"), (account.is_none(), "GOOGLE_PUBSUB_SERVICE_ACCOUNT")]
                .into_iter()
                .filter_map(|(missing, name)| missing.then_some(name))
                .collect(),
        )),
    })
}

fn parse_or<T>(variable: &'static str, value: Option<String>, default: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    let raw = value.as_deref().unwrap_or(default);
    raw.parse().map_err(|err| invalid(variable, format!("`{raw}`: {err}")))
}

/// A whole number of seconds, at least 1 and at most a day.
fn seconds(variable: &'static str, value: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let secs: u64 = parse_or(variable, value, default)?;
    if !(1..=86_400).contains(&secs) {
        return Err(invalid(variable, format!("`{secs}` is not 1 to 86400 seconds")));
    }
    Ok(Duration::from_secs(secs))
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
mod tests;
