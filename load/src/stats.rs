//! What a worker measured: per operation, latencies of the successful
//! requests, items moved, failures by kind; and the statuses pushes got.
//! Each worker keeps its own and they are merged at the end (no locks).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use echolia::sync::wire::{PushResponse, PushStatus};
use serde::Serialize;

use crate::client::Failure;

#[derive(Debug, Default)]
pub struct OpStats {
    /// Microseconds, one per successful request.
    pub latencies_us: Vec<u64>,
    /// Events pushed, rows pulled, accounts registered.
    pub items: u64,
    /// 429 answers, apart from the other failures.
    pub rate_limited: u64,
    pub errors: BTreeMap<String, u64>,
}

/// How the server classified pushed events.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PushStatuses {
    pub applied: u64,
    pub conflict: u64,
    pub stale: u64,
    pub duplicate: u64,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub ops: BTreeMap<&'static str, OpStats>,
    pub statuses: PushStatuses,
    /// The first message of each failure kind, to show the cause once.
    pub first_errors: BTreeMap<String, String>,
}

impl Stats {
    pub fn ok(&mut self, op: &'static str, elapsed: Duration, items: u64) {
        let stats = self.ops.entry(op).or_default();
        stats.latencies_us.push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        stats.items += items;
    }

    pub fn failed(&mut self, op: &'static str, failure: &Failure) {
        let stats = self.ops.entry(op).or_default();
        if failure.is_rate_limited() {
            stats.rate_limited += 1;
            return;
        }
        let label = failure.label();
        *stats.errors.entry(label.clone()).or_default() += 1;
        self.first_errors.entry(format!("{op}: {label}")).or_insert_with(|| failure.to_string());
    }

    pub fn pushed(&mut self, response: &PushResponse) {
        for result in &response.results {
            let counter = match result.status {
                PushStatus::Applied => &mut self.statuses.applied,
                PushStatus::Conflict => &mut self.statuses.conflict,
                PushStatus::Stale => &mut self.statuses.stale,
                PushStatus::Duplicate => &mut self.statuses.duplicate,
            };
            *counter += 1;
        }
    }

    pub fn merge(&mut self, other: Stats) {
        for (op, theirs) in other.ops {
            let mine = self.ops.entry(op).or_default();
            mine.latencies_us.extend(theirs.latencies_us);
            mine.items += theirs.items;
            mine.rate_limited += theirs.rate_limited;
            for (label, count) in theirs.errors {
                *mine.errors.entry(label).or_default() += count;
            }
        }
        let (mine, theirs) = (&mut self.statuses, other.statuses);
        mine.applied += theirs.applied;
        mine.conflict += theirs.conflict;
        mine.stale += theirs.stale;
        mine.duplicate += theirs.duplicate;
        for (key, message) in other.first_errors {
            self.first_errors.entry(key).or_insert(message);
        }
    }

    pub fn error_count(&self) -> u64 {
        self.ops.values().flat_map(|op| op.errors.values()).sum()
    }
}

/// The bound of the measured phase: a deadline and an optional request count.
pub struct Budget {
    deadline: Instant,
    max_requests: Option<u64>,
    used: AtomicU64,
}

impl Budget {
    pub fn new(duration: Duration, max_requests: Option<u64>) -> Self {
        Budget { deadline: Instant::now() + duration, max_requests, used: AtomicU64::new(0) }
    }

    /// Takes one request from the budget; false once time or requests are used up.
    pub fn take(&self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        let used = self.used.fetch_add(1, Ordering::Relaxed);
        self.max_requests.is_none_or(|max| used < max)
    }
}

/// Latency percentiles in milliseconds, by nearest rank over the sorted samples.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let index = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            ms(samples[index])
        };
        let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0;
        Percentiles { p50: rank(0.50), p95: rank(0.95), p99: rank(0.99), max: ms(samples[samples.len() - 1]), mean }
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&mut []).max, 0.0);
    }

    #[test]
    fn the_budget_stops_at_its_request_count() {
        let budget = Budget::new(Duration::from_secs(60), Some(3));
        assert_eq!((0..5).filter(|_| budget.take()).count(), 3);
    }
}
