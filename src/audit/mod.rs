//! Audit: what each device did, from the log. Metadata only — never payloads.

use axum::Json;
use chrono::{DateTime, Utc};
use libsql::Connection;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use crate::clock::parse_rfc3339;
use crate::error::ErrorResponse;
use crate::error::{ApiError, ApiResult};
use crate::events::log::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::events::{Kind, Op};
use crate::http::{ApiPath, QueryParams};
use crate::state::AppState;
use crate::state::UserAuth;
use crate::store::{StoreError, StoreResult};
use crate::views::devices;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(history))
}

/// One action of a device.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Action {
    pub seq: u64,
    #[schema(value_type = String, format = Uuid)]
    pub event_id: Hyphenated,
    pub kind: Kind,
    #[schema(value_type = String, format = Uuid)]
    pub aggregate_id: Hyphenated,
    pub op: Op,
    pub received_at: DateTime<Utc>,
    pub client_time: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    pub events: Vec<Action>,
    /// Send as `since` for the next page.
    pub cursor: u64,
    pub has_more: bool,
}

/// The actions of one device after `since` (a seq), oldest first, at most `limit`.
pub async fn device_history(conn: &Connection, device: Uuid, since: u64, limit: u64) -> StoreResult<Vec<Action>> {
    let mut rows = conn
        .query(
            "SELECT seq, event_id, kind, aggregate_id, op, received_at, client_time FROM events \
             WHERE device_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            libsql::params![device.to_string(), since, limit],
        )
        .await?;
    let mut actions = Vec::new();
    while let Some(row) = rows.next().await? {
        let seq: u64 = row.get(0)?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("event seq {seq}: {what}"));
        let uuid = |idx: i32, what: &str| -> StoreResult<Uuid> {
            Uuid::parse_str(&row.get::<String>(idx)?).map_err(|_| corrupt(what))
        };
        let time = |idx: i32, what: &str| -> StoreResult<DateTime<Utc>> {
            parse_rfc3339(&row.get::<String>(idx)?).ok_or_else(|| corrupt(what))
        };
        actions.push(Action {
            seq,
            event_id: uuid(1, "event_id")?.hyphenated(),
            kind: Kind::parse(&row.get::<String>(2)?).ok_or_else(|| corrupt("kind"))?,
            aggregate_id: uuid(3, "aggregate_id")?.hyphenated(),
            op: Op::parse(&row.get::<String>(4)?).ok_or_else(|| corrupt("op"))?,
            received_at: time(5, "received_at")?,
            client_time: time(6, "client_time")?,
        });
    }
    Ok(actions)
}

/// What a device of the user did (metadata only), paged.
#[utoipa::path(get, path = "/audit/devices/{device_id}/history", tag = "audit", security(("bearer" = [])),
    params(
        ("device_id" = Uuid, Path),
        ("since" = Option<u64>, Query, description = "Seq cursor (default 0)"),
        ("limit" = Option<u64>, Query, description = "1–1000, default 500"),
    ),
    responses(
        (status = 200, description = "The device's events, oldest first", body = History),
        (status = 400, description = "Bad id or query parameter", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 404, description = "No such device for this user", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn history(auth: UserAuth, ApiPath(device): ApiPath<Uuid>, params: QueryParams) -> ApiResult<Json<History>> {
    let since = params.cursor()?;
    let limit = params.number("limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)?;
    let conn = auth.db.read().await?;
    if devices::load(&conn, device).await?.is_none() {
        return Err(ApiError::not_found("device_not_found", format!("no device {device}")));
    }
    let mut events = device_history(&conn, device, since, limit + 1).await?;
    let has_more = events.len() as u64 > limit;
    events.truncate(limit as usize);
    let cursor = events.last().map_or(since, |e| e.seq);
    Ok(Json(History { events, cursor, has_more }))
}
