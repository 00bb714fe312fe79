//! Counters the service keeps for operators. (The Prometheus endpoint that
//! exposes them comes with the observability work.)

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Pairing claims with a wrong, used or expired code.
    pub pairing_failures: AtomicU64,
    /// Requests refused by a per-IP rate limit.
    pub rate_limited: AtomicU64,
}
