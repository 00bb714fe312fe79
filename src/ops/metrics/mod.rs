//! What the service counts for operators, and `GET /metrics` (Prometheus
//! text) on its own listener, `METRICS_ADDR`. No label ever holds a user or
//! device id: routes are templates, and the daily-active set of user ids
//! stays in this process.
//!
//! Counters live here as plain atomics the hot paths bump; the store keeps
//! its own figures (events appended, open databases) and the scrape reads
//! them, with the users directory and the disk usage, at scrape time.

pub mod endpoint;
pub mod requests;
pub mod text;

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Datelike, Utc};
use dashmap::DashMap;
use uuid::Uuid;

pub use endpoint::router;
use requests::RequestMetrics;
use text::{Exposition, Kind};

/// Past this many distinct models, LLM tokens count under `other`.
const MAX_MODELS: usize = 64;

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

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: RequestMetrics,
    pulls: AtomicU64,
    /// Of those, pages read ahead while the device decoded the one before.
    pulls_read_ahead: AtomicU64,
    long_polls_waiting: AtomicI64,
    conflicts_created: AtomicU64,
    /// Pairing claims with a wrong, used or expired code.
    pairing_failures: AtomicU64,
    /// Requests refused by a per-IP rate limit, by [`Limiter`].
    rate_limited: [AtomicU64; Limiter::ALL.len()],
    daily_active: DailyActive,
    llm_tokens: DashMap<String, AtomicU64>,
    disk_usage: endpoint::DiskUsage,
}

impl Metrics {
    /// A pull answered with a page (a long-poll counts once, when it answers).
    pub fn pull_answered(&self) {
        self.pulls.fetch_add(1, Ordering::Relaxed);
    }

    /// A pull answered with a page read ahead ([`crate::state::read_ahead`]).
    pub fn pull_read_ahead(&self) {
        self.pulls_read_ahead.fetch_add(1, Ordering::Relaxed);
    }

    /// A long-poll starts waiting; it stops counting when the guard drops,
    /// however it ends (answered, shut down, or its client gone).
    pub fn long_poll_waiting(&self) -> WaitingGuard<'_> {
        self.long_polls_waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(&self.long_polls_waiting)
    }

    /// Push results with status `conflict`, after their batch committed.
    pub fn conflicts_created(&self, count: u64) {
        self.conflicts_created.fetch_add(count, Ordering::Relaxed);
    }

    pub fn pairing_failed(&self) {
        self.pairing_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pairing_failures(&self) -> u64 {
        self.pairing_failures.load(Ordering::Relaxed)
    }

    pub fn rate_limited(&self, limiter: Limiter) {
        self.rate_limited[limiter as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An authenticated request of `user` at `now` (UTC days).
    pub fn user_active(&self, user: Uuid, now: DateTime<Utc>) {
        self.daily_active.record(user, day_of(now));
    }

    /// Tokens used through the LLM proxy, by model name as the upstream gave it.
    pub fn llm_tokens(&self, model: &str, tokens: u64) {
        if let Some(count) = self.llm_tokens.get(model) {
            count.fetch_add(tokens, Ordering::Relaxed);
            return;
        }
        // Racing first uses of new models may pass the bound by a few: harmless.
        let model = if self.llm_tokens.len() < MAX_MODELS { model } else { "other" };
        self.llm_tokens.entry(model.to_owned()).or_default().fetch_add(tokens, Ordering::Relaxed);
    }

    /// Writes the families this struct holds; `now` picks the current day.
    pub fn render(&self, text: &mut Exposition, now: DateTime<Utc>) {
        self.requests.render(text);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
        text.single("echolia_pulls_total", Kind::Counter, "Pulls answered with a page.", Some(load(&self.pulls)));
        text.single(
            "echolia_pulls_read_ahead_total",
            Kind::Counter,
            "Pulls answered with a page read ahead while the device decoded the one before.",
            Some(load(&self.pulls_read_ahead)),
        );
        let waiting = self.long_polls_waiting.load(Ordering::Relaxed) as f64;
        text.single(
            "echolia_long_polls_waiting",
            Kind::Gauge,
            "Pulls (`wait` > 0) waiting for a push now.",
            Some(waiting),
        );
        let conflicts = load(&self.conflicts_created);
        let help = "Pushed events that became a conflicting head (push status `conflict`).";
        text.single("echolia_conflicts_created_total", Kind::Counter, help, Some(conflicts));
        let active = self.daily_active.count(day_of(now)) as f64;
        let help = "Distinct users with an authenticated request today (UTC).";
        text.single("echolia_daily_active_users", Kind::Gauge, help, Some(active));
        let failures = load(&self.pairing_failures);
        let help = "Pairing claims with a wrong, used or expired code.";
        text.single("echolia_pairing_failures_total", Kind::Counter, help, Some(failures));

        let name = "echolia_rate_limited_total";
        text.family(name, Kind::Counter, "Requests refused by a per-client-IP rate limit, by limiter.");
        for limiter in Limiter::ALL {
            text.sample(name, &[("limiter", limiter.as_str())], load(&self.rate_limited[limiter as usize]));
        }

        let name = "echolia_llm_tokens_total";
        text.family(name, Kind::Counter, "Tokens used through the LLM proxy, by model.");
        let mut models: Vec<(String, f64)> =
            self.llm_tokens.iter().map(|m| (m.key().clone(), load(m.value()))).collect();
        models.sort_by(|a, b| a.0.cmp(&b.0));
        for (model, tokens) in &models {
            text.sample(name, &[("model", model)], *tokens);
        }
    }
}

/// Keeps a long-poll counted as waiting while it lives.
#[must_use = "the long-poll counts as waiting only while the guard lives"]
pub struct WaitingGuard<'a>(&'a AtomicI64);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn day_of(time: DateTime<Utc>) -> i32 {
    time.date_naive().num_days_from_ce()
}

/// The users seen today. Each id maps to the last day it was seen, so a
/// day change needs no coordination: only today's entries count, and the
/// first request of a new day drops the older ones.
#[derive(Default)]
struct DailyActive {
    day: AtomicI32,
    users: DashMap<Uuid, i32>,
}

impl DailyActive {
    fn record(&self, user: Uuid, day: i32) {
        // A plain load first: the read-modify-write happens once a day.
        if self.day.load(Ordering::Relaxed) < day && self.day.fetch_max(day, Ordering::Relaxed) < day {
            self.users.retain(|_, seen| *seen >= day);
        }
        if self.users.get(&user).is_some_and(|seen| *seen >= day) {
            return;
        }
        // A request that read the clock just before midnight must not move
        // a user seen on the new day back to the old one.
        self.users.entry(user).and_modify(|seen| *seen = (*seen).max(day)).or_insert(day);
    }

    fn count(&self, day: i32) -> usize {
        self.users.iter().filter(|seen| *seen.value() == day).count()
    }
}

/// Counts only: the ids must never reach a log line through `{:?}`.
impl std::fmt::Debug for DailyActive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DailyActive").field("users", &self.users.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_actives_are_distinct_and_start_again_each_day() {
        let active = DailyActive::default();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        active.record(alice, 10);
        active.record(alice, 10);
        active.record(bob, 10);
        assert_eq!(active.count(10), 2);
        active.record(bob, 11);
        assert_eq!(active.count(11), 1);
        assert_eq!(active.users.len(), 1, "yesterday's ids are dropped");
        active.record(alice, 10); // a request that read the clock just before midnight
        assert_eq!(active.count(11), 1);
        assert_eq!(active.count(12), 0, "a day with no request yet");
    }

    #[test]
    fn the_waiting_gauge_follows_its_guards_and_models_are_bounded() {
        let metrics = Metrics::default();
        let first = metrics.long_poll_waiting();
        let second = metrics.long_poll_waiting();
        assert_eq!(metrics.long_polls_waiting.load(Ordering::Relaxed), 2);
        drop((first, second));
        assert_eq!(metrics.long_polls_waiting.load(Ordering::Relaxed), 0);

        for index in 0..MAX_MODELS + 5 {
            metrics.llm_tokens(&format!("model-{index}"), 1);
        }
        metrics.llm_tokens("model-0", 9);
        assert_eq!(metrics.llm_tokens.len(), MAX_MODELS + 1);
        assert_eq!(metrics.llm_tokens.get("other").unwrap().load(Ordering::Relaxed), 5);
        assert_eq!(metrics.llm_tokens.get("model-0").unwrap().load(Ordering::Relaxed), 10);
    }
}
