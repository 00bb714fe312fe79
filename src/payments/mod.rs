//! Payments: App Store and Play Store purchases posted by the apps, the
//! stores' server notifications, and the entitlement they give
//! (`GET /account/entitlement`). The model, its storage and the stores'
//! verifiers live below, in `entitlements`.

pub mod apple;
pub mod google;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::config::Missing;
use crate::entitlements::{self, Entitlement};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::state::{AppState, UserAuth};
use crate::store::query_opt;

/// Largest body the payment routes read (a signed transaction is a few KiB).
pub const BODY_LIMIT: usize = 256 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(apple::transaction))
        .routes(routes!(apple::notification))
        .routes(routes!(google::subscription))
        .routes(routes!(google::notification))
        .routes(routes!(show))
}

/// What a purchase posted by an app answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntitlementResponse {
    /// The caller's entitlement after the purchase (another subscription may
    /// give more than this one).
    pub entitlement: Entitlement,
}

/// What a store notification answers (the stores only look at the status).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationOutcome {
    /// `applied`: the subscription holds the news; `stale`: it already held
    /// newer news; `unlinked`: recorded for a subscription no user claimed
    /// yet; `ignored`: recorded, changes nothing (a type that changes no
    /// access, a product that is not an auto-renewable subscription, another
    /// app's, the other environment's, undecodable Pub/Sub data); `duplicate`:
    /// already received.
    pub outcome: &'static str,
}

/// 503 `not_configured`, naming what is missing.
fn not_configured(store: &str, missing: &Missing) -> ApiError {
    ApiError::client(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
        format!("{store} is not configured on this server: set {}", missing.0.join(", ")),
    )
}

/// The user named by a store's account id, if it is one of ours.
async fn known_user(control: &libsql::Connection, account: Option<&str>) -> ApiResult<Option<Uuid>> {
    let Some(user) = account.and_then(|id| Uuid::parse_str(id).ok()) else { return Ok(None) };
    let row = query_opt(control, "SELECT 1 FROM users WHERE user_id = ?1", [user.to_string()]).await?;
    Ok(row.map(|_| user))
}

async fn entitlement_of(state: &AppState, user: Uuid, now: DateTime<Utc>) -> ApiResult<Entitlement> {
    let control = state.control.conn().await?;
    Ok(entitlements::entitlement(&control, user, now, state.stores.live).await?)
}

/// The caller's entitlement: `pro` while an App Store or Play Store
/// subscription of this server's environment gives access.
#[utoipa::path(get, path = "/account/entitlement", tag = "payments", security(("bearer" = [])),
    responses(
        (status = 200, description = "The entitlement; `tier: free, status: expired, source: null` without any subscription",
            body = Entitlement),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn show(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Json<Entitlement>> {
    Ok(Json(entitlement_of(&state, auth.user_id, state.clock.now()).await?))
}
