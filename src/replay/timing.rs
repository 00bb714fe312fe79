//! Replay's phase timings, logged at debug level (shared by the sorted log
//! and the rest of replay, so it imports nothing of either).

use std::time::Duration;

/// For the phase timings replay logs at debug level.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
