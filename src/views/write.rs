//! The write path: events appended to the log and folded into their views,
//! in the caller's transaction ([`LogTx`]), so a push or a device action is
//! all or nothing. Pushes, the server's own `device` events and replay's swap
//! all go through here.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::aggregates::ViewStatements;
use super::devices;
use crate::events::device::DeviceAction;
use crate::events::{log, Kind, LogTx, NewEvent, StoredEvent};
use crate::projection::aggregate::{self, AggregateRow, Outcome};
use crate::projection::devices::{self as device_fold, DeviceRow};
use crate::store::{StoreError, StoreResult};

/// What became of one pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// In the log, the aggregate's only head.
    Applied,
    /// In the log, a head beside others.
    Conflict,
    /// In the log, dominated: not in the view.
    Stale,
    /// Already in the log under this `event_id`: nothing appended.
    Duplicate,
}

/// One pushed event's place in the log and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchResult {
    pub event_id: Uuid,
    pub seq: u64,
    pub status: EventStatus,
}

/// Why a batch was refused after validation.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("events[{index}]: event_id {event_id} is already in the log with other content")]
    EventIdReused { index: usize, event_id: Uuid },
    /// The event would leave its aggregate more than [`aggregate::MAX_HEADS`] heads.
    #[error(
        "events[{index}]: {kind} {aggregate_id} would have over {max} conflicting heads; pull it, push an event that \
         merges them (its version above every head's), then push again",
        kind = kind.as_str(),
        max = aggregate::MAX_HEADS
    )]
    TooManyHeads { index: usize, kind: Kind, aggregate_id: Uuid },
    /// The pushing device was revoked (or only its tokens were) since its
    /// token was checked: nothing appended. Found by the remote path, which
    /// reads the device's status in the same round trip as the log's head.
    #[error("the device may no longer write")]
    DeviceInactive { tokens_only: bool },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Folds `stored`, the batch's event at `index`, into its aggregate's row
/// (`current`: loaded, or left by an earlier event of the batch), keeping
/// the head cap, and notes the row to write unless the event was stale.
/// Both append paths, local and remote, fold through it. `created` is the
/// row's key as the log has it: a row missing from its view (a damaged view,
/// until replay mends it) is made again under that key, never a second
/// row of the same aggregate under another.
pub(super) fn fold(
    rows: &mut HashMap<(Kind, Uuid), AggregateRow>,
    dirty: &mut HashSet<(Kind, Uuid)>,
    current: Option<AggregateRow>,
    created: Option<u64>,
    stored: &StoredEvent,
    index: usize,
) -> Result<EventStatus, BatchError> {
    let key = (stored.event.kind, stored.event.aggregate_id);
    // The index and the view disagree (the database replaced under a running
    // writer?): folding on would write this aggregate over another's row.
    if let (Some(row), Some(created)) = (&current, created) {
        if row.id != key.1 || row.created_seq != created {
            return Err(StoreError::Corrupt(format!(
                "{} {}: the writer's index keys it at seq {created}, the view holds {} {} there; \
                 restart the server, then run `echolia replay --check`",
                key.0.as_str(),
                key.1,
                row.id,
                row.created_seq
            ))
            .into());
        }
    }
    let before = current.as_ref().map_or(0, |row| row.heads.len());
    let (mut row, outcome) = aggregate::apply(current, stored);
    if let Some(created) = created {
        row.created_seq = created;
    }
    // Over the cap and growing (a row from before the cap may shrink towards it).
    if outcome == Outcome::Conflict && row.heads.len() > aggregate::MAX_HEADS.max(before) {
        return Err(BatchError::TooManyHeads { index, kind: key.0, aggregate_id: key.1 });
    }
    if outcome != Outcome::Stale {
        dirty.insert(key);
    }
    rows.insert(key, row);
    Ok(match outcome {
        Outcome::Applied => EventStatus::Applied,
        Outcome::Conflict => EventStatus::Conflict,
        Outcome::Stale => EventStatus::Stale,
    })
}

/// Appends a validated batch and folds it into the views, inside `tx`.
/// View rows touched several times are written once, at the end.
pub async fn apply_batch(
    tx: &mut LogTx,
    device: Uuid,
    now: DateTime<Utc>,
    events: Vec<NewEvent>,
) -> Result<Vec<BatchResult>, BatchError> {
    let kinds: HashSet<Kind> = events.iter().map(|event| event.kind).collect();
    let views = ViewStatements::cached(tx, kinds).await?;
    let mut rows: HashMap<(Kind, Uuid), AggregateRow> = HashMap::new();
    let mut dirty: HashSet<(Kind, Uuid)> = HashSet::new();
    let mut results = Vec::with_capacity(events.len());

    for (index, event) in events.into_iter().enumerate() {
        if let Some(seq) = tx.find(event.event_id).await? {
            let original = log::read_one(tx, seq).await?;
            if original.is_some_and(|o| o.device_id == device && o.event == event) {
                results.push(BatchResult { event_id: event.event_id, seq, status: EventStatus::Duplicate });
                continue;
            }
            return Err(BatchError::EventIdReused { index, event_id: event.event_id });
        }

        let key = (event.kind, event.aggregate_id);
        let created = tx.created(key.0, key.1).await?;
        let current = match (rows.remove(&key), created) {
            (Some(row), _) => Some(row),
            (None, Some(created)) => views.load(key.0, created).await?,
            (None, None) => None,
        };
        let stored = tx.append(device, now, event).await?;
        let status = fold(&mut rows, &mut dirty, current, created, &stored, index)?;
        results.push(BatchResult { event_id: stored.event.event_id, seq: stored.seq, status });
    }
    for key in &dirty {
        if let Some(row) = rows.get(key) {
            views.save(row).await?;
        }
    }
    Ok(results)
}

/// Appends a device event and folds it into the `devices` view, in the
/// caller's transaction. Returns the device's row after the event.
pub async fn record_device(
    tx: &mut LogTx,
    actor: Uuid,
    device: Uuid,
    action: DeviceAction,
    now: DateTime<Utc>,
) -> StoreResult<Option<DeviceRow>> {
    let current = devices::load(tx, device).await?;
    let counter = current.as_ref().map_or(0, |row| row.version) + 1;
    let stored = tx.append(actor, now, action.into_event(device, counter, now)).await?;
    let next = device_fold::apply(current, &stored)?;
    if let Some(row) = &next {
        devices::save(tx, row).await?;
    }
    Ok(next)
}
