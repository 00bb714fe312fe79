//! What every request shares, built once at start: configuration, storage,
//! the identity service, and the in-process state of the areas (long-poll
//! wake-ups, pull pages read ahead, per-IP limits, metrics), and the
//! extractor of the authenticated caller ([`UserAuth`]). Handlers take it as
//! `State<AppState>`; it depends only on the layers below the areas.

pub mod long_polls;
pub mod metrics;
pub mod notify;
pub mod ohttp;
pub mod rate_limit;
pub mod read_ahead;
pub mod user_auth;

use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use self::long_polls::LongPolls;
use self::metrics::Metrics;
use crate::clock::Clock;
use crate::config::Config;
use crate::embedder::Embedder;
use crate::entitlements::Stores;
use crate::identity::Auth;
use crate::store::{Backend, ControlDb, StoreError, UserDatabases};
use notify::Notifier;
use rate_limit::{IpRateLimiter, Limiter};
use read_ahead::ReadAhead;

pub use user_auth::UserAuth;

/// A provider's model list (`None`: it gave none) and when it was fetched.
pub type FetchedModels = (tokio::time::Instant, Option<serde_json::Value>);

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub control: Arc<ControlDb>,
    pub users: Arc<UserDatabases>,
    pub auth: Arc<Auth>,
    pub register_limiter: Arc<IpRateLimiter>,
    pub claim_limiter: Arc<IpRateLimiter>,
    /// Wakes long-polls of a user when it pushes.
    pub notifier: Arc<Notifier>,
    /// Wakes the new device waiting on a pairing when it is decided.
    pub pairing_updates: Arc<Notifier>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down, so long-polls answer early.
    pub shutdown: CancellationToken,
    /// The next page of each user's paged pull, read while the device decodes this one.
    pub read_ahead: Arc<ReadAhead>,
    /// The one outgoing HTTP client (connection pools shared by every call).
    /// No overall timeout: each call sets its own.
    pub http: reqwest::Client,
    /// The App Store verifier, the Play Developer API client, the Pub/Sub token check.
    pub stores: Arc<Stores>,
    /// The Oblivious HTTP gateway's key.
    pub ohttp: Arc<ohttp::OhttpKey>,
    /// The LLM provider's own model list and when it was fetched: asked at
    /// most once a minute, however often devices list the models.
    pub llm_models: Arc<tokio::sync::Mutex<Option<FetchedModels>>>,
    /// Long-polls held per user and per device (`LONG_POLLS_PER_*`).
    pub long_polls: Arc<LongPolls>,
    /// Fallback embeddings' provider (the local model and its pool, loaded at start).
    pub embedder: Arc<Embedder>,
}

impl AppState {
    /// Opens storage and prepares the keys. Fails on a store that cannot be
    /// opened, never on a client's doing.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|err| StoreError::Corrupt(format!("the HTTP client cannot start: {err}")))?;
        let backend = Backend::from_config(&config, &http)?;
        let control = ControlDb::open(&backend).await?;
        control.set_memory_limit(u64::from(config.sqlite_memory_limit_mb) * 1024 * 1024).await?;
        let secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => crate::identity::secret::load_or_create(&config.data_dir)?,
        };
        let ohttp = Arc::new(ohttp::OhttpKey::load(&config.llm.ohttp_key, &config.data_dir)?);
        let previous: Vec<&[u8]> = config.jwt_previous_secrets.iter().map(|s| s.expose_secret()).collect();
        let auth = Auth::new(secret.expose_secret(), &previous)
            .map_err(|err| StoreError::Corrupt(format!("the pairing-code key cannot be derived: {err}")))?;
        let embedder = {
            let (embeddings, retries) = (config.embeddings.clone(), config.llm.retries);
            tokio::task::spawn_blocking(move || Embedder::start(&embeddings, retries))
                .await
                .map_err(|err| err.to_string())
                .and_then(|started| started)
                .map_err(|err| StoreError::Io {
                    context: "the fallback embeddings cannot start".into(),
                    source: std::io::Error::other(err),
                })?
        };
        let users = UserDatabases::new(backend, config.max_open_databases)
            .with_id_index_budget(config.id_index_max_events)
            .with_replicas(crate::store::replica::Replicas::from_config(&config)?);
        // Databases a crash left between their creation and their user (or their user and their removal).
        let swept = crate::store::provisioning::sweep(
            &control,
            &users,
            clock.now(),
            crate::store::provisioning::ABANDONED_AFTER,
        )
        .await?;
        if swept > 0 {
            tracing::info!(swept, "removed databases left by unfinished registrations or deletions");
        }
        Ok(Self {
            embedder: Arc::new(embedder),
            http,
            stores: Arc::new(Stores::from_config(&config)),
            ohttp,
            llm_models: Arc::default(),
            clock,
            control: Arc::new(control),
            users: Arc::new(users),
            auth: Arc::new(auth),
            register_limiter: Arc::new(IpRateLimiter::per_minute(Limiter::Register, config.register_rate_limit)),
            claim_limiter: Arc::new(IpRateLimiter::per_minute(Limiter::PairingClaim, config.pairing_claim_rate_limit)),
            notifier: Arc::default(),
            long_polls: Arc::new(LongPolls::new(config.long_polls_per_user.get(), config.long_polls_per_device.get())),
            read_ahead: Arc::default(),
            pairing_updates: Arc::default(),
            metrics: Arc::default(),
            shutdown: CancellationToken::new(),
            config: Arc::new(config),
        })
    }
}

/// What `ClientIp` reads: the settings, for `TRUSTED_PROXIES`.
impl axum::extract::FromRef<AppState> for Arc<Config> {
    fn from_ref(state: &AppState) -> Self {
        state.config.clone()
    }
}
