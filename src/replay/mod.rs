//! Replay: every view of a user rebuilt from its log with the projectors the
//! push path uses, or checked against the stored views. An operator job over
//! the whole log (long, blocking its threads), never a request handler's.
//! How and why: docs/replay.md.

mod batch;
mod check;
mod checkpointer;
mod checksum;
mod fold;
pub mod remote;
mod schema;
mod shadow;
pub mod sorted_log;
mod swap;
mod timing;

use std::sync::Arc;

pub use self::check::{check, check_with, CheckReport, ColumnDifference, Difference, DifferenceKind};
pub use self::checksum::{checksum, ViewHasher};
pub use self::shadow::{build_shadow, Shadow};
pub use self::swap::swap;
use crate::events::Kind;
use crate::store::{StoreResult, UserDb};
use crate::views::{self, devices};

/// Events (or view rows) read or written per query or transaction.
pub const PAGE: u64 = 10_000;

/// Told how many events have been folded so far.
pub type OnProgress<'a> = dyn Fn(u64) + Send + Sync + 'a;

/// One read model: its table, the kind of events it folds, its key column
/// (also the first of its columns) and its stored columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub table: &'static str,
    pub kind: Kind,
    pub key: &'static str,
    pub columns: &'static str,
}

/// Every view, in the fixed order of the checksum, which is also the text
/// order of their kinds (the order the sorted log comes in).
pub const VIEWS: [View; 5] = [
    View { table: "devices", kind: Kind::Device, key: "device_id", columns: devices::COLUMNS },
    View { table: "embeddings", kind: Kind::Embedding, key: "id", columns: views::COLUMNS },
    View { table: "entries", kind: Kind::Entry, key: "id", columns: views::COLUMNS },
    View { table: "memories", kind: Kind::Memory, key: "id", columns: views::COLUMNS },
    View { table: "tags", kind: Kind::Tag, key: "id", columns: views::COLUMNS },
];

impl View {
    fn shadow(&self) -> String {
        format!("{}_replay", self.table)
    }

    /// Where the rows of an aggregate view's shadow are written first, in the
    /// order replay folds them (by id), before they go to the shadow in key
    /// order (`created_seq`, [`View::sorted_in`]): inserted by id, they
    /// would each land at a random leaf of the shadow's B-tree. `None` for
    /// the devices view, whose rows come in key order.
    fn fill(&self) -> Option<String> {
        (self.kind != Kind::Device).then(|| format!("{}_replay_fill", self.table))
    }

    /// The statements that move a filled shadow's rows in, in key order.
    fn sorted_in(&self) -> Vec<String> {
        let Some(fill) = self.fill() else { return Vec::new() };
        let (shadow, columns) = (self.shadow(), self.columns);
        vec![
            format!("INSERT OR FAIL INTO {shadow} ({columns}) SELECT {columns} FROM {fill} ORDER BY created_seq"),
            format!("DROP TABLE {fill}"),
        ]
    }

    /// The table replay's inserts write to.
    fn inserted_into(&self) -> String {
        self.fill().unwrap_or_else(|| self.shadow())
    }

    /// Where the live table goes during the swap, dropped right after.
    fn retired(&self) -> String {
        format!("{}_old", self.table)
    }

    fn column_names(&self) -> impl Iterator<Item = &'static str> {
        self.columns.split(',').map(str::trim)
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// The log head when the new views went live.
    pub head: u64,
    /// Events folded in all.
    pub events: u64,
    /// Of those, events appended during the rebuild, folded at the swap.
    pub tail: u64,
    /// View rows written to the shadows.
    pub rows: u64,
}

/// Rebuilds every view of `db` from its log and swaps the result in.
pub async fn rebuild(db: &Arc<UserDb>, progress: &OnProgress<'_>) -> StoreResult<RebuildReport> {
    rebuild_with(db, sorted_log::scanners(), progress).await
}

/// [`rebuild`] reading the log with `scanners` threads.
pub async fn rebuild_with(db: &Arc<UserDb>, scanners: u64, progress: &OnProgress<'_>) -> StoreResult<RebuildReport> {
    let shadow = build_shadow(db, scanners, progress).await?;
    swap(db, shadow).await
}

#[cfg(test)]
mod tests;
