//! Per-client-IP rate limits (GCRA, from `governor`): the limit per minute
//! is also the burst. A rejected request gets 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::ClientIp;

/// Past this many tracked addresses, idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

/// The per-IP rate limiters, as `echolia_rate_limited_total` labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    Register,
    PairingClaim,
}

impl Limiter {
    pub const ALL: [Limiter; 2] = [Limiter::Register, Limiter::PairingClaim];

    pub fn as_str(self) -> &'static str {
        match self {
            Limiter::Register => "register",
            Limiter::PairingClaim => "pairing_claim",
        }
    }
}

pub struct IpRateLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl IpRateLimiter {
    pub fn per_minute(limit: NonZeroU32) -> Self {
        Self { limiter: RateLimiter::keyed(Quota::per_minute(limit)), clock: DefaultClock::default() }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.limiter.len() > MAX_TRACKED {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::rate_limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        })
    }
}

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
    match limiter.check(ip) {
        Ok(()) => next.run(req).await,
        Err(err) => {
            metrics::counter!("echolia_rate_limited_total", "limiter" => which.as_str()).increment(1);
            tracing::info!("rate limited");
            err.into_response()
        }
    }
}
