//! Pairing with a code (E2EE key exchange), after Ente's TV pairing:
//!
//! 1. an existing device opens a pairing and shows its code;
//! 2. the new device claims it with the code and its public key, and gets a
//!    claim token (a separate secret: the code alone never yields tokens);
//! 3. the existing device sees the claimant's key (both screens show a fingerprint);
//! 4. it approves with the user key sealed to that public key (or rejects);
//! 5. the new device collects its tokens and the sealed key, once.
//!
//! The server only ever holds the sealed envelope. Sessions live in the
//! control database, so a restart loses none.

pub mod code;

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::enrol::{key_envelope, profile};
use super::keys;
use crate::error::ErrorResponse;
use crate::error::{ApiError, ApiResult};
use crate::events::device::{DeviceAction, DeviceType};
use crate::events::LogTx;
use crate::http::{ApiJson, ApiPath, QueryParams};
use crate::identity::pairings::{self as store, Pairing, Status};
use crate::identity::{sessions, status, TokenResponse};
use crate::state::AppState;
use crate::state::UserAuth;
use crate::views::devices as device_view;
use crate::views::write::record_device;

/// How long a code can be claimed and approved.
pub const PAIRING_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// How long an approved result waits to be collected, counted from approval.
pub const RESULT_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// Open pairings one user may have at once.
pub const MAX_OPEN_PAIRINGS: u64 = 5;
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PairingStarted {
    pub pairing_id: Uuid,
    /// 8 Crockford base32 characters shown as `XXXX-XXXX`; single use.
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ClaimRequest {
    /// As shown (`XXXX-XXXX`); case, hyphens and spaces do not matter.
    pub code: String,
    pub device_name: String,
    pub device_type: DeviceType,
    pub platform: String,
    pub public_key: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClaimResponse {
    pub pairing_id: Uuid,
    /// Send as `X-Claim-Token` to collect the result. Shown once.
    pub claim_token: String,
}

/// The claiming device, as the approving device sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewDevice {
    pub device_name: String,
    pub device_type: DeviceType,
    pub platform: String,
    pub public_key: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PairingState {
    /// `waiting`, `claimed`, `approved`, `rejected` or `expired`.
    pub status: &'static str,
    pub new_device: Option<NewDevice>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ApproveRequest {
    /// The user key sealed to the new device's public key: standard base64, at most 64 KiB decoded.
    pub key_envelope: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Approved {
    pub device_id: Uuid,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PendingResult {
    /// `waiting` or `claimed`.
    pub status: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PairingResult {
    #[serde(flatten)]
    pub tokens: TokenResponse,
    /// Standard base64.
    pub key_envelope: String,
    pub approver_device_id: Uuid,
    pub approver_public_key: String,
}

fn not_found() -> ApiError {
    ApiError::not_found("pairing_not_found", "no such pairing, or its code was wrong, used or expired")
}

fn expired() -> ApiError {
    ApiError::not_found("pairing_expired", "this pairing has expired; start a new one")
}

/// The effective status of a pairing at `now`.
fn status_at(pairing: &Pairing, now: DateTime<Utc>) -> &'static str {
    match pairing.status {
        Status::Waiting | Status::Claimed if pairing.is_expired(now) => "expired",
        Status::Approved if pairing.is_expired(now) && !pairing.delivered => "expired",
        other => other.as_str(),
    }
}

/// A pairing of the caller's user, else 404.
async fn own_pairing(state: &AppState, auth: &UserAuth, pairing_id: Uuid) -> ApiResult<Pairing> {
    let conn = state.control.conn().await?;
    match store::by_id(&conn, pairing_id).await? {
        Some(pairing) if pairing.user_id == auth.user_id => Ok(pairing),
        _ => Err(not_found()),
    }
}

/// Step 1: open a pairing and get its code.
#[utoipa::path(post, path = "/auth/pairing", tag = "pairing", security(("bearer" = [])),
    responses(
        (status = 201, description = "Show `code` on this device", body = PairingStarted),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 429, description = "Already 5 open pairings (see `Retry-After`)", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn start(State(state): State<AppState>, auth: UserAuth) -> ApiResult<(StatusCode, Json<PairingStarted>)> {
    let now = state.clock.now();
    let conn = state.control.conn().await?;
    store::prune(&conn, now).await?;
    let (open, first_expiry) = store::open_pairings(&conn, auth.user_id, now).await?;
    if open >= MAX_OPEN_PAIRINGS {
        let wait_ms = first_expiry.map_or(1000, |at| at - now.timestamp_millis());
        return Err(ApiError::Client {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_pairings",
            message: format!("at most {MAX_OPEN_PAIRINGS} pairings may be open at once"),
            retry_after: Some(u64::try_from(wait_ms).unwrap_or(0).div_ceil(1000).max(1)),
        });
    }
    let pairing_id = Uuid::new_v4();
    let expires_at = now + PAIRING_TTL;
    // A fresh 40-bit code collides with a kept one about never; retry a few times all the same.
    for _ in 0..8 {
        let code = code::generate();
        if store::insert(
            &conn,
            pairing_id,
            auth.user_id,
            auth.device_id,
            state.auth.pairing_codes().hash(&code),
            now,
            expires_at,
        )
        .await?
        {
            tracing::info!(%pairing_id, "pairing opened");
            return Ok((
                StatusCode::CREATED,
                Json(PairingStarted { pairing_id, code: code::display(&code), expires_at }),
            ));
        }
    }
    Err(ApiError::internal("no free pairing code after 8 attempts"))
}

/// Step 2: the new device claims the code.
#[utoipa::path(post, path = "/auth/pairing/claim", tag = "pairing", request_body = ClaimRequest,
    responses(
        (status = 202, description = "Claimed; wait for approval with the claim token", body = ClaimResponse),
        (status = 404, description = "Wrong, used or expired code", body = ErrorResponse),
        (status = 422, description = "A field is missing or invalid", body = ErrorResponse),
        (status = 429, description = "Too many attempts from this address (see `Retry-After`)", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn claim(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> ApiResult<(StatusCode, Json<ClaimResponse>)> {
    let device = profile(req.device_name, req.device_type, req.platform, req.public_key, req.capabilities)?;
    let now = state.clock.now();
    let failed = || {
        metrics::counter!("echolia_pairing_failures_total").increment(1);
        tracing::info!("pairing claim failed");
        not_found()
    };
    let Some(code) = code::normalize(&req.code) else { return Err(failed()) };
    let conn = state.control.conn().await?;
    let mut found = None;
    for hash in state.auth.pairing_codes().candidates(&code) {
        found = store::by_code(&conn, &hash).await?;
        if found.is_some() {
            break;
        }
    }
    let Some(pairing) = found else { return Err(failed()) };
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let claim_token = URL_SAFE_NO_PAD.encode(secret);
    if !store::claim(&conn, pairing.pairing_id, sessions::token_hash(&claim_token), &device, now).await? {
        return Err(failed());
    }
    state.pairing_updates.notify(pairing.pairing_id, 0);
    tracing::info!(pairing_id = %pairing.pairing_id, "pairing claimed");
    Ok((StatusCode::ACCEPTED, Json(ClaimResponse { pairing_id: pairing.pairing_id, claim_token })))
}

/// Step 3: the existing device looks at the pairing (and the claimant's key).
#[utoipa::path(get, path = "/auth/pairing/{pairing_id}", tag = "pairing", security(("bearer" = [])),
    params(("pairing_id" = Uuid, Path)),
    responses(
        (status = 200, description = "Status, and the claiming device once claimed", body = PairingState),
        (status = 404, description = "No such pairing for this user", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn show(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiPath(pairing_id): ApiPath<Uuid>,
) -> ApiResult<Json<PairingState>> {
    let pairing = own_pairing(&state, &auth, pairing_id).await?;
    let new_device = pairing.new_device.clone().map(|d| NewDevice {
        device_name: d.device_name,
        device_type: d.device_type,
        platform: d.platform,
        public_key: d.public_key,
    });
    Ok(Json(PairingState { status: status_at(&pairing, state.clock.now()), new_device }))
}

/// Step 4: approve, sealing the user key to the new device's public key.
#[utoipa::path(post, path = "/auth/pairing/{pairing_id}/approve", tag = "pairing", security(("bearer" = [])),
    params(("pairing_id" = Uuid, Path)), request_body = ApproveRequest,
    responses(
        (status = 200, description = "The new device exists; it collects its tokens next", body = Approved),
        (status = 404, description = "No such pairing for this user, or expired", body = ErrorResponse),
        (status = 409, description = "Not claimed yet, or already approved or rejected", body = ErrorResponse),
        (status = 413, description = "Key envelope over 64 KiB", body = ErrorResponse),
        (status = 422, description = "key_envelope missing or not base64", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn approve(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiPath(pairing_id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<ApproveRequest>,
) -> ApiResult<Json<Approved>> {
    let envelope = key_envelope(&req.key_envelope)?;
    let pairing = own_pairing(&state, &auth, pairing_id).await?;
    let now = state.clock.now();
    check_decidable(&pairing, now)?;
    if pairing.status == Status::Waiting {
        return Err(ApiError::conflict("pairing_not_claimed", "no device has claimed this code yet"));
    }
    let Some(profile) = pairing.new_device.clone() else { return Err(not_found()) };

    // Create the device in the user's transaction, then decide in the control
    // database while still holding the user's write lock, then commit. The new
    // device's collection takes that lock too, so it never sees a decision
    // whose device is not committed.
    let new_device = Uuid::new_v4();
    let mut tx = LogTx::begin(&auth.db).await?;
    status::require_active_in(&tx, auth.device_id).await?;
    record_device(&mut tx, auth.device_id, new_device, DeviceAction::Paired(profile), now).await?;
    sessions::open(&tx, new_device, now).await?;
    let epoch = keys::current_epoch(&tx).await?;
    keys::store_envelope(&tx, new_device, epoch, &envelope, now).await?;
    let control = state.control.conn().await?;
    if !store::approve(&control, &pairing, new_device, auth.device_id, &envelope, now, now + RESULT_TTL).await? {
        return Err(ApiError::conflict("pairing_already_decided", "this pairing was approved or rejected already"));
    }
    if let Err(err) = tx.commit().await {
        if let Err(undo) = store::unapprove(&control, &pairing).await {
            tracing::error!(error = %undo, %pairing_id, "could not undo the approval of a pairing whose device failed");
        }
        return Err(err.into());
    }
    state.pairing_updates.notify(pairing_id, 1);
    tracing::info!(%pairing_id, new_device_id = %new_device, "pairing approved");
    Ok(Json(Approved { device_id: new_device }))
}

/// Step 4, the other way: reject.
#[utoipa::path(post, path = "/auth/pairing/{pairing_id}/reject", tag = "pairing", security(("bearer" = [])),
    params(("pairing_id" = Uuid, Path)),
    responses(
        (status = 204, description = "Rejected (also when it already was)"),
        (status = 404, description = "No such pairing for this user, or expired", body = ErrorResponse),
        (status = 409, description = "Already approved", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn reject(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiPath(pairing_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let pairing = own_pairing(&state, &auth, pairing_id).await?;
    if pairing.status == Status::Rejected {
        return Ok(StatusCode::NO_CONTENT);
    }
    check_decidable(&pairing, state.clock.now())?;
    if !store::reject(&state.control.conn().await?, pairing_id).await? {
        return Err(ApiError::conflict("pairing_already_decided", "this pairing was approved already"));
    }
    state.pairing_updates.notify(pairing_id, 2);
    tracing::info!(%pairing_id, "pairing rejected");
    Ok(StatusCode::NO_CONTENT)
}

fn check_decidable(pairing: &Pairing, now: DateTime<Utc>) -> ApiResult<()> {
    match pairing.status {
        Status::Approved | Status::Rejected => {
            Err(ApiError::conflict("pairing_already_decided", "this pairing was approved or rejected already"))
        }
        _ if pairing.is_expired(now) => Err(expired()),
        _ => Ok(()),
    }
}

/// Step 5: the new device collects its result (long-poll with `wait`).
#[utoipa::path(get, path = "/auth/pairing/{pairing_id}/result", tag = "pairing",
    params(
        ("pairing_id" = Uuid, Path),
        ("X-Claim-Token" = String, Header, description = "From the claim; missing or wrong answers 403 `invalid_claim_token`"),
        ("wait" = Option<u64>, Query, description = "0–60 s: hold the request until the pairing is decided"),
    ),
    responses(
        (status = 200, description = "Approved: tokens and the sealed key, delivered once", body = PairingResult),
        (status = 202, description = "Not decided yet", body = PendingResult),
        (status = 400, description = "`wait` not a whole number of 0–60 seconds, or `pairing_id` not a UUID", body = ErrorResponse),
        (status = 403, description = "Rejected, or the claim token missing or not this pairing's", body = ErrorResponse),
        (status = 404, description = "No such pairing, expired, or already collected", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn result(
    State(state): State<AppState>,
    ApiPath(pairing_id): ApiPath<Uuid>,
    headers: HeaderMap,
    params: QueryParams,
) -> ApiResult<Response> {
    let wait = Duration::from_secs(params.number("wait", 0, 0..=MAX_WAIT_SECS)?);
    let token = headers.get("x-claim-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut updates = state.pairing_updates.subscribe(pairing_id);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let conn = state.control.conn().await?;
        let Some(pairing) = store::by_id(&conn, pairing_id).await? else { return Err(not_found()) };
        let token_matches = pairing
            .claim_token_hash
            .as_deref()
            .is_some_and(|hash| !token.is_empty() && constant_time_eq(hash, &sessions::token_hash(token)));
        if !token_matches {
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                "invalid_claim_token",
                "this claim token is not this pairing's",
            ));
        }
        let now = state.clock.now();
        match status_at(&pairing, now) {
            "expired" => return Err(expired()),
            "rejected" => {
                return Err(ApiError::client(StatusCode::FORBIDDEN, "pairing_rejected", "the pairing was rejected"))
            }
            "approved" if pairing.delivered => {
                return Err(ApiError::not_found(
                    "pairing_collected",
                    "the result of this pairing was collected already",
                ))
            }
            "approved" => {
                return deliver(&state, &conn, pairing, now)
                    .await
                    .map(|json| (crate::auth::NO_STORE, json).into_response())
            }
            pending => {
                if tokio::time::Instant::now() >= deadline {
                    return Ok((StatusCode::ACCEPTED, Json(PendingResult { status: pending })).into_response());
                }
            }
        }
        drop(conn);
        let expiry =
            deadline.min(tokio::time::Instant::now() + (pairing.expires_at - now).to_std().unwrap_or_default());
        tokio::select! {
            _ = state.pairing_updates.changed(&mut updates) => {}
            () = tokio::time::sleep_until(expiry) => {}
            () = state.shutdown.cancelled() => {
                return Ok((StatusCode::ACCEPTED, Json(PendingResult { status: pairing.status.as_str() })).into_response());
            }
        }
    }
}

/// Hands out the result once: mark delivered, then issue the tokens.
async fn deliver(
    state: &AppState,
    control: &libsql::Connection,
    pairing: Pairing,
    now: DateTime<Utc>,
) -> ApiResult<Json<PairingResult>> {
    let (Some(device), Some(approver), Some(envelope)) =
        (pairing.new_device_id, pairing.approver_device, pairing.key_envelope.clone())
    else {
        return Err(not_found());
    };
    if !store::mark_delivered(control, pairing.pairing_id, now).await? {
        return Err(ApiError::not_found("pairing_collected", "the result of this pairing was collected already"));
    }
    let issued = async {
        let db = state.users.get(pairing.user_id).await?;
        let tx = db.begin_write().await?;
        if status::load(&tx, device).await? != Some(status::DeviceStatus::Active) {
            // Its approval did not commit (or it was revoked since): nothing to hand out.
            return Ok(None);
        }
        let approver_key =
            device_view::load(&tx, approver).await?.map(|row| row.profile.public_key).unwrap_or_default();
        let tokens = state.auth.issue_session(&tx, pairing.user_id, device, now).await?;
        tx.commit().await?;
        Ok::<_, crate::store::StoreError>(Some((tokens, approver_key)))
    }
    .await;
    match issued {
        Ok(None) => {
            store::unmark_delivered(control, &pairing).await?;
            Err(not_found())
        }
        Ok(Some((tokens, approver_public_key))) => {
            tracing::info!(pairing_id = %pairing.pairing_id, "pairing result delivered");
            Ok(Json(PairingResult {
                tokens,
                key_envelope: STANDARD.encode(envelope),
                approver_device_id: approver,
                approver_public_key,
            }))
        }
        Err(crate::store::StoreError::UserNotFound(_)) => Err(not_found()),
        Err(err) => {
            store::unmark_delivered(control, &pairing).await?;
            Err(err.into())
        }
    }
}

/// Runs [`sweep`] every `PAIRING_SWEEP_SECS` until the server stops.
pub async fn sweep_regularly(state: AppState) {
    let mut ticks = tokio::time::interval(state.config.pairing_sweep);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        if let Err(err) = sweep(&state).await {
            tracing::warn!(error = %err, "the sweep of expired pairings failed; it runs again at its next tick");
        }
    }
}

/// Cleans up after pairings that ran out: an approved one never collected
/// has its new device revoked (nobody holds its tokens; the log records the
/// approver as having revoked it) and its sealed key dropped; every pairing
/// expired over a day ago is forgotten. A user whose database fails is
/// logged and skipped (tried again at the next sweep), so one broken
/// database does not hold up the others. Returns how many devices it revoked.
pub async fn sweep(state: &AppState) -> crate::store::StoreResult<usize> {
    let now = state.clock.now();
    // The shared rate limits' keys whose requests are all in the past.
    state.control.sweep_rates(now.timestamp_millis()).await?;
    let control = state.control.conn().await?;
    let mut revoked = 0;
    for (pairing_id, user, device, approver) in store::uncollected(&control, now).await? {
        match sweep_one(state, user, device, approver, now).await {
            Ok(outcome) => {
                if outcome == Swept::Revoked {
                    revoked += 1;
                    tracing::info!(%pairing_id, device_id = %device, "pairing never collected: its device revoked");
                }
                store::purge_envelope(&control, pairing_id, now).await?;
            }
            Err(err) => {
                tracing::error!(%pairing_id, error = %err, "an expired pairing could not be swept; it is tried again at the next sweep");
            }
        }
    }
    store::prune(&control, now).await?;
    Ok(revoked)
}

#[derive(Debug, PartialEq, Eq)]
enum Swept {
    Revoked,
    /// Collected (the device holds tokens), already revoked, or its user gone.
    Untouched,
}

/// Revokes an uncollected pairing's device in its user's database, unless
/// the device was collected after all (a refresh token was issued to it:
/// the collection's transaction committed before this one).
async fn sweep_one(
    state: &AppState,
    user: Uuid,
    device: Uuid,
    approver: Uuid,
    now: DateTime<Utc>,
) -> crate::store::StoreResult<Swept> {
    // Revoked before the key is dropped: a collection racing this one
    // then finds the device revoked and hands nothing out.
    let db = match state.users.get(user).await {
        Ok(db) => db,
        Err(crate::store::StoreError::UserNotFound(_)) => return Ok(Swept::Untouched),
        Err(err) => return Err(err),
    };
    let mut tx = LogTx::begin(&db).await?;
    if status::load(&tx, device).await? != Some(status::DeviceStatus::Active)
        || sessions::has_refresh_tokens(&tx, device).await?
    {
        return Ok(Swept::Untouched);
    }
    record_device(&mut tx, approver, device, DeviceAction::Revoked, now).await?;
    sessions::revoke_refresh_tokens(&tx, device, now).await?;
    tx.commit().await?;
    state.auth.statuses().settle(user, device, status::DeviceStatus::Revoked);
    Ok(Swept::Revoked)
}

/// Compares two secrets' hashes in constant time.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}
