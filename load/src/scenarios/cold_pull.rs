//! `cold-pull`: one account seeded with `--entries` entries (batches of
//! `--batch` from its first device), then a second, fresh device pulls
//! everything from cursor 0, page by page. Seeding counts as setup.

use std::time::Instant;

use echolia::events::version::VersionVector;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{put_entry, PULL_LIMIT};
use crate::cli::Args;
use crate::client::{Api, Session};
use crate::report::{ColdPull, Report};
use crate::stats::Stats;

pub async fn run(args: &Args, api: &Api) -> Result<Report, String> {
    let setup = Instant::now();
    let first = api.register("load-cold-0").await.result.map_err(|f| super::setup_failure("register", &f))?;
    let seed_secs = seed(api, &first, args).await?;
    let fresh = api.pair(&first, "load-cold-1").await.result.map_err(|f| super::setup_failure("pair-device", &f))?;
    let setup = setup.elapsed();

    eprintln!("echolia-load: pulling the account from cursor 0 on a fresh device");
    let started = Instant::now();
    let (stats, pages, rows) = pull_everything(api, &fresh).await;
    let pull = started.elapsed();

    let mut report = Report::new(args, setup, pull, stats);
    report.cold_pull = Some(ColdPull {
        entries: args.entries,
        seed_secs,
        seed_events_per_sec: args.entries as f64 / seed_secs.max(1e-9),
        rows,
        pages,
        pull_secs: pull.as_secs_f64(),
        rows_per_sec: rows as f64 / pull.as_secs_f64().max(1e-9),
    });
    if rows != args.entries {
        eprintln!("echolia-load: pulled {rows} rows, expected {}", args.entries);
    }
    Ok(report)
}

/// Pushes `--entries` new entries in batches; any failure stops the run.
async fn seed(api: &Api, device: &Session, args: &Args) -> Result<f64, String> {
    eprintln!("echolia-load: seeding one account with {} entries", args.entries);
    let mut rng = StdRng::from_os_rng();
    let started = Instant::now();
    let mut left = args.entries;
    while left > 0 {
        let count = left.min(args.batch);
        let events = (0..count)
            .map(|_| {
                let version = VersionVector::single(device.device_id, 1);
                put_entry(args.ids, args.ids.new_id(), version, args.payload as usize, &mut rng)
            })
            .collect();
        let batch = echolia::sync::wire::PushRequest { events };
        api.push(device, &batch).await.result.map_err(|f| format!("seeding failed: push: {f}"))?;
        left -= count;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Pages from cursor 0 until `has_more` is false (or a request fails).
async fn pull_everything(api: &Api, device: &Session) -> (Stats, u64, u64) {
    let mut stats = Stats::default();
    let (mut cursor, mut pages, mut rows) = (0, 0, 0);
    loop {
        let timed = api.pull(device, cursor, PULL_LIMIT).await;
        match timed.result {
            Ok(page) => {
                let count = page.changes.len() as u64;
                stats.ok("pull", timed.elapsed, count);
                (pages, rows, cursor) = (pages + 1, rows + count, page.cursor);
                if !page.has_more {
                    return (stats, pages, rows);
                }
            }
            Err(failure) => {
                stats.failed("pull", &failure);
                return (stats, pages, rows);
            }
        }
    }
}
