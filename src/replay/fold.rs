//! Folding: the sorted log handed out one view (kind) at a time, and each
//! aggregate's events folded into its row with the live projectors.

use std::sync::Arc;

use libsql::Value;
use uuid::Uuid;

use super::sorted_log::SortedLog;
use super::View;
use crate::events::{Kind, StoredEvent};
use crate::projection::aggregate::{self, AggregateRow};
use crate::projection::devices::{self, DeviceRow};
use crate::store::{StoreError, StoreResult, UserDb};
use crate::views;
use crate::views::devices as device_rows;

/// A row as a projector returns it.
pub(super) enum ViewRow {
    Aggregate(AggregateRow),
    Device(DeviceRow),
}

impl ViewRow {
    pub(super) fn values(&self) -> StoreResult<Vec<Value>> {
        match self {
            Self::Aggregate(row) => views::values(row),
            Self::Device(row) => device_rows::values(row),
        }
    }
}

pub(super) fn values_of(row: Option<ViewRow>) -> StoreResult<Option<Vec<Value>>> {
    row.map(|row| row.values()).transpose()
}

/// Folds one event into the row of its aggregate, with the live projectors.
fn fold(current: Option<ViewRow>, stored: &StoredEvent) -> StoreResult<Option<ViewRow>> {
    if stored.event.kind == Kind::Device {
        let current = match current {
            Some(ViewRow::Device(row)) => Some(row),
            _ => None,
        };
        Ok(devices::apply(current, stored)?.map(ViewRow::Device))
    } else {
        let current = match current {
            Some(ViewRow::Aggregate(row)) => Some(row),
            _ => None,
        };
        Ok(Some(ViewRow::Aggregate(aggregate::apply(current, stored).0)))
    }
}

/// The log sorted by kind, then aggregate, then seq, shared by the views in
/// turn (their order is the kinds' order): each takes the events of its kind
/// and leaves the first event of the next kind for the next view.
pub(super) struct EventsByKind {
    stream: SortedLog,
    peeked: Option<StoredEvent>,
    /// Events handed out so far.
    pub(super) events: u64,
}

impl EventsByKind {
    pub(super) async fn open(db: &Arc<UserDb>, upto: u64, scanners: u64) -> StoreResult<Self> {
        let stream = SortedLog::open(db, upto, scanners).await?;
        Ok(Self { stream, peeked: None, events: 0 })
    }

    /// Checks that every event the scanners read was handed out: a run cut
    /// short would otherwise go live as missing rows.
    pub(super) fn finish(&self) -> StoreResult<()> {
        match (&self.peeked, self.stream.scanned()) {
            (None, scanned) if scanned == self.events => Ok(()),
            (_, scanned) => Err(StoreError::Corrupt(format!(
                "replay folded {} of the {scanned} events it read (an event of no view, or a lost run)",
                self.events
            ))),
        }
    }

    /// The next event if it is of `kind`.
    fn next_of(&mut self, kind: Kind) -> StoreResult<Option<StoredEvent>> {
        let next = match self.peeked.take() {
            Some(stored) => Some(stored),
            None => self.stream.next_event()?,
        };
        match next {
            Some(stored) if stored.event.kind == kind => {
                self.events += 1;
                Ok(Some(stored))
            }
            Some(stored) if stored.event.kind.as_str() < kind.as_str() => {
                Err(StoreError::Corrupt(format!("seq {}: the log did not come sorted by kind", stored.seq)))
            }
            other => {
                self.peeked = other;
                Ok(None)
            }
        }
    }
}

/// The rows replay makes for one view, in key order: the events of its kind
/// folded one aggregate at a time.
pub(super) struct FoldedRows {
    kind: Kind,
    /// The aggregate being folded, and its row so far.
    current: Option<(Uuid, Option<ViewRow>)>,
}

impl FoldedRows {
    pub(super) fn new(view: View) -> Self {
        Self { kind: view.kind, current: None }
    }

    pub(super) fn next(&mut self, log: &mut EventsByKind) -> StoreResult<Option<ViewRow>> {
        while let Some(stored) = log.next_of(self.kind)? {
            let id = stored.event.aggregate_id;
            let (row, done) = match self.current.take() {
                Some((current, row)) if current == id => (fold(row, &stored)?, None),
                Some((_, done)) => (fold(None, &stored)?, done),
                None => (fold(None, &stored)?, None),
            };
            self.current = Some((id, row));
            if done.is_some() {
                return Ok(done);
            }
        }
        Ok(self.current.take().and_then(|(_, row)| row))
    }
}
