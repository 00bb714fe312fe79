//! Sync: devices push event batches and pull what changed since a cursor.

pub mod log;
pub mod page;
pub mod pull;
pub mod push;
pub mod status;
pub mod wire;

use tower_http::compression::CompressionLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::BodyLimit;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    let limit =
        BodyLimit { bytes: push::MAX_BATCH_BYTES, code: "batch_too_large", message: "the batch is larger than 16 MiB" };
    let routes = OpenApiRouter::new()
        .routes(routes!(push::push))
        .routes(routes!(pull::pull))
        .routes(routes!(log::events))
        .routes(routes!(status::status));
    limit.apply(routes).layer(CompressionLayer::new())
}
