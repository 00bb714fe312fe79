//! `GET /metrics`: the router of the metrics listener (`METRICS_ADDR`),
//! never merged into the API router. A scrape reads the counters, then asks
//! the store for what it knows: open databases, events appended, the users
//! directory, and disk usage (cached, since it walks `DATA_DIR`).

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::text::{self, Exposition, Kind};
use crate::error::ApiError;
use crate::state::AppState;

/// How long a measured disk usage is served before walking `DATA_DIR` again.
pub const DISK_USAGE_TTL: Duration = Duration::from_secs(15);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { ApiError::not_found("not_found", "this listener serves only GET /metrics") })
        .with_state(state)
}

async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, text::CONTENT_TYPE)], render(&state).await)
}

/// The whole scrape body. A figure the store cannot give right now is
/// left out (and logged) rather than failing the scrape.
pub async fn render(state: &AppState) -> String {
    let mut text = Exposition::default();
    state.metrics.render(&mut text, state.clock.now());

    let appended = state.users.events_appended() as f64;
    let help = "Events appended to user logs (pushed and device events), counted once their transaction committed.";
    text.single("echolia_events_appended_total", Kind::Counter, help, Some(appended));
    let open = state.users.open_count() as f64;
    let help = "User databases held open now (the LRU, at most MAX_OPEN_DATABASES).";
    text.single("echolia_open_user_databases", Kind::Gauge, help, Some(open));
    let sqlite = crate::store::memory::used_bytes() as f64;
    let help = "Bytes SQLite holds in this process (page caches, schemas, statements), soft-limited by SQLITE_MEMORY_LIMIT_MB.";
    text.single("echolia_sqlite_memory_bytes", Kind::Gauge, help, Some(sqlite));
    let kept = state.read_ahead.kept_bytes() as f64;
    let help = "Bytes of pull pages read ahead and not yet served (at most 16 MiB).";
    text.single("echolia_pull_read_ahead_bytes", Kind::Gauge, help, Some(kept));

    let users = match state.control.user_count().await {
        Ok(count) => Some(count as f64),
        Err(err) => {
            tracing::warn!(error = %err, "metrics: cannot count the users directory");
            None
        }
    };
    let help = "Registered users, each with one user database (from the users directory).";
    text.single("echolia_user_databases", Kind::Gauge, help, users);

    let bytes = state.metrics.disk_usage.get(state).await.map(|bytes| bytes as f64);
    let help = "Bytes of the control database and every user database, WAL included (measured at most every 15 s).";
    text.single("echolia_database_disk_bytes", Kind::Gauge, help, bytes);
    text.finish()
}

/// The last measured disk usage and when it was measured. The lock is held
/// while measuring, so concurrent scrapes share one walk.
#[derive(Debug, Default)]
pub struct DiskUsage(Mutex<Option<(Instant, u64)>>);

impl DiskUsage {
    async fn get(&self, state: &AppState) -> Option<u64> {
        let mut cached = self.0.lock().await;
        if let Some((measured, bytes)) = *cached {
            if measured.elapsed() < DISK_USAGE_TTL {
                return Some(bytes);
            }
        }
        match state.users.backend().total_storage_bytes().await {
            Ok(bytes) => {
                *cached = Some((Instant::now(), bytes));
                Some(bytes)
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics: cannot measure the databases on disk");
                None
            }
        }
    }
}
