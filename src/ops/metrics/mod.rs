//! `GET /metrics` (Prometheus text) on its own listener, and the middleware
//! that counts and times every API request. What is recorded, and how each
//! server keeps its own figures: [`crate::state::metrics`].

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::{middleware::Next, response::IntoResponse, response::Response, routing::get, Router};
use metrics::{counter, gauge, histogram};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::metrics::{families, Metrics, Scoped};
use crate::state::AppState;

const METHODS: [&str; 9] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE"];

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
        metrics.run_upkeep();
    }
}

/// A scrape: the figures only storage knows are set first. One it cannot give now keeps its last value (and is
/// logged) rather than failing the scrape.
async fn render(state: &AppState) -> impl IntoResponse {
    let metrics = &state.metrics;
    let users =
        state.control.user_count().await.inspect_err(|err| tracing::warn!(error = %err, "metrics: no users count"));
    let disk = disk_usage(state).await;
    metrics.record(|| {
        counter!("echolia_events_appended_total").absolute(state.users.events_appended());
        gauge!("echolia_open_user_databases").set(state.users.open_count() as f64);
        gauge!("echolia_event_id_index_ids").set(state.users.indexed_ids() as f64);
        gauge!("echolia_sqlite_memory_bytes").set(crate::store::memory::used_bytes() as f64);
        gauge!("echolia_pull_read_ahead_bytes").set(state.read_ahead.kept_bytes() as f64);
        gauge!("echolia_embeddings_queue_depth").set(state.embedder.queue_depth() as f64);
        gauge!("echolia_daily_active_users").set(metrics.daily_active(state.clock.now()) as f64);
        if let Ok(users) = users {
            gauge!("echolia_user_databases").set(users as f64);
        }
        if let Some(bytes) = disk {
            gauge!("echolia_database_disk_bytes").set(bytes as f64);
        }
    });
    // The exporter parts families with blank lines, and leaves out those with no sample yet.
    let mut body = metrics.render().replace("\n\n", "\n");
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
