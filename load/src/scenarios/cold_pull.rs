//! `cold-pull`: one account seeded with `--entries` entries (batches of
//! `--batch` from its first device), then a second, fresh device pulls
//! everything from cursor 0, page by page. Seeding counts as setup.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cli::Args;
use crate::report::{ColdPull, Report};
use crate::target::{Device, Target};

pub async fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let setup = Instant::now();
    let mut users = target.set_up(1, 1, 1).await?;
    let first = users.pop().and_then(|mut devices| devices.pop()).ok_or("setup failed: no device")?;
    let seed_secs = seed(target, &first, args).await?;
    let fresh = target.fresh_device(&first, "load-cold-1").await?;
    let setup = setup.elapsed();

    eprintln!("echolia-load: pulling the account from cursor 0 on a fresh device");
    let started = Instant::now();
    let pulled = target.pull_everything(&fresh).await;
    let pull = started.elapsed();

    let mut report = Report::new(args, setup, pull, pulled.stats);
    report.cold_pull = Some(ColdPull {
        entries: args.entries,
        seed_secs,
        seed_events_per_sec: args.entries as f64 / seed_secs.max(1e-9),
        rows: pulled.rows,
        pages: pulled.pages,
        pull_secs: pull.as_secs_f64(),
        rows_per_sec: pulled.rows as f64 / pull.as_secs_f64().max(1e-9),
    });
    if pulled.rows != args.entries {
        eprintln!("echolia-load: pulled {} rows, expected {}", pulled.rows, args.entries);
    }
    Ok(report)
}

/// Pushes `--entries` new entries in batches; any failure stops the run.
async fn seed(target: &Target, device: &Device, args: &Args) -> Result<f64, String> {
    eprintln!("echolia-load: seeding one account with {} entries", args.entries);
    let mut rng = StdRng::from_os_rng();
    let started = Instant::now();
    let mut left = args.entries;
    while left > 0 {
        let count = left.min(args.batch);
        let seeding = |f| format!("seeding failed: push: {f}");
        let batch = target.new_records(device, count, args.payload as usize, args.ids, &mut rng).map_err(seeding)?;
        target.push(device, &batch).await.result.map_err(seeding)?;
        left -= count;
    }
    Ok(started.elapsed().as_secs_f64())
}
