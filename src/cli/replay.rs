//! `echolia replay --user <id> | --all [--check]`: the views rebuilt from the
//! log and swapped in, or (with `--check`) rebuilt in memory and compared.
//! The work is [`crate::replay`]; this formats its reports.

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::{per_second, Done};
use crate::replay::{self, OnProgress};
use crate::store::{StoreResult, UserDb};

pub async fn rebuild_one(user: Uuid, db: &Arc<UserDb>, scanners: u64, progress: &OnProgress<'_>) -> StoreResult<Done> {
    let started = Instant::now();
    if let Some(hrana) = db.remote() {
        let report = replay::remote::rebuild(db, hrana, progress).await?;
        let secs = started.elapsed().as_secs_f64();
        return Ok(Done {
            line: format!(
                "user {user}: replayed {} events into {} view rows in {secs:.2} s ({:.0} events/s)",
                report.events,
                report.rows,
                per_second(report.events, secs),
            ),
            found: false,
            events: report.events,
        });
    }
    let report = replay::rebuild_with(db, scanners, progress).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(Done {
        line: format!(
            "user {user}: replayed {} events ({} appended meanwhile) into {} view rows in {secs:.2} s ({:.0} events/s)",
            report.events,
            report.tail,
            report.rows,
            per_second(report.events, secs),
        ),
        found: false,
        events: report.events,
    })
}

pub async fn check_one(user: Uuid, db: &Arc<UserDb>, scanners: u64, progress: &OnProgress<'_>) -> StoreResult<Done> {
    if db.remote().is_some() {
        let report = replay::remote::check(db, progress).await?;
        let line = match &report.first {
            None => format!("user {user}: views match the log: {} events, {} rows", report.events, report.rows),
            Some(first) => {
                format!("user {user}: views DIFFER from the log in {} rows; first: {first}", report.differences)
            }
        };
        return Ok(Done { line, found: report.first.is_some(), events: report.events });
    }
    let report = replay::check_with(db, scanners, progress).await?;
    let line = match &report.first {
        None => format!(
            "user {user}: views match the log: {} events, {} rows, checksum {}",
            report.events,
            report.rows,
            hex::encode(report.replayed)
        ),
        Some(first) => format!(
            "user {user}: views DIFFER from the log in {} rows; first: {first}; checksum stored {}, replayed {}",
            report.differences,
            hex::encode(report.stored),
            hex::encode(report.replayed)
        ),
    };
    Ok(Done { line, found: !report.is_clean(), events: report.events })
}
