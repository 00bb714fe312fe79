//! One request through the proxy, from its quota check to its usage row:
//! the row is opened before the upstream is called, and completed when the
//! answer ends — or, if the answer is dropped (the client went away, the
//! task was cancelled), by this guard's `Drop`, with what was counted and
//! the status `interrupted`. An answer that ended without the upstream's
//! final token count is charged an estimate (content bytes / 4), flagged
//! `estimated` in its row, so disconnecting early does not dodge the quota.

use std::sync::Arc;

use tokio::time::Instant;

use super::ledger::{self, Status};
use super::usage::{cost_nano_usd, Counter};
use crate::config::llm::Price;
use crate::state::metrics::Metrics;
use crate::store::UserDb;

pub struct Call {
    db: Arc<UserDb>,
    id: i64,
    started: Instant,
    /// The bounded metrics label of the model.
    pub model_label: String,
    pub endpoint: &'static str,
    price: Price,
    metrics: Arc<Metrics>,
    pub counter: Counter,
    recorded: bool,
}

impl Call {
    pub fn new(
        db: Arc<UserDb>,
        id: i64,
        model_label: String,
        endpoint: &'static str,
        price: Price,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            id,
            started: Instant::now(),
            model_label,
            endpoint,
            price,
            metrics,
            counter: Counter::default(),
            recorded: false,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records how the request ended, and waits for the row to be written.
    /// The write runs as a task of its own: if this future is dropped
    /// mid-write (the client closed the connection right after the last
    /// event), the row is still completed.
    pub async fn finish(mut self, status: Status) {
        let write = tokio::spawn(self.metrics.scope(self.record(status)));
        self.recorded = true;
        drop(self);
        // A failed write is logged by the task; a panic cannot happen there.
        let _ = write.await;
    }

    fn record(&self, status: Status) -> impl std::future::Future<Output = ()> + Send + 'static {
        // The upstream answered (in full or in part): without its final count, an estimate is charged.
        let (usage, estimated) = self.counter.charged(matches!(status, Status::Ok | Status::Interrupted));
        let cost = cost_nano_usd(usage, self.price);
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (db, id, model, endpoint) = (self.db.clone(), self.id, self.model_label.clone(), self.endpoint);
        async move {
            metrics::counter!("echolia_llm_requests_total", "model" => model.clone(), "endpoint" => endpoint, "status" => status.as_str())
                .increment(1);
            metrics::counter!("echolia_llm_tokens_total", "model" => model.clone()).increment(usage.total());
            if cost > 0 {
                metrics::counter!("echolia_llm_cost_microdollars_total", "model" => model)
                    .increment(u64::try_from(cost / 1000).unwrap_or(0));
            }
            if let Err(err) = ledger::close(&db, id, status, usage, estimated, cost, duration_ms).await {
                tracing::warn!(error = %err, "could not record LLM usage");
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let record = self.record(Status::Interrupted);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.metrics.scope(record));
        }
    }
}
