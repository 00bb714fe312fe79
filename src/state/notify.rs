//! Per-user wake-ups for long-polls: a push publishes the new head; pulls of
//! that user waiting on it wake at once. No polling loop.

use dashmap::DashMap;
use tokio::sync::watch;
use uuid::Uuid;

/// Past this many users with a channel, those nobody waits on are dropped.
const MAX_IDLE_CHANNELS: usize = 10_000;

#[derive(Debug, Default)]
pub struct Notifier {
    channels: DashMap<Uuid, watch::Sender<u64>>,
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

    /// Users with a channel (waiters, or recently waited).
    pub fn channels(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
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
}
