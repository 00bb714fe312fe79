//! The Play Store: subscriptions posted by the app, checked with the Play
//! Developer API, and real-time developer notifications (Pub/Sub push).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use uuid::Uuid;

use super::{entitlement_of, known_user, not_configured, EntitlementResponse, NotificationOutcome};
use crate::entitlements::google::{is_safe_id, GoogleError, PlayClient, PushAuthError, SubscriptionPurchase};
use crate::entitlements::{self, Applied, Received, Source, Status};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::http::json::ApiJson;
use crate::state::{AppState, UserAuth};

/// `notificationType` of a revocation (a refund or a chargeback ended it).
const SUBSCRIPTION_REVOKED: i64 = 12;
/// `notificationType` of a new purchase.
const SUBSCRIPTION_PURCHASED: i64 = 4;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// The subscription's product id.
    pub product_id: String,
    /// The purchase token Google Play Billing handed the app.
    pub purchase_token: String,
}

/// A Pub/Sub push request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PushRequest {
    pub message: PushMessage,
    pub subscription: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PushMessage {
    /// Base64 of the `DeveloperNotification` JSON.
    pub data: Option<String>,
    /// Pub/Sub sends the id under both names.
    #[serde(rename = "messageId")]
    pub message_id: Option<String>,
    #[serde(rename = "message_id")]
    pub message_id_snake: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeveloperNotification {
    package_name: String,
    subscription_notification: Option<SubscriptionNotification>,
    voided_purchase_notification: Option<VoidedPurchaseNotification>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionNotification {
    notification_type: i64,
    purchase_token: String,
    subscription_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VoidedPurchaseNotification {
    purchase_token: String,
    /// 1: subscription, 2: one-time product.
    product_type: Option<i64>,
}

fn client(state: &AppState) -> ApiResult<&PlayClient> {
    state.stores.google.as_ref().map_err(|missing| not_configured("the Play Store", missing))
}

fn upstream(err: GoogleError) -> ApiError {
    match err {
        GoogleError::UnknownPurchase => {
            ApiError::unprocessable("unknown_purchase", "the Play Store does not know this purchase token for this app")
        }
        GoogleError::Timeout => {
            ApiError::client(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "the Play Store did not answer in time")
        }
        GoogleError::Upstream(detail) => {
            tracing::warn!(error = %detail, "Play Developer API");
            ApiError::client(StatusCode::BAD_GATEWAY, "upstream_error", "the Play Store answered an error; retry later")
        }
    }
}

fn gives_access(status: Status) -> bool {
    matches!(status, Status::Active | Status::Grace)
}

/// A Play Billing subscription purchase: read from the Play Developer API,
/// acknowledged, linked to the caller.
#[utoipa::path(post, path = "/payments/google/subscriptions", tag = "payments", security(("bearer" = [])),
    request_body = SubscriptionRequest,
    responses(
        (status = 200, description = "Recorded and acknowledged; the caller's entitlement", body = EntitlementResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 403, description = "`account_mismatch`: the purchase's `obfuscatedExternalAccountId` names another user",
            body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 422, description = "`unknown_purchase`, `wrong_environment` (a test purchase on a production server \
            or the reverse), `validation_failed`", body = ErrorResponse),
        (status = 502, description = "`upstream_error`: the Play Developer API failed", body = ErrorResponse),
        (status = 503, description = "`not_configured`: the Play Store settings are missing", body = ErrorResponse),
        (status = 504, description = "`upstream_timeout`", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn subscription(
    State(state): State<AppState>,
    auth: UserAuth,
    ApiJson(body): ApiJson<SubscriptionRequest>,
) -> ApiResult<Json<EntitlementResponse>> {
    let client = client(&state)?;
    for (field, value) in [("product_id", &body.product_id), ("purchase_token", &body.purchase_token)] {
        if !is_safe_id(value) {
            return Err(ApiError::invalid_field(field, "must be 1 to 1024 letters, digits, `.`, `_` or `-`"));
        }
    }
    let now = state.clock.now();
    let purchase = client.subscription(&state.http, &body.purchase_token, now).await.map_err(upstream)?;
    if purchase.environment() != client.environment() {
        return Err(ApiError::unprocessable(
            "wrong_environment",
            "a test purchase and a production server (or the reverse): sandbox and production never mix",
        ));
    }
    if let Some(account) = purchase.account_id() {
        if Uuid::parse_str(account).ok() != Some(auth.user_id) {
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                "account_mismatch",
                "this purchase was made for another account (obfuscatedExternalAccountId)",
            ));
        }
    }
    if !purchase.line_items.is_empty() && !purchase.line_items.iter().any(|item| item.product_id == body.product_id) {
        return Err(ApiError::invalid_field("product_id", "is not the product of this purchase"));
    }
    let update = purchase.update(&body.purchase_token, &body.product_id, now, false);
    store(&state, &purchase, &update, Some(auth.user_id), None).await?;
    if purchase.needs_acknowledgement() && gives_access(update.status) {
        client.acknowledge(&state.http, &update.product_id, &body.purchase_token, now).await.map_err(upstream)?;
    }
    metrics::counter!("echolia_store_updates_total", "store" => "google", "via" => "app", "outcome" => "applied")
        .increment(1);
    Ok(Json(EntitlementResponse { entitlement: entitlement_of(&state, auth.user_id, now).await? }))
}

/// Stores what a purchase says, in one transaction: the subscription (linked
/// to `user`, else to the owner of the token it replaces), the retirement of
/// the token it replaces, and the notification if there is one. `None` if the
/// notification was a redelivery.
async fn store(
    state: &AppState,
    purchase: &SubscriptionPurchase,
    update: &entitlements::Update,
    user: Option<Uuid>,
    received: Option<(&str, &str)>,
) -> ApiResult<Option<&'static str>> {
    let control = state.control.conn().await?;
    let tx = control.transaction_with_behavior(libsql::TransactionBehavior::Immediate).await?;
    let mut user = user;
    if let Some(linked) = &purchase.linked_purchase_token {
        if user.is_none() {
            user = entitlements::owner(&tx, Source::Google, update.environment, linked).await?.flatten();
        }
        entitlements::retire(&tx, Source::Google, update.environment, linked).await?;
    }
    let applied = entitlements::apply(&tx, update, user, state.clock.now()).await?;
    let owner = entitlements::owner(&tx, Source::Google, update.environment, &update.store_id).await?.flatten();
    let outcome = match applied {
        Applied::Stale => "stale",
        Applied::Applied if owner.is_some() => "applied",
        Applied::Applied => "unlinked",
    };
    if let Some((message_id, kind)) = received {
        let received = Received {
            source: Source::Google,
            notification_id: message_id,
            kind,
            store_id: Some(&update.store_id),
            outcome,
            signed_at: Some(update.signed_at),
        };
        if !entitlements::record(&tx, &received, state.clock.now()).await? {
            tx.rollback().await?;
            return Ok(None);
        }
    }
    tx.commit().await?;
    Ok(Some(outcome))
}

/// Records a notification that changes nothing.
async fn ignore(state: &AppState, message_id: &str, kind: &str) -> ApiResult<Json<NotificationOutcome>> {
    let control = state.control.conn().await?;
    let received = Received {
        source: Source::Google,
        notification_id: message_id,
        kind,
        store_id: None,
        outcome: "ignored",
        signed_at: None,
    };
    let fresh = entitlements::record(&control, &received, state.clock.now()).await?;
    Ok(done(if fresh { "ignored" } else { "duplicate" }))
}

fn done(outcome: &'static str) -> Json<NotificationOutcome> {
    metrics::counter!("echolia_store_updates_total", "store" => "google", "via" => "notification", "outcome" => outcome)
        .increment(1);
    Json(NotificationOutcome { outcome })
}

/// Real-time developer notifications, pushed by a Pub/Sub push subscription
/// with an OIDC token (audience `GOOGLE_PUBSUB_AUDIENCE`). Deduplicated by
/// `messageId`; each one reads the subscription again from the Play
/// Developer API, so their order does not matter.
#[utoipa::path(post, path = "/webhooks/google", tag = "payments",
    request_body = PushRequest,
    responses(
        (status = 200, description = "Received (also a redelivery, a test notification, another app's, one whose \
            `message.data` is not a developer notification: `ignored`)", body = NotificationOutcome),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "`invalid_token`: no valid Google OIDC token for our audience from \
            `GOOGLE_PUBSUB_SERVICE_ACCOUNT`", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not JSON", body = ErrorResponse),
        (status = 422, description = "`validation_failed`: no `message.messageId`", body = ErrorResponse),
        (status = 502, description = "`upstream_error`: Google's keys or the Play Developer API failed (Pub/Sub retries)",
            body = ErrorResponse),
        (status = 503, description = "`not_configured`: the Play Store or Pub/Sub settings are missing",
            body = ErrorResponse),
        (status = 504, description = "`upstream_timeout`", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn notification(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PushRequest>,
) -> ApiResult<Json<NotificationOutcome>> {
    let pubsub = state.stores.pubsub.as_ref().map_err(|missing| not_configured("Play Store notifications", missing))?;
    let client = client(&state)?;
    let now = state.clock.now();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "a Pub/Sub push needs Google's OIDC token"))?;
    match pubsub.verify(&state.http, token.trim(), now).await {
        Ok(()) => {}
        Err(PushAuthError::Invalid) => {
            metrics::counter!("echolia_store_rejections_total", "store" => "google", "reason" => "invalid_token")
                .increment(1);
            return Err(ApiError::unauthorized("invalid_token", "the push request's OIDC token is not valid for us"));
        }
        Err(PushAuthError::Keys(err)) => return Err(upstream(err)),
    }
    let message_id = body
        .message
        .message_id
        .as_deref()
        .or(body.message.message_id_snake.as_deref())
        .filter(|id| !id.is_empty() && id.len() <= 200)
        .ok_or_else(|| ApiError::invalid_field("message.messageId", "is missing"))?;
    let control = state.control.conn().await?;
    if entitlements::seen(&control, Source::Google, message_id).await? {
        return Ok(done("duplicate"));
    }
    let data = body.message.data.as_deref().unwrap_or_default();
    let decoded: Option<DeveloperNotification> =
        STANDARD.decode(data).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    // Authenticated, so Google's: an error would only make Pub/Sub retry it for days.
    let Some(notification) = decoded else {
        tracing::warn!("Play Store notification whose data is not a developer notification");
        return ignore(&state, message_id, "undecodable").await;
    };
    if notification.package_name != client.package_name() {
        return ignore(&state, message_id, "other_package").await;
    }
    let (purchase_token, kind, revoked, product_id) =
        match (&notification.subscription_notification, &notification.voided_purchase_notification) {
            (Some(sub), _) => (
                sub.purchase_token.as_str(),
                sub.notification_type.to_string(),
                sub.notification_type == SUBSCRIPTION_REVOKED,
                sub.subscription_id.as_deref().unwrap_or_default(),
            ),
            (None, Some(voided)) if voided.product_type.unwrap_or(1) == 1 => {
                (voided.purchase_token.as_str(), "voided".to_owned(), true, "")
            }
            // Test notifications, one-time products, voided one-time products.
            _ => return ignore(&state, message_id, "other").await,
        };
    let purchase = match client.subscription(&state.http, purchase_token, now).await {
        Ok(purchase) => purchase,
        Err(GoogleError::UnknownPurchase) => return ignore(&state, message_id, &kind).await,
        Err(err) => return Err(upstream(err)),
    };
    if purchase.environment() != client.environment() {
        return ignore(&state, message_id, "other_environment").await;
    }
    let update = purchase.update(purchase_token, product_id, now, revoked);
    let user = known_user(&control, purchase.account_id()).await?;
    if purchase.needs_acknowledgement()
        && gives_access(update.status)
        && notification
            .subscription_notification
            .as_ref()
            .is_some_and(|n| n.notification_type == SUBSCRIPTION_PURCHASED)
    {
        client.acknowledge(&state.http, &update.product_id, purchase_token, now).await.map_err(upstream)?;
    }
    let outcome = store(&state, &purchase, &update, user, Some((message_id, &kind))).await?;
    tracing::info!(kind = %kind, outcome = outcome.unwrap_or("duplicate"), "Play Store notification");
    Ok(done(outcome.unwrap_or("duplicate")))
}
