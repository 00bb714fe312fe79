//! Per-user wake-ups for long-polls: a push publishes the new head; pulls of
//! that user waiting on it wake at once. No polling loop.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::sync::watch;
use uuid::Uuid;

/// Past this many users with a channel, those nobody waits on are dropped.
const MAX_IDLE_CHANNELS: usize = 10_000;

#[derive(Debug, Default)]
pub struct Notifier {
    channels: DashMap<Uuid, watch::Sender<u64>>,
    /// Callers inside [`Notifier::changed`] right now.
    waiting: AtomicUsize,
}

impl Notifier {
    /// A receiver that sees every push of `user` from now on.
    pub fn subscribe(&self, user: Uuid) -> watch::Receiver<u64> {
        if self.channels.len() > MAX_IDLE_CHANNELS {
            self.channels.retain(|_, sender| sender.receiver_count() > 0);
        }
        self.channels.entry(user).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes every waiter of `user`: the log head is now `head`.
    pub fn notify(&self, user: Uuid, head: u64) {
        if let Some(sender) = self.channels.get(&user) {
            sender.send_replace(head);
        }
        self.channels.remove_if(&user, |_, sender| sender.receiver_count() == 0);
    }

    /// Waits for the next notification on `updates` (from [`Notifier::subscribe`]),
    /// counted in [`Notifier::waiting`] meanwhile.
    pub async fn changed(&self, updates: &mut watch::Receiver<u64>) -> Result<(), watch::error::RecvError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waited = Waited(&self.waiting);
        updates.changed().await
    }

    /// Callers waiting in [`Notifier::changed`]: what tests wait on before
    /// they notify, so that the wake-up itself is what they check.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Users with a channel (waiters, or recently waited).
    pub fn channels(&self) -> usize {
        self.channels.len()
    }
}

/// Uncounts a wait when it ends, whether woken or dropped.
struct Waited<'a>(&'a AtomicUsize);

impl Drop for Waited<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_push_wakes_only_its_users_waiters() {
        let notifier = Notifier::default();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut waiting = notifier.subscribe(alice);
        let other = notifier.subscribe(bob);
        notifier.notify(alice, 7);
        waiting.changed().await.unwrap();
        assert_eq!(*waiting.borrow(), 7);
        assert!(!other.has_changed().unwrap());
        drop((waiting, other));
        notifier.notify(alice, 8);
        assert_eq!(notifier.channels(), 1, "alice's idle channel is dropped, bob's stays until his next push");
    }

    #[tokio::test]
    async fn a_wait_is_counted_until_it_is_woken_or_dropped() {
        let notifier = Arc::new(Notifier::default());
        let user = Uuid::new_v4();
        let mut updates = notifier.subscribe(user);
        let waiter = tokio::spawn({
            let notifier = notifier.clone();
            async move { notifier.changed(&mut updates).await.is_ok() }
        });
        while notifier.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        notifier.notify(user, 1);
        assert!(waiter.await.unwrap());
        assert_eq!(notifier.waiting(), 0);

        let mut updates = notifier.subscribe(user);
        let abandoned = tokio::spawn({
            let notifier = notifier.clone();
            async move { notifier.changed(&mut updates).await.is_ok() }
        });
        while notifier.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        assert_eq!(notifier.waiting(), 0);
    }
}
