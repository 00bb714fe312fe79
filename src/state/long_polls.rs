//! How many long-polls (`GET /sync/pull?wait=`) each user and each device
//! holds at once. Beyond a cap the new one is refused with 429 and
//! `Retry-After` (the time until the oldest of those held ends), rather than
//! ending the oldest: a client that polls too much learns it, and the polls
//! of its other devices are never cut short by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

/// The polls held per user and per device: each its id and when its wait ends.
#[derive(Debug, Default)]
struct Held {
    users: HashMap<Uuid, Vec<(u64, Instant)>>,
    devices: HashMap<Uuid, Vec<(u64, Instant)>>,
    next_id: u64,
}

#[derive(Debug)]
pub struct LongPolls {
    per_user: usize,
    per_device: usize,
    held: Arc<Mutex<Held>>,
}

/// A held long-poll; dropping it frees its place.
#[derive(Debug)]
pub struct LongPollSlot {
    held: Arc<Mutex<Held>>,
    id: u64,
    user: Uuid,
    device: Uuid,
}

/// Which cap a refused long-poll hit, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub per_device: bool,
    pub limit: usize,
    pub retry_after: Duration,
}

impl LongPolls {
    pub fn new(per_user: usize, per_device: usize) -> Self {
        Self { per_user, per_device, held: Arc::default() }
    }

    /// A place for a long-poll of `device` (of `user`) waiting until `deadline`, or why not.
    pub fn hold(&self, user: Uuid, device: Uuid, deadline: Instant) -> Result<LongPollSlot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let retry = |polls: &[(u64, Instant)]| {
            let first_end = polls.iter().map(|(_, end)| *end).min().unwrap_or(now);
            first_end.saturating_duration_since(now).max(Duration::from_secs(1))
        };
        if let Some(polls) = held.devices.get(&device).filter(|polls| polls.len() >= self.per_device) {
            return Err(Refused { per_device: true, limit: self.per_device, retry_after: retry(polls) });
        }
        if let Some(polls) = held.users.get(&user).filter(|polls| polls.len() >= self.per_user) {
            return Err(Refused { per_device: false, limit: self.per_user, retry_after: retry(polls) });
        }
        held.next_id += 1;
        let id = held.next_id;
        held.users.entry(user).or_default().push((id, deadline));
        held.devices.entry(device).or_default().push((id, deadline));
        Ok(LongPollSlot { held: self.held.clone(), id, user, device })
    }
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let mut guard = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let held = &mut *guard;
        for (map, key) in [(&mut held.users, self.user), (&mut held.devices, self.device)] {
            if let Some(polls) = map.get_mut(&key) {
                polls.retain(|(id, _)| *id != self.id);
                if polls.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_per_device_and_per_user_and_places_come_back() {
        let polls = LongPolls::new(3, 2);
        let (user, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let until = Instant::now() + Duration::from_secs(30);
        let first = polls.hold(user, a, until).unwrap();
        let _second = polls.hold(user, a, until).unwrap();
        let refused = polls.hold(user, a, until).unwrap_err();
        assert!(refused.per_device && refused.limit == 2);
        assert!(refused.retry_after > Duration::from_secs(25), "{refused:?}");
        let _third = polls.hold(user, b, until).unwrap();
        let refused = polls.hold(user, b, until).unwrap_err();
        assert!(!refused.per_device && refused.limit == 3);
        // Another user is not counted with this one.
        let _other = polls.hold(Uuid::new_v4(), Uuid::new_v4(), until).unwrap();
        drop(first);
        let _again = polls.hold(user, b, until).unwrap();
        assert!(polls.hold(user, a, until).is_err(), "the user's cap again");
    }
}
