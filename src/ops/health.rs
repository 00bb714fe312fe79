//! `GET /health`: the service is up and its control database answers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the database does not answer.
    pub status: &'static str,
    /// The server's version; omitted when `ENVIRONMENT=production`, so a
    /// scanner cannot match it against known flaws.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    /// `ok` or `unavailable`.
    pub database: &'static str,
}

/// Liveness and database reachability.
///
/// `version` is present in development only: a production server omits it.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Up, database reachable", body = Health),
        (status = 503, description = "The control database does not answer", body = Health),
    ))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let version = state.config.is_development().then_some(env!("CARGO_PKG_VERSION"));
    match state.control.ping().await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ok", version, database: "ok" })),
        Err(err) => {
            tracing::error!(error = %err, "health check: control database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable", version, database: "unavailable" }))
        }
    }
}
