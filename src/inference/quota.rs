//! Quotas per tier, as arithmetic: given what the ledger holds for a user
//! (requests in the last minute, tokens today), may one more request start,
//! and if not, how long until it may. The counts come from the user's
//! database (`ledger`), so every process on one `DATA_DIR` enforces the same
//! budget.

use chrono::{DateTime, Duration, NaiveTime, Utc};

use crate::config::llm::{Limits, LlmConfig};
/// The subscription tier quotas depend on (from the user's entitlement).
pub use crate::entitlements::Tier;

impl Tier {
    pub fn limits(self, config: &LlmConfig) -> Limits {
        match self {
            Self::Free => config.free,
            Self::Pro => config.pro,
        }
    }
}

/// What the ledger says about a user at the time of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    /// Requests started in the last 60 seconds.
    pub requests_last_minute: u32,
    /// When a slot frees, less 60 s: the start of the oldest of them or,
    /// when they are over the limit, of the (count − limit + 1)-th oldest.
    pub oldest_in_minute: Option<DateTime<Utc>>,
    /// Input and output tokens charged since 00:00 UTC.
    pub tokens_today: u64,
}

/// Why a request may not start, and for how many seconds (≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RequestsPerMinute { retry_after: u64 },
    TokensPerDay { retry_after: u64 },
}

impl Refusal {
    pub fn retry_after(self) -> u64 {
        match self {
            Self::RequestsPerMinute { retry_after } | Self::TokensPerDay { retry_after } => retry_after,
        }
    }

    pub fn limit(self) -> &'static str {
        match self {
            Self::RequestsPerMinute { .. } => "requests_per_minute",
            Self::TokensPerDay { .. } => "tokens_per_day",
        }
    }
}

pub const WINDOW: Duration = Duration::seconds(60);

/// Decides whether one more request may start now. A limit of 0 is no limit.
/// The token budget is checked before (a request is refused once the day's
/// tokens reached it) and charged after: a stream that overshoots is charged
/// in full and blocks the next request.
pub fn check(limits: Limits, spent: Spent, now: DateTime<Utc>) -> Result<(), Refusal> {
    if limits.tokens_per_day > 0 && spent.tokens_today >= limits.tokens_per_day {
        let midnight = (now.date_naive() + chrono::Days::new(1)).and_time(NaiveTime::MIN).and_utc();
        return Err(Refusal::TokensPerDay { retry_after: ceil_secs(midnight - now) });
    }
    if limits.requests_per_minute > 0 && spent.requests_last_minute >= limits.requests_per_minute {
        let frees_at = spent.oldest_in_minute.map_or(now + WINDOW, |oldest| oldest + WINDOW);
        return Err(Refusal::RequestsPerMinute { retry_after: ceil_secs(frees_at - now) });
    }
    Ok(())
}

/// Whole seconds, rounded up, at least 1.
fn ceil_secs(duration: Duration) -> u64 {
    let millis = duration.num_milliseconds().max(0) as u64;
    millis.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    const LIMITS: Limits = Limits { requests_per_minute: 3, tokens_per_day: 1000 };

    #[test]
    fn under_the_limits_passes_and_zero_means_unlimited() {
        let spent = Spent { requests_last_minute: 2, oldest_in_minute: None, tokens_today: 999 };
        assert_eq!(check(LIMITS, spent, at("2026-11-29T10:00:00Z")), Ok(()));
        let none = Limits { requests_per_minute: 0, tokens_per_day: 0 };
        let spent = Spent { requests_last_minute: 1 << 30, oldest_in_minute: None, tokens_today: u64::MAX };
        assert_eq!(check(none, spent, at("2026-11-29T10:00:00Z")), Ok(()));
    }

    #[test]
    fn the_day_budget_resets_at_midnight_utc() {
        let spent = Spent { requests_last_minute: 0, oldest_in_minute: None, tokens_today: 1500 };
        let refusal = check(LIMITS, spent, at("2026-11-29T23:59:30.5Z")).unwrap_err();
        assert_eq!(refusal, Refusal::TokensPerDay { retry_after: 30 });
    }

    #[test]
    fn the_minute_frees_when_its_oldest_request_leaves() {
        let spent =
            Spent { requests_last_minute: 3, oldest_in_minute: Some(at("2026-11-29T10:00:00Z")), tokens_today: 0 };
        let refusal = check(LIMITS, spent, at("2026-11-29T10:00:45Z")).unwrap_err();
        assert_eq!(refusal, Refusal::RequestsPerMinute { retry_after: 15 });
    }

    proptest! {
        /// A refusal always asks for 1 s to a day, never 0 (clients would spin).
        #[test]
        fn retry_after_is_between_one_second_and_a_day(secs in 0i64..86_400 * 3, used in 0u32..10, oldest_ago in 0i64..60_000, tokens in 0u64..3000) {
            let now = at("2026-11-29T00:00:00Z") + Duration::seconds(secs);
            let spent = Spent { requests_last_minute: used, oldest_in_minute: Some(now - Duration::milliseconds(oldest_ago)), tokens_today: tokens };
            if let Err(refusal) = check(LIMITS, spent, now) {
                prop_assert!((1..=86_400).contains(&refusal.retry_after()));
            } else {
                prop_assert!(used < 3 && tokens < 1000);
            }
        }
    }
}
