//! The account: what it holds, a full export, and deletion.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::clock::parse_rfc3339;
use crate::entitlements;
use crate::error::ApiResult;
use crate::error::ErrorResponse;
use crate::events::log::{page_len, read_after, MAX_PAGE_PAYLOAD_BYTES};
use crate::events::read_tip;
use crate::events::wire::write_ndjson;
use crate::state::AppState;
use crate::state::UserAuth;
use crate::store::{provisioning, query_opt, StoreError};
use crate::views::devices;

/// Events read per chunk of an export.
const EXPORT_PAGE: u64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, delete)).routes(routes!(export))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub user_id: Uuid,
    pub created_at: Option<DateTime<Utc>>,
    /// Devices not revoked.
    pub devices: u64,
    /// Events in the log.
    pub events: u64,
    /// Size of the user's database on disk (with its WAL).
    pub storage_bytes: u64,
    /// `free` or `pro` (an App Store or Play Store subscription giving access
    /// now; details at `GET /account/entitlement`).
    pub tier: &'static str,
}

/// The account of the caller.
#[utoipa::path(get, path = "/account", tag = "account", security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn show(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Json<Account>> {
    let conn = auth.db.read().await?;
    let events = read_tip(&conn).await?.seq;
    let devices = devices::list(&conn).await?.iter().filter(|d| !d.is_revoked()).count() as u64;
    let control = state.control.conn().await?;
    let created_at = query_opt(&control, "SELECT created_at FROM users WHERE user_id = ?1", [auth.user_id.to_string()])
        .await?
        .map(|row| row.get::<String>(0))
        .transpose()?
        .and_then(|text| parse_rfc3339(&text));
    let tier = entitlements::tier(&control, auth.user_id, state.clock.now(), state.stores.live).await?;
    let storage_bytes = state.users.backend().user_storage_bytes(auth.user_id).await?;
    Ok(Json(Account { user_id: auth.user_id, created_at, devices, events, storage_bytes, tier: tier.as_str() }))
}

/// The whole log as NDJSON, one event per line as in `/sync/events`, streamed.
#[utoipa::path(get, path = "/account/export", tag = "account", security(("bearer" = [])),
    responses(
        (status = 200, description = "One event per line, oldest first, up to the head at the time of the request",
            content_type = "application/x-ndjson", body = String),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn export(auth: UserAuth) -> ApiResult<Response> {
    // The log is append-only: everything up to today's head stays as it is.
    let head = read_tip(&*auth.db.read().await?).await?.seq;
    let db = auth.db.clone();
    let chunks = futures_util::stream::try_unfold(0u64, move |since| {
        let db = db.clone();
        async move {
            if since >= head {
                return Ok::<_, StoreError>(None);
            }
            let conn = db.read().await?;
            let (count, _) = page_len(&conn, since, EXPORT_PAGE.min(head - since), MAX_PAGE_PAYLOAD_BYTES).await?;
            let events = read_after(&conn, since, count).await?;
            let Some(last) = events.last().map(|e| e.seq) else { return Ok(None) };
            let mut chunk = Vec::with_capacity(events.len() * 256);
            for event in events {
                write_ndjson(&mut chunk, event).map_err(|err| StoreError::io("encoding the export", err))?;
            }
            Ok(Some((Bytes::from(chunk), last)))
        }
    });
    let headers = [
        (header::CONTENT_TYPE, "application/x-ndjson"),
        (header::CONTENT_DISPOSITION, "attachment; filename=\"echolia-export.ndjson\""),
    ];
    Ok((headers, Body::from_stream(chunks)).into_response())
}

/// Delete the account: the user's database, its directory rows, every token.
#[utoipa::path(delete, path = "/account", tag = "account", security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; every token of every device now answers 401"),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn delete(State(state): State<AppState>, auth: UserAuth) -> ApiResult<StatusCode> {
    let user = auth.user_id;
    // Hold the user's write lock so no write lands while the files go.
    // (On a remote database the lock alone: a transaction held open there would hold up its deletion.)
    let writing = match auth.db.remote() {
        Some(_) => (None, Some(auth.db.lock_remote_writer().await?)),
        None => (Some(auth.db.begin_write().await?), None),
    };
    // The directory rows first, in one transaction: if that fails nothing is
    // gone and the client can retry; once it is done the user does not exist.
    let control = state.control.conn().await?;
    let tx = control.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await?;
    tx.execute("DELETE FROM users WHERE user_id = ?1", [user.to_string()]).await?;
    crate::identity::pairings::delete_user(&tx, user).await?;
    entitlements::delete_user(&tx, user).await?;
    // A crash before the database is gone leaves it in the ledger, for the sweep at start.
    provisioning::note_delete(&tx, user, state.clock.now()).await?;
    tx.commit().await?;
    state.users.delete(user).await?;
    if let Err(err) = provisioning::finish(&state.control, user).await {
        tracing::warn!(error = %err, %user, "a deleted account's ledger row stays for the next sweep");
    }
    drop(writing);
    state.auth.statuses().forget_user(user);
    state.read_ahead.forget(user);
    tracing::info!(%user, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}
