//! Sync: devices push event batches and pull what changed since a cursor.

pub mod log;
pub mod notify;
pub mod page;
pub mod pull;
pub mod push;
pub mod read_ahead;
pub mod status;
pub mod wire;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tower_http::compression::CompressionLayer;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sync/push", post(push::push))
        .route("/sync/pull", get(pull::pull))
        .route("/sync/events", get(log::events))
        .route("/sync/status", get(status::status))
        .layer(DefaultBodyLimit::max(push::MAX_BATCH_BYTES))
        .layer(CompressionLayer::new())
}
