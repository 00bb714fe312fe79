//! The application: the areas' routers composed into one, and the server loop.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::error::ApiError;
use crate::http::conn::{self, ConnLimits};
use crate::http::BodyLimit;
use crate::ops::metrics;
use crate::ops::{health, openapi::ApiDoc, telemetry};
use crate::state::AppState;
use crate::{account, audit, auth, embeddings, llm, payments, sync};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest body the auth routes read.
pub const AUTH_BODY_LIMIT: usize = 1024 * 1024;

/// The API's routes and their OpenAPI document, built together: a route is
/// registered with `routes!` from its handler's `#[utoipa::path]`, so none is
/// served undocumented.
fn api(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .merge(body_limit(AUTH_BODY_LIMIT).apply(auth::router(state)))
        .merge(body_limit(AUTH_BODY_LIMIT).apply(audit::router().merge(account::router())))
        .merge(sync::router())
        .merge(body_limit(payments::BODY_LIMIT).apply(payments::router()))
        .merge(llm::router())
        .merge(embeddings::router(state))
        .split_for_parts();
    crate::ops::openapi::add_shared_responses(&mut doc);
    (router, doc)
}

/// A limit whose 413 says `body_too_large`, as [`crate::http::ApiJson`]'s does.
fn body_limit(bytes: usize) -> BodyLimit {
    BodyLimit { bytes, code: "body_too_large", message: "the request body is larger than this endpoint accepts" }
}

pub fn router(state: AppState) -> Router {
    let (mut app, doc) = api(&state);
    if state.config.is_development() {
        app = app.merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", doc));
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
        // A client that stops sending its body mid-way is not waited for
        // (the connection loop also bounds the whole body's time).
        .layer(RequestBodyTimeoutLayer::new(state.config.body_read_timeout))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_malformed_request_id))
        .layer(CatchPanicLayer::custom(|_panic| ApiError::internal("a handler panicked").into_response()))
        // Outermost, so it sees every answer (a caught panic's 500 too).
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
}

/// Longest client-supplied `X-Request-Id` kept.
const REQUEST_ID_MAX: usize = 64;

/// Removes a client's `X-Request-Id` that is long or not visible ASCII, so
/// one is generated instead: the id is echoed and written into every log line.
async fn drop_malformed_request_id(mut req: Request) -> Request {
    let well_formed = |id: &HeaderValue| {
        let bytes = id.as_bytes();
        !bytes.is_empty() && bytes.len() <= REQUEST_ID_MAX && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    };
    let headers = req.headers_mut();
    let ids = headers.get_all(X_REQUEST_ID);
    let keep = ids.iter().count() == 1 && ids.iter().all(well_formed);
    if !keep {
        headers.remove(X_REQUEST_ID);
    }
    req
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
    let limits = ConnLimits {
        max_connections: state.config.max_connections.get(),
        header_read: state.config.header_read_timeout,
        idle: state.config.idle_timeout,
        body_read: state.config.body_read_timeout,
        write_stall: state.config.write_stall_timeout,
        shutdown_grace: state.config.shutdown_grace,
    };
    let metrics_grace = state.config.shutdown_grace;
    tokio::spawn(auth::pairing::sweep_regularly(state.clone()));
    let recorder = state.metrics.clone();
    let api = recorder.scope(conn::serve(listeners.api, router(state), limits, async move {
        shutdown.await;
        stopping.cancel();
    }));
    let metrics_cancelled = metrics_stop.clone();
    let metrics = axum::serve(listeners.metrics, metrics_app)
        .with_graceful_shutdown(async move { metrics_stop.cancelled().await });
    // A scraper that stops reading must not hold shutdown up either.
    let metrics = async move {
        tokio::select! {
            served = metrics.into_future() => served,
            () = async {
                metrics_cancelled.cancelled().await;
                tokio::time::sleep(metrics_grace).await;
            } => Ok(()),
        }
    };
    tokio::try_join!(api, metrics)?;
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
