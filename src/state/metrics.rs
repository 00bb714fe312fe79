//! One server's metrics, recorded through the `metrics` facade
//! (`metrics::counter!("echolia_x_total").increment(1)` anywhere below a
//! request) and served by `ops::metrics`.
//!
//! Each [`Metrics`] (one per `AppState`) owns its recorder rather than a
//! process-global one, so servers sharing a process (the integration tests)
//! never count into each other. [`Metrics::scope`] makes it the facade's
//! recorder while a future is polled or dropped: each request, and tasks
//! spawned for one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::{DateTime, Datelike, Utc};
use dashmap::DashMap;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::time::Instant;
use uuid::Uuid;

use super::rate_limit::Limiter;

/// Seconds; long-polls (up to 60 s) land in `+Inf`.
const DURATION_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The README's Metrics table, the contract dashboards rely on, as rows of (name, labelled, type, what it
/// counts). Each family's HELP is taken from it, so the two cannot drift.
pub fn families() -> impl Iterator<Item = (&'static str, bool, &'static str, &'static str)> {
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).lines().filter_map(|row| {
        let (series, rest) = row.strip_prefix("| `").filter(|row| row.starts_with("echolia_"))?.split_once("` | ")?;
        let (kind, help) = rest.strip_suffix(" |")?.split_once(" | ")?;
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        Some((name, !labels.is_empty(), kind, help))
    })
}

/// One server's metrics. Not `Debug`: the daily-active ids must never reach a log line.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Users by the last UTC day they made an authenticated request.
    active: DashMap<Uuid, i32>,
    /// The disk usage last measured, and when; locked while measuring, so concurrent scrapes share one walk.
    pub disk_usage: tokio::sync::Mutex<Option<(Instant, u64)>>,
    /// The model names used as labels so far (at most [`MAX_MODEL_LABELS`]).
    llm_models: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct `model` label values before the rest count as `other`.
pub const MAX_MODEL_LABELS: usize = 64;

impl Default for Metrics {
    fn default() -> Self {
        // Only an empty list is refused.
        let builder = PrometheusBuilder::new().set_buckets(&DURATION_BUCKETS);
        let recorder = builder.unwrap_or_else(|_| PrometheusBuilder::new()).build_recorder();
        let (handle, active, disk_usage) = (recorder.handle(), DashMap::new(), Default::default());
        let llm_models = Default::default();
        let metrics = Metrics { recorder: Arc::new(recorder), handle, active, disk_usage, llm_models };
        with_local_recorder(&*metrics.recorder, || {
            for (name, labelled, kind, help) in families() {
                match kind {
                    "counter" => describe_counter!(name, help),
                    "gauge" => describe_gauge!(name, help),
                    _ => describe_histogram!(name, help),
                }
                // Counters start at 0 with the process, the limiters' and the waiting gauge too.
                if kind == "counter" && !labelled {
                    counter!(name).absolute(0);
                }
            }
            for limiter in Limiter::ALL {
                counter!("echolia_rate_limited_total", "limiter" => limiter.as_str()).absolute(0);
            }
            gauge!("echolia_long_polls_waiting").set(0);
        });
        metrics
    }
}

impl crate::inference::call::Recorder for Metrics {
    fn scope(&self, record: crate::inference::call::Record) -> crate::inference::call::Record {
        Box::pin(Metrics::scope(self, record))
    }
}

impl Metrics {
    /// `future`, recording into this server's metrics on whatever thread polls it.
    pub fn scope<F: Future>(&self, future: F) -> Scoped<F> {
        Scoped { recorder: self.recorder.clone(), future: Some(Box::pin(future)) }
    }

    /// An authenticated request of `user` at `now`.
    pub fn user_active(&self, user: Uuid, now: DateTime<Utc>) {
        // The later day wins: a request that read the clock just before midnight must not move a user back.
        self.active.entry(user).and_modify(|seen| *seen = (*seen).max(day_of(now))).or_insert(day_of(now));
    }

    /// The `model` label for a model name: the name itself for the first
    /// [`MAX_MODEL_LABELS`] names seen, `other` after, so clients naming
    /// models cannot grow the series without bound.
    pub fn model_label(&self, model: &str) -> String {
        let mut seen = self.llm_models.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(model) {
            return model.to_owned();
        }
        if seen.len() < MAX_MODEL_LABELS {
            seen.insert(model.to_owned());
            return model.to_owned();
        }
        "other".to_owned()
    }

    /// Runs `record` with this server's recorder current, for figures set
    /// outside a request (at scrape time).
    pub fn record<T>(&self, record: impl FnOnce() -> T) -> T {
        with_local_recorder(&*self.recorder, record)
    }

    /// Everything recorded, as Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds histogram samples into their buckets (the exporter's own
    /// listener would, between scrapes).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Users active on `now`'s day; those last seen before are forgotten.
    pub fn daily_active(&self, now: DateTime<Utc>) -> usize {
        let day = day_of(now);
        self.active.retain(|_, seen| *seen >= day);
        self.active.iter().filter(|seen| *seen.value() == day).count()
    }
}

fn day_of(time: DateTime<Utc>) -> i32 {
    time.date_naive().num_days_from_ce()
}

/// A future polled and dropped with its server's recorder current ([`Metrics::scope`]).
pub struct Scoped<F> {
    recorder: Arc<PrometheusRecorder>,
    future: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        with_local_recorder(&*this.recorder, || this.future.as_mut().map_or(Poll::Pending, |f| f.as_mut().poll(cx)))
    }
}

impl<F> Drop for Scoped<F> {
    fn drop(&mut self) {
        let future = self.future.take();
        with_local_recorder(&*self.recorder, || drop(future));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_actives_are_distinct_and_start_again_each_day() {
        let (metrics, (alice, bob), today) = (Metrics::default(), (Uuid::new_v4(), Uuid::new_v4()), Utc::now());
        let tomorrow = today + chrono::TimeDelta::days(1);
        [alice, alice, bob].iter().for_each(|user| metrics.user_active(*user, today));
        assert_eq!(metrics.daily_active(today), 2);
        metrics.user_active(bob, tomorrow);
        metrics.user_active(bob, today); // a request that read the clock just before midnight
        assert_eq!(metrics.daily_active(tomorrow), 1);
        assert_eq!(metrics.active.len(), 1, "yesterday's ids are dropped");
    }

    #[test]
    fn model_labels_are_bounded() {
        let metrics = Metrics::default();
        for n in 0..MAX_MODEL_LABELS {
            assert_eq!(metrics.model_label(&format!("m{n}")), format!("m{n}"));
        }
        assert_eq!(metrics.model_label("one-too-many"), "other");
        assert_eq!(metrics.model_label("m0"), "m0");
    }
}
