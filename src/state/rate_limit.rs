//! Per-client-IP rate limits (GCRA, from `governor`): the limit per minute
//! is also the burst.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use chrono::{DateTime, Utc};

use crate::error::ApiError;
use crate::store::ControlDb;

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

/// A per-IP limit, enforced twice: in this process first (no database
/// write for a flood), then in the control database, which every API server
/// on it shares, so N servers still allow one limit, not N.
pub struct IpRateLimiter {
    which: Limiter,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// The same quota for the shared limit: one request per interval, the
    /// limit per minute at once.
    interval_ms: i64,
    burst_ms: i64,
}

impl IpRateLimiter {
    pub fn per_minute(which: Limiter, limit: NonZeroU32) -> Self {
        // At least 1 ms: past 60,000 a minute the division gives 0, and a
        // zero interval would let every request through the shared limit.
        let interval_ms = (60_000 / i64::from(limit.get())).max(1);
        Self {
            which,
            limiter: RateLimiter::keyed(Quota::per_minute(limit)),
            clock: DefaultClock::default(),
            interval_ms,
            burst_ms: interval_ms * i64::from(limit.get()),
        }
    }

    /// Both limits: this process's, then the shared one.
    pub async fn check(&self, ip: IpAddr, control: &ControlDb, now: DateTime<Utc>) -> Result<(), ApiError> {
        self.check_local(ip)?;
        let key = format!("{}:{ip}", self.which.as_str());
        match control.take_rate(&key, now.timestamp_millis(), self.interval_ms, self.burst_ms).await? {
            None => Ok(()),
            Some(wait_ms) => Err(ApiError::rate_limited(wait_ms.div_ceil(1000))),
        }
    }

    fn check_local(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.limiter.len() > MAX_TRACKED {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::rate_limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_interval_is_never_zero() {
        let quota = |limit| {
            let limiter = IpRateLimiter::per_minute(Limiter::Register, NonZeroU32::new(limit).unwrap());
            (limiter.interval_ms, limiter.burst_ms)
        };
        assert_eq!(quota(10), (6_000, 60_000));
        assert_eq!(quota(60_000), (1, 60_000));
        assert_eq!(quota(100_000), (1, 100_000));
    }
}
