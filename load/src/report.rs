//! The report of a run: built from the merged stats, printed as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{Args, DEFAULT_DURATION_SECS};
use crate::cpu::ServerCpu;
use crate::stats::{Percentiles, PushStatuses, Stats};

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// `echolia` or `atuin`.
    pub target: &'static str,
    pub url: String,
    pub format: &'static str,
    /// `v7` or `v4`: how event and aggregate (Atuin: record) ids were made.
    pub ids: &'static str,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single_user: Option<SingleUser>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoop>,
    /// The server's CPU over the measured phase (with `--server-pid`; `single-user`: the push phase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<ServerCpu>,
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
    /// The bound of the measured phase; absent when `single-user` ran to `--events`.
    pub duration_secs: Option<f64>,
    pub events: u64,
    pub slice: u64,
    pub rate: Option<f64>,
}

impl Settings {
    /// The settings that matter to `scenario`, in words.
    fn describe(&self, scenario: &str) -> String {
        let batches = format!("batches of {} events x {} B", self.batch, self.payload);
        match scenario {
            "single-user" => format!(
                "1 user x {} devices pushing {} events in {batches} back to back, then a fresh device pulls them all",
                self.devices, self.events
            ),
            "open-loop" => format!(
                "{} users x {} devices, {batches}, offered {:.0} events/s open-loop (Poisson arrivals)",
                self.users,
                self.devices,
                self.rate.unwrap_or_default()
            ),
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

/// The `single-user` figures.
#[derive(Debug, Serialize)]
pub struct SingleUser {
    pub devices: u64,
    /// Events acknowledged by the server.
    pub events: u64,
    pub push_secs: f64,
    pub events_per_sec: f64,
    /// Push throughput over each successive `--slice` events of the log (the last may be partial).
    pub slices: Vec<Slice>,
    /// The last full slice's events/s over the first's (1.0: cost flat in log size).
    pub last_over_first: Option<f64>,
    pub pull: FullPull,
}

/// One slice of the log, in order of acknowledgement.
#[derive(Debug, Clone, Serialize)]
pub struct Slice {
    /// Log positions: events acknowledged before the slice and at its end.
    pub from: u64,
    pub to: u64,
    pub secs: f64,
    pub events_per_sec: f64,
    /// Latency of the pushes acknowledged in the slice.
    pub latency_ms: Percentiles,
}

/// A fresh device pulling everything from cursor 0 (Atuin: from idx 0 of each host).
#[derive(Debug, Serialize)]
pub struct FullPull {
    pub rows: u64,
    pub pages: u64,
    pub secs: f64,
    pub rows_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
}

/// The `--open-loop` figures; `operations.push` latencies run from each request's scheduled time.
#[derive(Debug, Serialize)]
pub struct OpenLoop {
    pub seed: u64,
    pub offered_events_per_sec: f64,
    /// The events the seeded schedule held, over `--duration` (the offered rate as drawn).
    pub scheduled_events_per_sec: f64,
    /// Events acknowledged over the time from the first scheduled send to the last answer.
    pub achieved_events_per_sec: f64,
    pub scheduled_requests: u64,
    /// Requests that started more than `late_after_ms` after their scheduled time.
    pub late_starts: u64,
    pub late_after_ms: f64,
    /// How far behind schedule requests started.
    pub start_lag_ms: Percentiles,
}

/// What each operation moves.
pub fn unit_of(op: &str) -> &'static str {
    match op {
        "push" => "events",
        "register" => "accounts",
        "status" => "requests",
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
        let bounded = args.scenario != crate::cli::Scenario::SingleUser || args.duration.is_some();
        Report {
            scenario: if args.open_loop { "open-loop" } else { args.scenario.name() },
            target: args.target.name(),
            url: args.url.clone(),
            format: args.format.name(),
            ids: args.ids.name(),
            settings: Settings {
                users: args.users,
                devices: args.devices,
                batch: args.batch,
                payload: args.payload,
                concurrency: args.concurrency,
                entries: args.entries,
                hot: args.hot,
                max_requests: args.max_requests,
                duration_secs: bounded.then(|| args.duration.unwrap_or(DEFAULT_DURATION_SECS)),
                events: args.events,
                slice: args.slice,
                rate: args.rate,
            },
            setup_secs: setup.as_secs_f64(),
            wall_secs,
            requests: operations.values().map(|op| op.requests).sum(),
            errors,
            rate_limited: operations.values().map(|op| op.rate_limited).sum(),
            operations,
            push_results: any_pushed.then_some(pushed),
            cold_pull: None,
            single_user: None,
            open_loop: None,
            server_cpu: None,
            first_errors: stats.first_errors,
        }
    }

    /// Adds the operations of another phase, their rates over that phase's own wall time.
    pub fn add_phase(&mut self, stats: Stats, wall: Duration) {
        let wall_secs = wall.as_secs_f64().max(1e-9);
        self.errors += stats.error_count();
        for (op, s) in stats.ops {
            let op_report = OpReport::new(op, s, wall_secs);
            self.requests += op_report.requests;
            self.rate_limited += op_report.rate_limited;
            self.operations.insert(op, op_report);
        }
        for (key, message) in stats.first_errors {
            self.first_errors.entry(key).or_insert(message);
        }
    }

    /// The human-readable form.
    pub fn table(&self) -> String {
        let mut out = format!(
            "echolia-load {} against {} at {} ({}, {} ids)\n{}\nsetup {:.2} s, measured {:.2} s, {} requests, {} errors, {} rate-limited\n\n",
            self.scenario,
            self.target,
            self.url,
            self.format,
            self.ids,
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
        if let Some(u) = &self.single_user {
            let _ = write!(
                out,
                "\nsingle user: {} events in {:.2} s ({:.0} events/s) from {} devices\n",
                u.events, u.push_secs, u.events_per_sec, u.devices
            );
            for s in &u.slices {
                let _ = writeln!(
                    out,
                    "  events {:>9} to {:>9}: {:>8.0} events/s over {:>7.2} s, p50 {:.1} ms, p99 {:.1} ms",
                    s.from, s.to, s.events_per_sec, s.secs, s.latency_ms.p50, s.latency_ms.p99
                );
            }
            if let Some(ratio) = u.last_over_first {
                let _ = writeln!(out, "  last full slice / first: {ratio:.2}");
            }
            let p = &u.pull;
            let _ = writeln!(
                out,
                "cold pull by a fresh device: {} rows in {} pages in {:.3} s ({:.0} rows/s)",
                p.rows, p.pages, p.secs, p.rows_per_sec
            );
            if let Some(cpu) = p.server_cpu_secs {
                let _ = writeln!(out, "  server CPU during the pull: {cpu:.2} s");
            }
        }
        if let Some(o) = &self.open_loop {
            let _ = write!(
                out,
                "\nopen loop (seed {}): offered {:.0} events/s ({:.0} as scheduled), achieved {:.0}; {} requests scheduled, {} started more than {} ms late (start lag p99 {:.2} ms, max {:.2} ms); push latency from the scheduled time\n",
                o.seed,
                o.offered_events_per_sec,
                o.scheduled_events_per_sec,
                o.achieved_events_per_sec,
                o.scheduled_requests,
                o.late_starts,
                o.late_after_ms,
                o.start_lag_ms.p99,
                o.start_lag_ms.max
            );
        }
        if let Some(c) = &self.server_cpu {
            let per_event = c.us_per_event.map(|us| format!(", {us:.1} µs per pushed event")).unwrap_or_default();
            let own_per_event =
                c.generator_us_per_event.map(|us| format!(", {us:.1} µs per pushed event")).unwrap_or_default();
            let _ = writeln!(
                out,
                "\nserver CPU (pid {}): {:.2} s over {:.2} s ({:.2} cores){per_event}\nload generator CPU: {:.2} s{own_per_event}",
                c.pid, c.cpu_secs, c.wall_secs, c.cores, c.generator_cpu_secs
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
