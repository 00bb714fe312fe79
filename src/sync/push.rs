//! `POST /sync/push`: a batch validated in full, then appended with the view
//! rows it changes in one transaction. All or nothing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{Datelike, SubsecRound};
use uuid::Uuid;

use super::wire::{ClientEvent, HexHash, PushRequest, PushResponse, PushResult, PushStatus};
use crate::error::ErrorResponse;
use crate::error::{ApiError, ApiResult};
use crate::events::{Kind, LogTip, LogTx, NewEvent, Op};
use crate::http::codec::{Accepts, SyncBody};
use crate::identity::status::require_active_in;
use crate::state::AppState;
use crate::state::UserAuth;
use crate::views::remote_write::apply_batch_remote;
use crate::views::write::{apply_batch, BatchError, BatchResult, EventStatus};

pub const MAX_BATCH_EVENTS: usize = 1000;
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most devices one version vector names. A vector names the devices that
/// edited its aggregate, which an account counts in tens over years; more
/// only costs every comparison of the fold (see `MAX_HEADS`).
pub const MAX_VERSION_KEYS: usize = 128;

/// Push a batch of events.
#[utoipa::path(post, path = "/sync/push", tag = "sync", security(("bearer" = [])),
    request_body(content((PushRequest = "application/json"), (PushRequest = "application/msgpack"))),
    responses(
        (status = 200, description = "Every event appended, or recognised as a duplicate", content((PushResponse = "application/json"), (PushResponse = "application/msgpack"))),
        (status = 400, description = "Body that does not decode", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 409, description = "`event_id_reused`: an event_id already in the log with other content; nothing appended", body = ErrorResponse),
        (status = 413, description = "`batch_too_large`: over 1,000 events or 16 MiB", body = ErrorResponse),
        (status = 415, description = "Neither JSON nor MessagePack", body = ErrorResponse),
        (status = 422, description = "An invalid event; the message names `events[i].field`; or `too_many_heads`: the event would leave its aggregate over 32 conflicting heads (merge them first). Nothing appended", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all, fields(events))]
pub async fn push(
    State(state): State<AppState>,
    auth: UserAuth,
    Accepts(format): Accepts,
    SyncBody(req): SyncBody<PushRequest>,
) -> ApiResult<Response> {
    tracing::Span::current().record("events", req.events.len());
    let events = validate(auth.device_id, req.events)?;
    let now = state.clock.now();

    if let Some(hrana) = auth.db.remote() {
        // One read round trip and one conditional write batch (views::remote_write).
        let (results, tip) = apply_batch_remote(&auth.db, hrana, auth.device_id, now, &events).await?;
        // The replica, if any, answers no read before it holds the batch (read-your-writes),
        // and starts catching up now rather than at the next read.
        auth.db.wrote();
        state.notifier.notify(auth.user_id, tip.seq);
        return Ok(respond(format, results, tip));
    }
    let mut tx = LogTx::begin(&auth.db).await?;
    // The device may have been revoked while this request waited for the lock.
    require_active_in(&tx, auth.device_id).await?;
    let results = apply_batch(&mut tx, auth.device_id, now, events).await?;
    let tip = tx.tip();
    tx.commit().await?;
    state.notifier.notify(auth.user_id, tip.seq);
    Ok(respond(format, results, tip))
}

/// The answer to a push that committed (or found every event already there).
fn respond(format: crate::http::codec::Format, results: Vec<BatchResult>, tip: LogTip) -> Response {
    let conflicts = results.iter().filter(|result| result.status == EventStatus::Conflict).count();
    metrics::counter!("echolia_conflicts_created_total").increment(conflicts as u64);
    let results = results.into_iter().map(push_result).collect();
    let body = PushResponse { cursor: tip.seq, head_hash: HexHash(tip.hash), results };
    format.respond(StatusCode::OK, &body)
}

/// Checks every event before anything is written; the first bad one is a
/// 422 naming `events[i].field`.
pub fn validate(device: Uuid, events: Vec<ClientEvent>) -> ApiResult<Vec<NewEvent>> {
    if events.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::too_large(
            "batch_too_large",
            format!("a batch holds at most {MAX_BATCH_EVENTS} events, this one {}", events.len()),
        ));
    }
    events.into_iter().enumerate().map(|(index, event)| validate_event(device, index, event)).collect()
}

fn validate_event(device: Uuid, index: usize, event: ClientEvent) -> ApiResult<NewEvent> {
    let field = |name: &str| format!("events[{index}].{name}");
    if event.kind == Kind::Device {
        return Err(ApiError::invalid_field(&field("kind"), "`device` events are written by the server only"));
    }
    if matches!(event.kind, Kind::Tag | Kind::Embedding) && event.parent_id.is_none() {
        return Err(ApiError::invalid_field(
            &field("parent_id"),
            format!("is required for `{}` events (the entry it belongs to)", event.kind.as_str()),
        ));
    }
    match (event.op, &event.payload) {
        (Op::Put, None) => return Err(ApiError::invalid_field(&field("payload"), "is required for `put`")),
        (Op::Delete, Some(_)) => return Err(ApiError::invalid_field(&field("payload"), "must be absent for `delete`")),
        (_, Some(payload)) if payload.0.len() > MAX_PAYLOAD_BYTES => {
            return Err(ApiError::invalid_field(&field("payload"), format!("is over {MAX_PAYLOAD_BYTES} bytes")))
        }
        _ => {}
    }
    if event.version.len() > MAX_VERSION_KEYS {
        return Err(ApiError::invalid_field(&field("version"), format!("has over {MAX_VERSION_KEYS} devices")));
    }
    if event.version.iter().any(|(_, counter)| *counter == 0) {
        return Err(ApiError::invalid_field(&field("version"), "counters must be at least 1"));
    }
    if !(0..=9999).contains(&event.client_time.year()) {
        return Err(ApiError::invalid_field(&field("client_time"), "must be a time in the years 0000 to 9999"));
    }
    if event.version.get(&device) == 0 {
        return Err(ApiError::invalid_field(&field("version"), format!("must hold the pushing device {device}")));
    }
    Ok(NewEvent {
        event_id: event.event_id,
        kind: event.kind,
        aggregate_id: event.aggregate_id,
        parent_id: event.parent_id,
        op: event.op,
        version: event.version,
        payload: event.payload.map(|p| p.0),
        // The log keeps microseconds: truncate now, so a retry compares equal.
        client_time: event.client_time.trunc_subsecs(6),
    })
}

impl From<BatchError> for ApiError {
    fn from(err: BatchError) -> Self {
        match err {
            BatchError::EventIdReused { .. } => ApiError::conflict("event_id_reused", err.to_string()),
            BatchError::TooManyHeads { .. } => ApiError::unprocessable("too_many_heads", err.to_string()),
            BatchError::DeviceInactive { tokens_only: true } => {
                ApiError::unauthorized("token_revoked", "every token of this device has been revoked")
            }
            BatchError::DeviceInactive { tokens_only: false } => {
                ApiError::unauthorized("device_revoked", "this device has been revoked")
            }
            BatchError::Store(err) => err.into(),
        }
    }
}

fn push_result(result: BatchResult) -> PushResult {
    let status = match result.status {
        EventStatus::Applied => PushStatus::Applied,
        EventStatus::Conflict => PushStatus::Conflict,
        EventStatus::Stale => PushStatus::Stale,
        EventStatus::Duplicate => PushStatus::Duplicate,
    };
    PushResult { event_id: result.event_id.hyphenated(), seq: result.seq, status }
}
