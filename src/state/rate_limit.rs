//! Per-client-IP rate limits (GCRA, from `governor`): the limit per minute
//! is also the burst.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

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

/// Past this many tracked addresses, idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

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
