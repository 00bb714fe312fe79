//! The per-client-IP rate limits of the auth routes
//! ([`IpRateLimiter`](crate::state::rate_limit::IpRateLimiter)), as route
//! middleware: a rejected request gets 429 with `Retry-After`.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::ClientIp;
use crate::state::rate_limit::Limiter;
use crate::state::AppState;

/// Middleware for `POST /auth/register`: runs before the body is read, so
/// every attempt counts.
pub async fn limit_registrations(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    req: Request,
    next: Next,
) -> Response {
    enforce(&state, Limiter::Register, ip, req, next).await
}

/// Middleware for `POST /auth/pairing/claim`: every guess at a code counts.
pub async fn limit_claims(State(state): State<AppState>, ClientIp(ip): ClientIp, req: Request, next: Next) -> Response {
    enforce(&state, Limiter::PairingClaim, ip, req, next).await
}

async fn enforce(state: &AppState, which: Limiter, ip: IpAddr, req: Request, next: Next) -> Response {
    let limiter = match which {
        Limiter::Register => &state.register_limiter,
        Limiter::PairingClaim => &state.claim_limiter,
    };
    match limiter.check(ip, &state.control, state.clock.now()).await {
        Ok(()) => next.run(req).await,
        Err(err) => {
            if err.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
                metrics::counter!("echolia_rate_limited_total", "limiter" => which.as_str()).increment(1);
                tracing::info!("rate limited");
            }
            err.into_response()
        }
    }
}
