//! Sync: devices push event batches and pull what changed since a cursor.

pub mod log;
pub mod page;
pub mod pull;
pub mod push;
pub mod status;
pub mod wire;

use axum::extract::DefaultBodyLimit;
use tower_http::compression::CompressionLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(push::push))
        .routes(routes!(pull::pull))
        .routes(routes!(log::events))
        .routes(routes!(status::status))
        .layer(DefaultBodyLimit::max(push::MAX_BATCH_BYTES))
        .layer(CompressionLayer::new())
}
