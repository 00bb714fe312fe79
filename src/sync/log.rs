//! `GET /sync/events`: the raw log, with hashes, oldest first.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::pull::cursor_ahead;
use super::wire::{EventsResponse, LogEvent};
use crate::error::ApiResult;
use crate::error::ErrorResponse;
use crate::events::log::{page_len, read_after, DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE_PAYLOAD_BYTES};
use crate::events::read_tip;
use crate::http::codec::Accepts;
use crate::http::QueryParams;
use crate::state::UserAuth;

/// The raw event log after a cursor.
#[utoipa::path(get, path = "/sync/events", tag = "sync", security(("bearer" = [])),
    params(
        ("since" = Option<u64>, Query, description = "Return events with seq > since (default 0)"),
        ("limit" = Option<u64>, Query, description = "1–1000, default 500"),
    ),
    responses(
        (status = 200, description = "Events in seq order with their hash-chain links", content((EventsResponse = "application/json"), (EventsResponse = "application/msgpack"))),
        (status = 400, description = "A bad query parameter", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 409, description = "`cursor_ahead`", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn events(
    State(_state): State<crate::state::AppState>,
    auth: UserAuth,
    Accepts(format): Accepts,
    params: QueryParams,
) -> ApiResult<Response> {
    let since = params.cursor()?;
    let limit = params.number("limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)?;
    let conn = auth.db.read_view().await?;
    let snapshot = conn.transaction().await?;
    let head = read_tip(&snapshot).await?;
    if since > head.seq {
        return Err(cursor_ahead(since, head));
    }
    let (count, has_more) = page_len(&snapshot, since, limit, MAX_PAGE_PAYLOAD_BYTES).await?;
    let events = read_after(&snapshot, since, count).await?;
    let cursor = events.last().map_or(since, |e| e.seq);
    snapshot.commit().await?;
    let body = EventsResponse { events: events.into_iter().map(LogEvent::from).collect(), cursor, has_more };
    Ok(format.respond(StatusCode::OK, &body))
}
