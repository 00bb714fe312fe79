//! Read-ahead for paged pulls. A device syncing a large account asks for
//! page after page, each `since` the cursor of the one before, and decodes
//! each page before it asks for the next. When a page ends with `has_more`,
//! the server reads and encodes the next one at once, while the device is
//! still busy with this one, and keeps it for that user's next pull.
//!
//! A kept page is served only to the same query (cursor, limit, kinds,
//! format) and only while the log head is the one it was read at: the views
//! change only with the log, so it is then exactly the page a fresh read
//! would give. Anything else reads afresh. One page per user (a newer read-
//! ahead replaces an older one), at most [`BUDGET_BYTES`] kept in all, each
//! dropped after [`MAX_AGE`] if nobody asked for it, and at most two reads
//! at once. Callers check the device's token and status before they ask, as
//! for any pull. (An operator's `echolia replay` rebuild swaps the views
//! without moving the log; a page read ahead from the views it replaced can
//! still be served within [`MAX_AGE`] of the swap.)

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Bytes;
use uuid::Uuid;

use crate::events::Kind;
use crate::events::LogTip;
use crate::http::codec::Format;

/// Encoded pages kept at most, all users together.
pub const BUDGET_BYTES: usize = 16 * 1024 * 1024;
/// A page not asked for within this is dropped (its device has gone elsewhere).
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// What a pull asked for, as far as its page depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageKey {
    pub since: u64,
    pub limit: u64,
    pub kinds: Vec<Kind>,
    pub format: Format,
}

/// An encoded page and the log head it was read at. Its bytes count against
/// the budget until it is dropped.
#[derive(Debug)]
pub struct Kept {
    pub head: LogTip,
    pub body: Bytes,
    /// The page's cursor when it has more after it.
    pub next: Option<u64>,
    kept: Arc<AtomicUsize>,
}

/// What a read-ahead read: the log head, the encoded page, its cursor if it
/// has more after it.
pub type Read = (LogTip, Vec<u8>, Option<u64>);

impl Drop for Kept {
    fn drop(&mut self) {
        self.kept.fetch_sub(self.body.len(), Ordering::Relaxed);
    }
}

struct Slot {
    key: PageKey,
    started: Instant,
    /// Held by the reading task until the page is there (or its read failed).
    page: Arc<tokio::sync::Mutex<Option<Kept>>>,
    /// The reading task, which then keeps the page until [`MAX_AGE`].
    task: tokio::task::AbortHandle,
}

/// A slot replaced, expired or forgotten stops its task: a read still
/// running is abandoned (its connection, inside a transaction, is not
/// pooled again), and a page kept goes with the last reference to it.
impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
        // Freed now rather than when the runtime gets to the abort.
        if let Ok(mut page) = self.page.try_lock() {
            page.take();
        }
    }
}

pub struct ReadAhead {
    slots: Mutex<HashMap<Uuid, Slot>>,
    kept: Arc<AtomicUsize>,
    /// Read-aheads running at once, at most: they compete with requests.
    reading: Arc<tokio::sync::Semaphore>,
}

impl Default for ReadAhead {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            kept: Arc::default(),
            reading: Arc::new(tokio::sync::Semaphore::new(MAX_READING)),
        }
    }
}

/// Read-aheads running at once (one per core of the machine this was sized on).
const MAX_READING: usize = 2;

impl ReadAhead {
    /// Reads the page `key` names for `user` in the background with `read`
    /// (`None` when the read fails: the next pull then reads afresh). Does
    /// nothing when [`BUDGET_BYTES`] are kept or [`MAX_READING`] reads run;
    /// a page that would take the kept bytes past the budget is dropped.
    pub fn start<F>(&self, user: Uuid, key: PageKey, read: F)
    where
        F: Future<Output = Option<Read>> + Send + 'static,
    {
        let mut slots = self.lock();
        // The user's older page is of no more use, nor is anyone's expired one.
        slots.remove(&user);
        slots.retain(|_, slot| slot.started.elapsed() <= MAX_AGE);
        if self.kept.load(Ordering::Relaxed) >= BUDGET_BYTES {
            return;
        }
        let Ok(permit) = self.reading.clone().try_acquire_owned() else { return };
        let page = Arc::new(tokio::sync::Mutex::new(None));
        // A fresh mutex: this cannot fail, and the task holds it until done.
        let Ok(mut held) = page.clone().try_lock_owned() else { return };
        let kept = self.kept.clone();
        let expiring = page.clone();
        let task = tokio::spawn(async move {
            let read = read.await;
            drop(permit);
            let Some((head, mut body, next)) = read else { return };
            body.shrink_to_fit();
            let len = body.len();
            let counted = kept.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now + len <= BUDGET_BYTES).then_some(now + len)
            });
            if counted.is_err() {
                return;
            }
            *held = Some(Kept { head, body: Bytes::from(body), next, kept });
            drop(held);
            // Not asked for in time: the page goes, even if nobody pulls again.
            tokio::time::sleep(MAX_AGE).await;
            if let Ok(mut unserved) = expiring.try_lock() {
                unserved.take();
            }
        });
        slots.insert(user, Slot { key, started: Instant::now(), page, task: task.abort_handle() });
    }

    /// The page kept for `user` if it was read for `key`, waiting for its
    /// read to finish; taken once. The caller still compares its head with
    /// the log's. A pull with another query (another device of the user)
    /// leaves the page for the one it was read for.
    pub async fn take(&self, user: Uuid, key: &PageKey) -> Option<Kept> {
        let slot = {
            let mut slots = self.lock();
            match slots.get(&user) {
                Some(slot) if slot.key == *key => slots.remove(&user)?,
                _ => return None,
            }
        };
        if slot.started.elapsed() > MAX_AGE {
            return None;
        }
        let kept = slot.page.lock().await.take();
        kept
    }

    /// Drops what is kept for `user` (a deleted account).
    pub fn forget(&self, user: Uuid) {
        drop(self.lock().remove(&user));
    }

    /// Bytes of encoded pages kept right now.
    pub fn kept_bytes(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(since: u64) -> PageKey {
        PageKey { since, limit: 10, kinds: vec![Kind::Entry], format: Format::Json }
    }

    fn head(seq: u64) -> LogTip {
        LogTip { seq, hash: [seq as u8; 32] }
    }

    #[tokio::test]
    async fn a_page_read_ahead_is_taken_once_for_the_same_query_only() {
        let ahead = ReadAhead::default();
        let user = Uuid::new_v4();
        ahead.start(user, key(5), async { Some((head(9), b"page".to_vec(), None)) });
        let kept = ahead.take(user, &key(5)).await.unwrap();
        assert_eq!((kept.head, &kept.body[..]), (head(9), &b"page"[..]));
        assert_eq!(ahead.kept_bytes(), 4);
        drop(kept);
        assert_eq!(ahead.kept_bytes(), 0);
        assert!(ahead.take(user, &key(5)).await.is_none(), "taken once");
        ahead.start(user, key(6), async { Some((head(9), b"gone".to_vec(), None)) });
        ahead.forget(user);
        assert!(ahead.take(user, &key(6)).await.is_none(), "forgotten");

        // Another user never sees it; another query leaves it for its own.
        ahead.start(user, key(7), async { Some((head(9), b"next".to_vec(), None)) });
        assert!(ahead.take(Uuid::new_v4(), &key(7)).await.is_none());
        assert!(ahead.take(user, &key(8)).await.is_none());
        assert_eq!(&ahead.take(user, &key(7)).await.unwrap().body[..], b"next");
    }

    #[tokio::test]
    async fn take_waits_for_a_read_in_progress_and_a_failed_read_gives_nothing() {
        let ahead = ReadAhead::default();
        let user = Uuid::new_v4();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        ahead.start(user, key(1), async move {
            let _ = rx.await;
            Some((head(3), vec![7; 10], None))
        });
        let first = key(1);
        let waiting = ahead.take(user, &first);
        tx.send(()).unwrap();
        assert_eq!(waiting.await.unwrap().body.len(), 10);

        ahead.start(user, key(2), async { None });
        assert!(ahead.take(user, &key(2)).await.is_none());
    }

    #[tokio::test]
    async fn nothing_starts_past_the_budget_and_a_replaced_page_frees_its_bytes() {
        let ahead = ReadAhead::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // A page that alone would pass the budget is not kept.
        ahead.start(a, key(0), async { Some((head(1), vec![0; BUDGET_BYTES + 1], None)) });
        assert!(ahead.take(a, &key(0)).await.is_none());
        assert_eq!(ahead.kept_bytes(), 0);
        ahead.start(a, key(1), async { Some((head(1), vec![0; BUDGET_BYTES], None)) });
        // Let the read finish, then a second user's read-ahead does not start.
        tokio::task::yield_now().await;
        while ahead.kept_bytes() == 0 {
            tokio::task::yield_now().await;
        }
        ahead.start(b, key(1), async { Some((head(1), vec![1], None)) });
        assert!(ahead.take(b, &key(1)).await.is_none());
        // A newer read-ahead of the same user frees the old page first.
        ahead.start(a, key(2), async { Some((head(2), vec![2], None)) });
        assert_eq!(ahead.take(a, &key(2)).await.unwrap().body.len(), 1);
        assert_eq!(ahead.kept_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_not_asked_for_in_time_is_dropped() {
        let ahead = ReadAhead::default();
        let user = Uuid::new_v4();
        ahead.start(user, key(1), async { Some((head(1), vec![0; 100], None)) });
        while ahead.kept_bytes() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(MAX_AGE + Duration::from_secs(1)).await;
        assert_eq!(ahead.kept_bytes(), 0);
        assert!(ahead.take(user, &key(1)).await.is_none());
    }

    #[tokio::test]
    async fn at_most_two_read_at_once() {
        let ahead = ReadAhead::default();
        let (release, wait) = tokio::sync::watch::channel(false);
        let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for user in &users {
            let mut wait = wait.clone();
            ahead.start(*user, key(1), async move {
                let _ = wait.wait_for(|go| *go).await;
                Some((head(1), vec![1], None))
            });
        }
        release.send(true).unwrap();
        assert!(ahead.take(users[0], &key(1)).await.is_some());
        assert!(ahead.take(users[1], &key(1)).await.is_some());
        assert!(ahead.take(users[2], &key(1)).await.is_none(), "not started");
    }
}
