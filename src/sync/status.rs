//! `GET /sync/status`: the log head and counts of the views.

use axum::http::StatusCode;
use axum::response::Response;

use super::wire::{HexHash, StatusResponse};
use crate::error::ApiResult;
use crate::error::ErrorResponse;
use crate::events::read_tip;
use crate::http::codec::Accepts;
use crate::state::UserAuth;
use crate::store::query_opt;

/// Sync status of the user.
#[utoipa::path(get, path = "/sync/status", tag = "sync", security(("bearer" = [])),
    responses(
        (status = 200, description = "Head and counts", content((StatusResponse = "application/json"), (StatusResponse = "application/msgpack"))),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn status(auth: UserAuth, Accepts(format): Accepts) -> ApiResult<Response> {
    let conn = auth.db.read_view().await?;
    let snapshot = conn.transaction().await?;
    let head = read_tip(&snapshot).await?;
    let counts = query_opt(
        &snapshot,
        "SELECT (SELECT count(*) FROM entries WHERE deleted = 0), (SELECT count(*) FROM memories WHERE deleted = 0), \
         (SELECT count(*) FROM tags WHERE deleted = 0), (SELECT count(*) FROM embeddings WHERE deleted = 0), \
         (SELECT count(*) FROM entries WHERE conflict = 1) + (SELECT count(*) FROM memories WHERE conflict = 1) \
         + (SELECT count(*) FROM tags WHERE conflict = 1) + (SELECT count(*) FROM embeddings WHERE conflict = 1)",
        (),
    )
    .await?;
    snapshot.commit().await?;
    let count = |idx: i32| -> ApiResult<u64> { Ok(counts.as_ref().map(|row| row.get(idx)).transpose()?.unwrap_or(0)) };
    let body = StatusResponse {
        cursor: head.seq,
        head_hash: HexHash(head.hash),
        events: head.seq,
        entries: count(0)?,
        memories: count(1)?,
        tags: count(2)?,
        embeddings: count(3)?,
        conflicts: count(4)?,
    };
    Ok(format.respond(StatusCode::OK, &body))
}
