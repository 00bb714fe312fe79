//! One request to a model, from its usage row to its end: the row is opened
//! (under the quotas) before the model is called, and completed when the
//! answer ends — or, if the request is dropped (the client went away, the
//! task was cancelled), by this guard's `Drop`, with what was counted and
//! the status `interrupted`. An answer that ended without the upstream's
//! final token count is charged an estimate (content bytes / 4), flagged
//! `estimated` in its row, so disconnecting early does not dodge the quota.
//! Shared by the LLM proxy (with its metrics) and the fallback embeddings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;

use super::ledger::{self, Status};
use super::usage::{cost_nano_usd, Counter};
use crate::config::llm::Price;
use crate::store::UserDb;

/// A future that completes a usage row.
pub type Record = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where a call's metrics are recorded: wraps the row's write (run as a
/// task of its own) so it records into the right server's metrics.
pub trait Recorder: Send + Sync {
    fn scope(&self, record: Record) -> Record;
}

/// The LLM proxy's per-request metrics (`echolia_llm_requests_total`,
/// tokens, cost), labelled by model and endpoint.
pub struct CallMetrics {
    /// The bounded metrics label of the model.
    pub model_label: String,
    pub endpoint: &'static str,
    pub recorder: Arc<dyn Recorder>,
}

pub struct Call {
    db: Arc<UserDb>,
    id: i64,
    started: Instant,
    price: Price,
    metrics: Option<CallMetrics>,
    pub counter: Counter,
    recorded: bool,
}

impl Call {
    /// The guard of the row `id` (from `ledger::open`); `metrics` when the
    /// call counts in the LLM proxy's metrics.
    pub fn new(db: Arc<UserDb>, id: i64, price: Price, metrics: Option<CallMetrics>) -> Self {
        Self { db, id, started: Instant::now(), price, metrics, counter: Counter::default(), recorded: false }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The model's metrics label, when the call has metrics.
    pub fn model_label(&self) -> Option<&str> {
        self.metrics.as_ref().map(|metrics| metrics.model_label.as_str())
    }

    /// Records how the request ended, and waits for the row to be written.
    /// The write runs as a task of its own: if this future is dropped
    /// mid-write (the client closed the connection), the row is still completed.
    pub async fn finish(mut self, status: Status) {
        let write = tokio::spawn(self.record(status));
        self.recorded = true;
        drop(self);
        // A failed write is logged by the task; a panic cannot happen there.
        let _ = write.await;
    }

    fn record(&self, status: Status) -> Record {
        // The model answered (in full or in part): without its final count, an estimate is charged.
        let (usage, estimated) = self.counter.charged(matches!(status, Status::Ok | Status::Interrupted));
        let cost = cost_nano_usd(usage, self.price);
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (db, id) = (self.db.clone(), self.id);
        let labels = self.metrics.as_ref().map(|metrics| (metrics.model_label.clone(), metrics.endpoint));
        let record: Record = Box::pin(async move {
            if let Some((model, endpoint)) = labels {
                metrics::counter!("echolia_llm_requests_total", "model" => model.clone(), "endpoint" => endpoint, "status" => status.as_str())
                    .increment(1);
                metrics::counter!("echolia_llm_tokens_total", "model" => model.clone()).increment(usage.total());
                if cost > 0 {
                    metrics::counter!("echolia_llm_cost_microdollars_total", "model" => model)
                        .increment(u64::try_from(cost / 1000).unwrap_or(0));
                }
            }
            if let Err(err) = ledger::close(&db, id, status, usage, estimated, cost, duration_ms).await {
                tracing::warn!(error = %err, "could not record model usage");
            }
        });
        match &self.metrics {
            Some(metrics) => metrics.recorder.scope(record),
            None => record,
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
            runtime.spawn(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use uuid::Uuid;

    use super::super::ledger::Opening;
    use super::super::usage::Usage;
    use super::*;
    use crate::config::llm::Limits;
    use crate::store::Backend;

    async fn row(db: &UserDb, id: i64) -> (String, i64, i64) {
        let conn = db.read().await.unwrap();
        let mut rows =
            conn.query("SELECT status, input_tokens, estimated FROM llm_usage WHERE id = ?1", [id]).await.unwrap();
        let row = rows.next().await.unwrap().unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap(), row.get(2).unwrap())
    }

    async fn settled(db: &UserDb, id: i64) -> (String, i64, i64) {
        for _ in 0..500 {
            let got = row(db, id).await;
            if got.0 != "pending" {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the row stayed pending");
    }

    async fn opened(db: &UserDb) -> i64 {
        let opening = Opening { model: "m", provider: "local", endpoint: "fallback_embeddings", stream: false };
        let unlimited = Limits { requests_per_minute: 0, tokens_per_day: 0 };
        ledger::open(db, unlimited, Utc::now(), opening).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_finish_dropped_mid_write_still_completes_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap());
        let id = opened(&db).await;
        let mut call = Call::new(db.clone(), id, Price::default(), None);
        call.counter.set(Usage { input_tokens: 12, output_tokens: 0 });
        // Polled once (the write started), then dropped: the client went away.
        let mut finish = Box::pin(call.finish(Status::Ok));
        assert!(futures_util::poll!(finish.as_mut()).is_pending());
        drop(finish);
        assert_eq!(settled(&db, id).await, ("ok".to_owned(), 12, 0));
    }

    #[tokio::test]
    async fn a_dropped_call_is_interrupted_and_charged_an_estimate() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap());
        let id = opened(&db).await;
        let mut call = Call::new(db.clone(), id, Price::default(), None);
        call.counter.set_prompt_bytes(40);
        drop(call);
        assert_eq!(settled(&db, id).await, ("interrupted".to_owned(), 10, 1));
    }
}
