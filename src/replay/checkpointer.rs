//! The shadow writer's checkpoints, on a connection and thread of their own,
//! so the WAL stays bounded without the writer checkpointing.

use std::sync::atomic::{self, AtomicU64};
use std::sync::Arc;

use crate::store::{StoreError, StoreResult, UserDb};

/// Copies the shadows' pages from the write-ahead log into the database file
/// while the next batches are written (replay's writer runs with
/// `wal_autocheckpoint = 0`). Every [`WAIT_EVERY`] commits the writer waits
/// for a checkpoint begun after its last commit, so its next transaction
/// starts the log over and the WAL stays bounded (docs/replay.md). A failed
/// checkpoint is logged and the rebuild goes on: checkpoints move pages, they
/// decide nothing.
pub(super) struct Checkpointer {
    /// Commits the writer has made.
    commits: Arc<AtomicU64>,
    wake: std::sync::mpsc::SyncSender<()>,
    /// How many commits the last finished checkpoint began after.
    done: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// Commits of replay's writer between two waits for a checkpoint: fewer
/// make the writer wait more (`checkpoint_wait_ms` in replay's debug log),
/// more let the WAL grow. Weigh a change with `benches/replay.rs`.
const WAIT_EVERY: u64 = 32;

impl Checkpointer {
    pub(super) async fn start(db: &UserDb) -> StoreResult<Self> {
        let conn = db.read().await?.detach();
        let commits = Arc::new(AtomicU64::new(0));
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let (finished, done) = tokio::sync::watch::channel(0);
        let task = tokio::task::spawn_blocking({
            let commits = commits.clone();
            move || {
                let handle = tokio::runtime::Handle::current();
                loop {
                    // Disconnected once the writer is done: one last checkpoint.
                    let last = woken.recv().is_err();
                    let after = commits.load(atomic::Ordering::Acquire);
                    let checkpoint = async { conn.query("PRAGMA wal_checkpoint(PASSIVE)", ()).await?.next().await };
                    if let Err(err) = handle.block_on(checkpoint) {
                        tracing::warn!(error = %err, "replay: a checkpoint failed; the next one copies its pages");
                    }
                    finished.send_replace(after);
                    if last {
                        return;
                    }
                }
            }
        });
        Ok(Self { commits, wake, done, task })
    }

    /// Told after each commit of the writer.
    pub(super) async fn committed(&mut self) {
        let commits = self.commits.fetch_add(1, atomic::Ordering::Release) + 1;
        // A wake-up already pending will see this commit too.
        let _ = self.wake.try_send(());
        if commits.is_multiple_of(WAIT_EVERY) {
            // Fails only if the checkpointer is gone; then there is nothing to wait for.
            let _ = self.done.wait_for(|done| *done >= commits).await;
        }
    }

    /// The last checkpoint, once the writer is done.
    pub(super) async fn finish(self) -> StoreResult<()> {
        drop(self.wake);
        self.task.await.map_err(|err| StoreError::Corrupt(format!("the checkpointer stopped: {err}")))
    }
}
