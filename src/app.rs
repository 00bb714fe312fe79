//! The application: shared state, the router, and the server loop.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::auth::rate_limit::IpRateLimiter;
use crate::auth::{self, Auth};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::ApiError;
use crate::ops::metrics::{self, Metrics};
use crate::ops::{health, openapi::ApiDoc, telemetry};
use crate::store::{Backend, ControlDb, StoreError, UserDatabases};
use crate::sync::{
    self,
    notify::{Notifier, Shutdown},
    read_ahead::ReadAhead,
};
use crate::{account, audit};

/// Largest body the auth routes read.
pub const AUTH_BODY_LIMIT: usize = 1024 * 1024;

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
    pub shutdown: Arc<Shutdown>,
    /// The next page of each user's paged pull, read while the device decodes this one.
    pub read_ahead: Arc<ReadAhead>,
}

impl AppState {
    /// Opens storage and prepares the keys. Fails on a store that cannot be
    /// opened, never on a client's doing.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let backend = match config.database_backend {
            crate::config::BackendKind::Local => Backend::local(&config.data_dir),
        };
        let control = ControlDb::open(&backend).await?;
        let limit = u64::from(config.sqlite_memory_limit_mb) * 1024 * 1024;
        crate::store::memory::set_soft_limit(&control.conn().await?, limit).await?;
        let secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => auth::secret::load_or_create(&config.data_dir)?,
        };
        Ok(Self {
            clock,
            control: Arc::new(control),
            users: Arc::new(UserDatabases::new(backend, config.max_open_databases)),
            auth: Arc::new(Auth::new(secret.expose())),
            register_limiter: Arc::new(IpRateLimiter::per_minute(config.register_rate_limit)),
            claim_limiter: Arc::new(IpRateLimiter::per_minute(config.pairing_claim_rate_limit)),
            notifier: Arc::default(),
            read_ahead: Arc::default(),
            pairing_updates: Arc::default(),
            metrics: Arc::default(),
            shutdown: Arc::default(),
            config: Arc::new(config),
        })
    }
}

pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/health", get(health::health))
        .merge(auth::router(&state).layer(DefaultBodyLimit::max(AUTH_BODY_LIMIT)))
        .merge(audit::router().merge(account::router()).layer(DefaultBodyLimit::max(AUTH_BODY_LIMIT)))
        .merge(sync::router());
    if state.config.is_development() {
        app = app.merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(telemetry::request_span)
                .on_request(())
                .on_response(telemetry::log_response)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(CatchPanicLayer::custom(|_panic| ApiError::internal("a handler panicked").into_response()))
        // Outermost, so it sees every answer (a caught panic's 500 too).
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::client(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

/// The two sockets the server answers on: the API (`BIND_ADDR`) and
/// Prometheus metrics (`METRICS_ADDR`), which the API port never serves.
pub struct Listeners {
    pub api: TcpListener,
    pub metrics: TcpListener,
}

/// A listener that could not be opened, naming its variable.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({variable}): {source}")]
pub struct BindError {
    pub variable: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl Listeners {
    /// Binds `BIND_ADDR` and `METRICS_ADDR` (port 0 picks a free port).
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let bind = |variable, addr| async move {
            TcpListener::bind(addr).await.map_err(|source| BindError { variable, addr, source })
        };
        Ok(Self {
            api: bind("BIND_ADDR", config.bind_addr).await?,
            metrics: bind("METRICS_ADDR", config.metrics_addr).await?,
        })
    }

    /// The addresses actually bound: (API, metrics).
    pub fn local_addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.api.local_addr()?, self.metrics.local_addr()?))
    }
}

/// Serves the API and the metrics listener until `shutdown` resolves, then
/// answers waiting long-polls, finishes the requests in flight, and stops both.
pub async fn serve(
    listeners: Listeners,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = state.shutdown.clone();
    let metrics_app = metrics::router(state.clone());
    let metrics_stop = state.shutdown.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let api = axum::serve(listeners.api, app).with_graceful_shutdown(async move {
        shutdown.await;
        stopping.trigger();
    });
    let metrics =
        axum::serve(listeners.metrics, metrics_app).with_graceful_shutdown(async move { metrics_stop.wait().await });
    tokio::try_join!(api.into_future(), metrics.into_future())?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
