//! Rebuild's second half: the shadows swapped in for the live views in one
//! write transaction, with the events appended meanwhile folded in.

use std::time::Instant;

use super::schema::{explicit_indexes, index_shapes, table_exists};
use super::shadow::Shadow;
use super::timing::millis;
use super::{RebuildReport, PAGE, VIEWS};
use crate::events::log::read_after;
use crate::events::Kind;
use crate::events::LogTx;
use crate::projection::aggregate::{self, Outcome};
use crate::projection::devices;
use crate::store::{StoreError, StoreResult, UserDb};
use crate::views::aggregates::ViewStatements;
use crate::views::devices as device_rows;

/// In one write transaction: swaps the shadows in for the live views (each
/// table with its indexes, built with the shadow), folds the events appended
/// since the shadows' head with the push path's storage code, and commits.
/// The old tables are dropped afterwards, outside the swap.
pub async fn swap(db: &UserDb, shadow: Shadow) -> StoreResult<RebuildReport> {
    let started = Instant::now();
    let mut tx = LogTx::begin(db).await?;
    for view in VIEWS {
        if table_exists(&tx, view.table).await? {
            // The shadow's indexes were read from the live table's at the
            // start; a migration since would be undone by the swap.
            let live = index_shapes(view.table, &explicit_indexes(&tx, view.table).await?)?;
            let shadow = index_shapes(view.table, &explicit_indexes(&tx, &view.shadow()).await?)?;
            if live != shadow {
                return Err(StoreError::Conflict(format!(
                    "the indexes of `{}` changed during the rebuild (a migration?); nothing was swapped: run replay again",
                    view.table
                )));
            }
            tx.execute(&format!("ALTER TABLE {} RENAME TO {}", view.table, view.retired()), ()).await?;
        }
        tx.execute(&format!("ALTER TABLE {} RENAME TO {}", view.shadow(), view.table), ()).await?;
    }
    let tail = fold_tail(&mut tx, shadow.upto).await?;
    let head = tx.tip().seq;
    tx.commit().await?;
    tracing::debug!(tail, ms = millis(started.elapsed()), "replay: views swapped in");
    // The new views are live: what follows only tidies up, and a failure
    // there is logged, not reported as a failed rebuild (the next rebuild
    // drops leftover tables first).
    if let Err(err) = drop_retired(db).await {
        tracing::warn!(error = %err, "replay: the old views were not dropped; the next replay drops them");
    }
    tracing::debug!(ms = millis(started.elapsed()), "replay: old views dropped");
    if let Err(err) = shadow.checkpointer.finish().await {
        tracing::warn!(error = %err, "replay: the last checkpoint did not finish; the server's own checkpoints copy its pages");
    }
    tracing::debug!(ms = millis(started.elapsed()), "replay: last checkpoint done");
    Ok(RebuildReport { head, events: shadow.events + tail, tail, rows: shadow.rows })
}

async fn drop_retired(db: &UserDb) -> StoreResult<()> {
    let tx = db.begin_write().await?;
    for view in VIEWS {
        tx.execute(&format!("DROP TABLE IF EXISTS {}", view.retired()), ()).await?;
    }
    tx.commit().await
}

/// Folds the events after `upto` into the (new) live views exactly as the
/// write paths do: load the row, apply the projector, save what changed.
async fn fold_tail(tx: &mut LogTx, upto: u64) -> StoreResult<u64> {
    let views = ViewStatements::prepare(tx).await?;
    let (mut since, mut folded) = (upto, 0);
    loop {
        let page = read_after(tx, since, PAGE).await?;
        let Some(last) = page.last() else { return Ok(folded) };
        since = last.seq;
        for stored in &page {
            folded += 1;
            let id = stored.event.aggregate_id;
            match stored.event.kind {
                Kind::Device => {
                    let current = device_rows::load(tx, id).await?;
                    if let Some(row) = devices::apply(current, stored)? {
                        device_rows::save(tx, &row).await?;
                    }
                }
                kind => {
                    // The writer's index knows every event up to the tip this transaction began at.
                    let current = match tx.created(kind, id).await? {
                        Some(created) => views.load(kind, created).await?,
                        None => None,
                    };
                    let (row, outcome) = aggregate::apply(current, stored);
                    if outcome != Outcome::Stale {
                        views.save(&row).await?;
                    }
                }
            }
        }
    }
}
