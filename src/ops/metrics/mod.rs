//! What the service counts for operators, through the `metrics` facade (`metrics::counter!("echolia_x_total")
//! .increment(1)` anywhere below a request), served as Prometheus text by `GET /metrics` on its own listener.
//!
//! Each [`Metrics`] (one per `AppState`) owns its recorder rather than a process-global one, so servers sharing
//! a process (the integration tests) never count into each other. [`Metrics::scope`] makes it the facade's
//! recorder while a future is polled or dropped: [`track`] wraps each request, and tasks spawned for one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::{middleware::Next, response::IntoResponse, response::Response, routing::get, Router};
use chrono::{DateTime, Datelike, Utc};
use dashmap::DashMap;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{app::AppState, auth::rate_limit::Limiter, error::ApiError};

/// Seconds; long-polls (up to 60 s) land in `+Inf`.
const DURATION_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const METHODS: [&str; 9] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE"];

/// The README's Metrics table, the contract dashboards rely on, as rows of (name, labelled, type, what it
/// counts). Each family's HELP is taken from it, so the two cannot drift.
fn families() -> impl Iterator<Item = (&'static str, bool, &'static str, &'static str)> {
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
    disk_usage: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        // Only an empty list is refused.
        let builder = PrometheusBuilder::new().set_buckets(&DURATION_BUCKETS);
        let recorder = builder.unwrap_or_else(|_| PrometheusBuilder::new()).build_recorder();
        let (handle, active, disk_usage) = (recorder.handle(), DashMap::new(), Default::default());
        let metrics = Metrics { recorder: Arc::new(recorder), handle, active, disk_usage };
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

    /// Users active on `now`'s day; those last seen before are forgotten.
    fn daily_active(&self, now: DateTime<Utc>) -> usize {
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

/// Middleware (outermost in the API's layer stack): scopes each request to its server's recorder, and counts
/// and times it once dropped, so a request whose client went away (e.g. a long-poll) counts too, as 499. The
/// route is the template, never the raw path (it may hold ids); other methods are `other`: bounded labels.
pub fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Scoped<impl Future<Output = Response>> {
    metrics.scope(async move {
        let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
        let method = METHODS.into_iter().find(|known| *known == req.method().as_str()).unwrap_or("other");
        let started = Instant::now();
        let mut status = scopeguard::guard(499, move |status: u16| {
            let labels = [("route", route), ("method", method.to_owned())];
            histogram!("echolia_http_request_duration_seconds", &labels).record(started.elapsed());
            let labels = [labels[0].clone(), labels[1].clone(), ("status", status.to_string())];
            counter!("echolia_http_requests_total", &labels).increment(1);
        });
        let response = next.run(req).await;
        *status = response.status().as_u16();
        response
    })
}

/// The metrics listener's router. It starts the recorder's upkeep too, which folds histogram samples into their
/// buckets between scrapes (the exporter's own listener would), for as long as the state lives.
pub fn router(state: AppState) -> Router {
    tokio::spawn(upkeep(Arc::downgrade(&state.metrics)));
    Router::new()
        .route("/metrics", get(|State(state): State<AppState>| async move { render(&state).await }))
        .fallback(|| async { ApiError::not_found("not_found", "this listener serves only GET /metrics") })
        .with_state(state)
}

async fn upkeep(metrics: Weak<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    while let (_, Some(metrics)) = (every.tick().await, metrics.upgrade()) {
        metrics.handle.run_upkeep();
    }
}

/// A scrape: the figures only storage knows are set first. One it cannot give now keeps its last value (and is
/// logged) rather than failing the scrape.
async fn render(state: &AppState) -> impl IntoResponse {
    let metrics = &state.metrics;
    let users =
        state.control.user_count().await.inspect_err(|err| tracing::warn!(error = %err, "metrics: no users count"));
    let disk = disk_usage(state).await;
    with_local_recorder(&*metrics.recorder, || {
        counter!("echolia_events_appended_total").absolute(state.users.events_appended());
        gauge!("echolia_open_user_databases").set(state.users.open_count() as f64);
        gauge!("echolia_sqlite_memory_bytes").set(crate::store::memory::used_bytes() as f64);
        gauge!("echolia_pull_read_ahead_bytes").set(state.read_ahead.kept_bytes() as f64);
        gauge!("echolia_daily_active_users").set(metrics.daily_active(state.clock.now()) as f64);
        if let Ok(users) = users {
            gauge!("echolia_user_databases").set(users as f64);
        }
        if let Some(bytes) = disk {
            gauge!("echolia_database_disk_bytes").set(bytes as f64);
        }
    });
    // The exporter parts families with blank lines, and leaves out those with no sample yet.
    let mut body = metrics.handle.render().replace("\n\n", "\n");
    let undeclared: Vec<_> = families().filter(|(name, ..)| !body.contains(&format!("# TYPE {name} "))).collect();
    for (name, _, kind, help) in undeclared {
        body.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// Bytes on disk, walking `DATA_DIR` at most every 15 s.
async fn disk_usage(state: &AppState) -> Option<u64> {
    let mut cached = state.metrics.disk_usage.lock().await;
    if cached.is_none_or(|(measured, _)| measured.elapsed() >= Duration::from_secs(15)) {
        match state.users.backend().total_storage_bytes().await {
            Ok(bytes) => *cached = Some((Instant::now(), bytes)),
            Err(err) => tracing::warn!(error = %err, "metrics: cannot measure the databases on disk"),
        }
    }
    cached.map(|(_, bytes)| bytes)
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
}
