//! Auth: anonymous registration, device enrolment, tokens bound to devices,
//! refresh rotation with reuse detection, and instant revocation.

pub mod devices;
pub mod enrol;
pub mod keys;
pub mod pairing;
pub mod rate_limit;
pub mod refresh;

use axum::http::header::{CACHE_CONTROL, PRAGMA};
use axum::http::HeaderName;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::state::AppState;

pub(crate) type NoStore = [(HeaderName, &'static str); 2];

/// Headers of every answer that carries tokens: no cache or proxy keeps it.
pub(crate) const NO_STORE: NoStore = [(CACHE_CONTROL, "no-store"), (PRAGMA, "no-cache")];

/// The auth routes, each documented by its handler's `#[utoipa::path]`.
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enrol::register).map(|route| {
            route.route_layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::limit_registrations))
        }))
        .routes(routes!(enrol::pair_device))
        .routes(routes!(pairing::start))
        .routes(routes!(pairing::claim).map(|route| {
            route.route_layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::limit_claims))
        }))
        .routes(routes!(pairing::show))
        .routes(routes!(pairing::approve))
        .routes(routes!(pairing::reject))
        .routes(routes!(pairing::result))
        .routes(routes!(keys::show))
        .routes(routes!(keys::rotate))
        .routes(routes!(refresh::refresh))
        .routes(routes!(devices::list))
        .routes(routes!(devices::update_current))
        .routes(routes!(devices::revoke))
}
