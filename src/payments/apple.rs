//! The App Store: StoreKit 2 transactions posted by the app, and App Store
//! Server Notifications V2.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::{entitlement_of, known_user, not_configured, EntitlementResponse, NotificationOutcome};
use crate::entitlements::apple::{self as verify, AppleError, AppleVerifier, Notification};
use crate::entitlements::{self, Applied, Received, Source};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::http::json::ApiJson;
use crate::state::{AppState, UserAuth};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionRequest {
    /// The JWS of a StoreKit 2 `Transaction` (`jwsRepresentation`).
    pub signed_transaction: String,
}

/// App Store Server Notifications V2 post this.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NotificationRequest {
    #[serde(rename = "signedPayload")]
    pub signed_payload: String,
}

fn verifier(state: &AppState) -> ApiResult<&AppleVerifier> {
    state.stores.apple.as_ref().map_err(|missing| not_configured("the App Store", missing))
}

/// 422: `wrong_app` and `wrong_environment` are signed by Apple for someone
/// else; everything else is `invalid_signature` (also a `signedDate` ahead
/// of our clock).
fn rejected(err: AppleError) -> ApiError {
    let store = "apple";
    let reason = match &err {
        AppleError::AppIdentifier => "wrong_app",
        AppleError::Environment => "wrong_environment",
        _ => "invalid_signature",
    };
    metrics::counter!("echolia_store_rejections_total", "store" => store, "reason" => reason).increment(1);
    match err {
        AppleError::AppIdentifier => {
            ApiError::unprocessable("wrong_app", "signed by Apple for another app (bundle id or app Apple id)")
        }
        AppleError::Environment => ApiError::unprocessable(
            "wrong_environment",
            "signed by Apple for the other environment: sandbox and production never mix",
        ),
        other => ApiError::unprocessable("invalid_signature", other.to_string()),
    }
}

/// A StoreKit 2 purchase, restore or renewal seen by the app: verified, then
/// linked to the caller.
#[utoipa::path(post, path = "/payments/apple/transactions", tag = "payments", security(("bearer" = [])),
    request_body = TransactionRequest,
    responses(
        (status = 200, description = "Recorded; the caller's entitlement", body = EntitlementResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 403, description = "`app_account_token_mismatch`: the transaction's `appAccountToken` names another user",
            body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 422, description = "`invalid_signature` (not signed by Apple: signature, chain, format, a \
            `signedDate` in the future), `wrong_app` (another bundle id), `wrong_environment` (sandbox vs production), \
            `unsupported_product` (not an auto-renewable subscription), `validation_failed`", body = ErrorResponse),
        (status = 503, description = "`not_configured`: the App Store settings are missing (named in the message)",
            body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn transaction(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiJson(body): ApiJson<TransactionRequest>,
) -> ApiResult<Json<EntitlementResponse>> {
    let verifier = verifier(&state)?;
    let now = state.clock.now();
    let transaction = verifier.transaction(&body.signed_transaction, now.timestamp_millis()).map_err(rejected)?;
    if let Some(token) = &transaction.app_account_token {
        if Uuid::parse_str(token).ok() != Some(auth.user_id) {
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                "app_account_token_mismatch",
                "this purchase was made for another account (appAccountToken)",
            ));
        }
    }
    let update = verify::transaction_update(&transaction, verifier.environment()).ok_or_else(|| {
        ApiError::invalid_field("signed_transaction", "names no originalTransactionId, productId or signedDate")
    })?;
    if !verify::is_auto_renewable(&transaction) {
        return Err(ApiError::unprocessable(
            "unsupported_product",
            "only auto-renewable subscriptions give an entitlement (not consumables, non-consumables or \
             non-renewing subscriptions)",
        ));
    }
    let control = state.control.conn().await?;
    let tx = control.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await?;
    // The app may post an old transaction Apple signed again today: it never
    // shortens what the server holds.
    let applied = entitlements::apply_from_app(&tx, &update, auth.user_id, now).await?;
    tx.commit().await?;
    let outcome = if applied == Applied::Applied { "applied" } else { "stale" };
    metrics::counter!("echolia_store_updates_total", "store" => "apple", "via" => "app", "outcome" => outcome)
        .increment(1);
    Ok(Json(EntitlementResponse { entitlement: entitlement_of(&state, auth.user_id, now).await? }))
}

/// App Store Server Notifications V2 (set this URL in App Store Connect).
/// Idempotent by `notificationUUID`; a notification older than the state held
/// (by `signedDate`) is recorded and changes nothing. Apple retries what is not
/// answered 2xx, so a notification Apple signed for another app or the other
/// environment is recorded and answered 200 `ignored`.
#[utoipa::path(post, path = "/webhooks/apple", tag = "payments",
    request_body = NotificationRequest,
    responses(
        (status = 200, description = "Received (also a redelivery, a notification for a subscription no user \
            has claimed yet, and one Apple signed for another app or the other environment: `ignored`)",
            body = NotificationOutcome),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 422, description = "`invalid_signature` (not signed by Apple), `validation_failed`",
            body = ErrorResponse),
        (status = 503, description = "`not_configured`: the App Store settings are missing", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn notification(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NotificationRequest>,
) -> ApiResult<Json<NotificationOutcome>> {
    let verifier = verifier(&state)?;
    let now = state.clock.now();
    let now_ms = now.timestamp_millis();
    let notification: Notification = verifier.verified(&body.signed_payload, now_ms).map_err(rejected)?;
    let kind = match &notification.subtype {
        Some(subtype) => format!("{}/{subtype}", notification.notification_type),
        None => notification.notification_type.clone(),
    };
    let control = state.control.conn().await?;
    if entitlements::seen(&control, Source::Apple, &notification.notification_uuid).await? {
        return Ok(done("duplicate"));
    }
    let data = notification.data.as_ref();
    let inner = verifier.check_notification(&notification).and_then(|()| {
        let transaction = data
            .and_then(|data| data.signed_transaction_info.as_deref())
            .map(|jws| verifier.transaction(jws, now_ms))
            .transpose()?;
        let renewal = data
            .and_then(|data| data.signed_renewal_info.as_deref())
            .map(|jws| verifier.renewal_info(jws, now_ms))
            .transpose()?;
        Ok((transaction, renewal))
    });
    let (transaction, renewal) = match inner {
        Ok(inner) => inner,
        // Signed by Apple for someone else: an answer other than 2xx would
        // only make Apple retry it for days.
        Err(err @ (AppleError::AppIdentifier | AppleError::Environment)) => {
            tracing::warn!(kind = %kind, reason = %err, "App Store notification for another app or environment");
            return ignore(&state, &notification, &kind, now).await;
        }
        Err(err) => return Err(rejected(err)),
    };
    let update = transaction.as_ref().and_then(|transaction| {
        verify::notification_update(&notification, transaction, renewal.as_ref(), verifier.environment())
    });
    let user = known_user(&control, transaction.as_ref().and_then(|t| t.app_account_token.as_deref())).await?;

    let tx = control.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await?;
    let outcome = match &update {
        None => "ignored",
        Some(update) => match entitlements::apply(&tx, update, user, now).await? {
            Applied::Stale => "stale",
            Applied::Applied => {
                let owner = entitlements::owner(&tx, Source::Apple, update.environment, &update.store_id).await?;
                if owner.flatten().is_some() {
                    "applied"
                } else {
                    "unlinked"
                }
            }
        },
    };
    let received = Received {
        source: Source::Apple,
        notification_id: &notification.notification_uuid,
        kind: &kind,
        store_id: update.as_ref().map(|update| update.store_id.as_str()),
        outcome,
        signed_at: notification.signed_date,
    };
    if !entitlements::record(&tx, &received, now).await? {
        // Received meanwhile by another request: that one applied it.
        tx.rollback().await?;
        return Ok(done("duplicate"));
    }
    tx.commit().await?;
    tracing::info!(kind = %kind, outcome, "App Store notification");
    metrics::counter!("echolia_store_updates_total", "store" => "apple", "via" => "notification", "outcome" => outcome)
        .increment(1);
    Ok(done(outcome))
}

/// Records a notification that changes nothing; `ignored` (or `duplicate`).
async fn ignore(
    state: &AppState,
    notification: &Notification,
    kind: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<Json<NotificationOutcome>> {
    let control = state.control.conn().await?;
    let received = Received {
        source: Source::Apple,
        notification_id: &notification.notification_uuid,
        kind,
        store_id: None,
        outcome: "ignored",
        signed_at: notification.signed_date,
    };
    let fresh = entitlements::record(&control, &received, now).await?;
    let outcome = if fresh { "ignored" } else { "duplicate" };
    if fresh {
        metrics::counter!("echolia_store_updates_total", "store" => "apple", "via" => "notification", "outcome" => outcome)
            .increment(1);
    }
    Ok(done(outcome))
}

fn done(outcome: &'static str) -> Json<NotificationOutcome> {
    if outcome == "duplicate" {
        metrics::counter!("echolia_store_updates_total", "store" => "apple", "via" => "notification", "outcome" => outcome)
            .increment(1);
    }
    Json(NotificationOutcome { outcome })
}
