//! The report of a run: built from the merged stats, printed as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cli::Args;
use crate::stats::{Percentiles, PushStatuses, Stats};

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub url: String,
    pub format: &'static str,
    pub settings: Settings,
    /// Seconds spent registering and pairing before the measured phase.
    pub setup_secs: f64,
    /// Seconds of the measured phase.
    pub wall_secs: f64,
    pub requests: u64,
    /// Failed requests of every operation (429 answers are counted apart).
    pub errors: u64,
    pub rate_limited: u64,
    pub operations: BTreeMap<&'static str, OpReport>,
    /// How the server classified the pushed events (absent when nothing was pushed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_results: Option<PushStatuses>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_pull: Option<ColdPull>,
    /// One message per kind of failure, as first seen.
    pub first_errors: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub users: u64,
    pub devices: u64,
    pub batch: u64,
    pub payload: u64,
    pub concurrency: u64,
    pub entries: u64,
    pub hot: u64,
    pub max_requests: Option<u64>,
    pub duration_secs: f64,
}

impl Settings {
    /// The settings that matter to `scenario`, in words.
    fn describe(&self, scenario: &str) -> String {
        let batches = format!("batches of {} events x {} B", self.batch, self.payload);
        match scenario {
            "register" => format!("{} registrations, {} at a time", self.users, self.concurrency),
            "cold-pull" => format!("{} entries seeded in {batches}, pulled 1,000 a page", self.entries),
            "long-poll" => format!(
                "{} users x {} devices waiting (+1 pushing each), one push of {} events x {} B per user",
                self.users, self.devices, self.batch, self.payload
            ),
            "conflicts" => format!(
                "{} users x {} devices editing {} aggregates each, {batches}",
                self.users, self.devices, self.hot
            ),
            _ => format!("{} users x {} devices, {batches}", self.users, self.devices),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OpReport {
    /// What `items` counts: events, rows or accounts.
    pub unit: &'static str,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub rate_limited: u64,
    pub items: u64,
    /// Items over the wall time of the measured phase.
    pub items_per_sec: f64,
    pub requests_per_sec: f64,
    pub latency_ms: Percentiles,
    pub error_kinds: BTreeMap<String, u64>,
}

/// The `cold-pull` figures.
#[derive(Debug, Serialize)]
pub struct ColdPull {
    pub entries: u64,
    pub seed_secs: f64,
    pub seed_events_per_sec: f64,
    pub rows: u64,
    pub pages: u64,
    pub pull_secs: f64,
    pub rows_per_sec: f64,
}

/// What each operation moves.
pub fn unit_of(op: &str) -> &'static str {
    match op {
        "push" => "events",
        "register" => "accounts",
        _ => "rows",
    }
}

impl Report {
    pub fn new(args: &Args, setup: Duration, wall: Duration, stats: Stats) -> Self {
        let wall_secs = wall.as_secs_f64().max(1e-9);
        let errors = stats.error_count();
        let operations: BTreeMap<&'static str, OpReport> =
            stats.ops.into_iter().map(|(op, s)| (op, OpReport::new(op, s, wall_secs))).collect();
        let pushed = stats.statuses;
        let any_pushed = pushed.applied + pushed.conflict + pushed.stale + pushed.duplicate > 0;
        Report {
            scenario: args.scenario.name(),
            url: args.url.clone(),
            format: args.format.name(),
            settings: Settings {
                users: args.users,
                devices: args.devices,
                batch: args.batch,
                payload: args.payload,
                concurrency: args.concurrency,
                entries: args.entries,
                hot: args.hot,
                max_requests: args.max_requests,
                duration_secs: args.duration,
            },
            setup_secs: setup.as_secs_f64(),
            wall_secs,
            requests: operations.values().map(|op| op.requests).sum(),
            errors,
            rate_limited: operations.values().map(|op| op.rate_limited).sum(),
            operations,
            push_results: any_pushed.then_some(pushed),
            cold_pull: None,
            first_errors: stats.first_errors,
        }
    }

    /// The human-readable form.
    pub fn table(&self) -> String {
        let mut out = format!(
            "echolia-load {} against {} ({})\n{}\nsetup {:.2} s, measured {:.2} s, {} requests, {} errors, {} rate-limited\n\n",
            self.scenario,
            self.url,
            self.format,
            self.settings.describe(self.scenario),
            self.setup_secs,
            self.wall_secs,
            self.requests,
            self.errors,
            self.rate_limited,
        );
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>7} {:>5} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}",
            "operation", "requests", "errors", "429", "items", "items/s", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for (op, r) in &self.operations {
            let l = r.latency_ms;
            let _ = writeln!(
                out,
                "{op:<10} {:>8} {:>7} {:>5} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  ({})",
                r.requests, r.errors, r.rate_limited, r.items, r.items_per_sec, l.p50, l.p95, l.p99, l.max, r.unit
            );
        }
        if let Some(p) = self.push_results {
            let _ = write!(
                out,
                "\npush results: {} applied, {} conflict, {} stale, {} duplicate\n",
                p.applied, p.conflict, p.stale, p.duplicate
            );
        }
        if let Some(c) = &self.cold_pull {
            let _ = write!(
                out,
                "\ncold pull: seeded {} entries in {:.2} s ({:.0} events/s); pulled {} rows in {} pages in {:.3} s ({:.0} rows/s)\n",
                c.entries, c.seed_secs, c.seed_events_per_sec, c.rows, c.pages, c.pull_secs, c.rows_per_sec
            );
        }
        for (what, message) in &self.first_errors {
            let _ = writeln!(out, "first {what}: {message}");
        }
        out
    }
}

impl OpReport {
    fn new(op: &str, mut stats: crate::stats::OpStats, wall_secs: f64) -> Self {
        let ok = stats.latencies_us.len() as u64;
        let errors: u64 = stats.errors.values().sum();
        let requests = ok + errors + stats.rate_limited;
        OpReport {
            unit: unit_of(op),
            requests,
            ok,
            errors,
            rate_limited: stats.rate_limited,
            items: stats.items,
            items_per_sec: stats.items as f64 / wall_secs,
            requests_per_sec: requests as f64 / wall_secs,
            latency_ms: Percentiles::of(&mut stats.latencies_us),
            error_kinds: stats.errors,
        }
    }
}
