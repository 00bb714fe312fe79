//! Command-line options of `echolia-load`.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use uuid::Uuid;

/// Drives a running Echolia Sync server (or Atuin's, `--target atuin`) over HTTP and
/// reports throughput and latency percentiles per operation.
#[derive(Debug, Clone, Parser)]
#[command(name = "echolia-load", version)]
pub struct Args {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// The kind of server at `--url`.
    #[arg(long, value_enum, default_value_t = TargetKind::Echolia)]
    pub target: TargetKind,
    /// What to simulate.
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,
    /// Users (accounts); for `register`, the registrations of the burst.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub users: u64,
    /// Devices per user; the first registers, the others are paired through `/auth/pair-device`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub devices: u64,
    /// Events per push (the server takes at most 1,000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub batch: u64,
    /// Bytes of random payload per event.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub payload: u64,
    /// How long the measured phase lasts, in seconds, 10 unless given (setup not included;
    /// `cold-pull` ignores it; for `long-poll`, the time the users' pushes are spread over;
    /// `single-user` stops at `--events` unless this is given; with `--open-loop`, the time
    /// requests are scheduled over).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many requests in the measured phase (all operations together; `cold-pull` and
    /// `long-poll` ignore it).
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Requests in flight at once for registration bursts and setup.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Body format of the sync endpoints (push and pull).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// `cold-pull`: entries seeded into the account before the fresh device pulls.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub entries: u64,
    /// `single-user`: events to push in all (the push phase ends there or at `--duration`).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// `single-user`: events per slice of the log over which push throughput is reported.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub slice: u64,
    /// `steady`: send pushes open-loop, at `--rate` events/s with Poisson arrivals, each at its
    /// scheduled time whatever earlier ones are doing; latency runs from that time.
    #[arg(long)]
    pub open_loop: bool,
    /// `--open-loop`: the offered load, in events per second (`--batch` events a request).
    #[arg(long)]
    pub rate: Option<f64>,
    /// `--open-loop`: seed of the arrival schedule (the same seed, the same schedule).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The server's process id: its CPU time (utime + stime from /proc) over the measured phase is
    /// reported, with microseconds per pushed event.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// `conflicts`: aggregates per user that every device edits.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub hot: u64,
    /// `steady`: push only, never pull (to measure the push path alone).
    #[arg(long)]
    pub no_pull: bool,
    /// `long-poll`: seconds between the last long-poll sent and the first push (with
    /// `--metrics-url`, at most this long waiting for the server to count every waiter).
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// `long-poll`: the server's metrics listener (e.g. http://127.0.0.1:9090); pushes start once
    /// its `echolia_long_polls_waiting` counts every waiting device.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How devices make the ids of new events and entries.
    #[arg(long, value_enum, default_value_t = Ids::V7)]
    pub ids: Ids,
}

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Echolia Sync's API.
    Echolia,
    /// Atuin's server (18.x), through its record API (`/api/v0/record`); JSON only.
    Atuin,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Echolia => "echolia",
            Self::Atuin => "atuin",
        }
    }
}

/// UUID versions a device may make ids with; the server takes any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ids {
    /// Time-ordered (RFC 9562 version 7), as the API description recommends:
    /// the server's indexes by id then grow at their end.
    V7,
    /// Random (version 4): every new id lands on a random page of those indexes.
    V4,
}

impl Ids {
    pub fn new_id(self) -> Uuid {
        match self {
            Self::V7 => Uuid::now_v7(),
            Self::V4 => Uuid::new_v4(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::V7 => "v7",
            Self::V4 => "v4",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every device pushes a batch of new and edited entries, then pulls since its cursor.
    Steady,
    /// One account of `--entries` entries, then a fresh device pulls it all from cursor 0.
    ColdPull,
    /// The devices of each user edit the same few aggregates at once.
    Conflicts,
    /// A burst of `--users` registrations.
    Register,
    /// `--devices` devices per user wait in a long-poll; one more device per user pushes; wake latency.
    LongPoll,
    /// One user's `--devices` devices push `--events` new entries back to back (throughput per
    /// slice of the log), then a fresh device pulls them all from cursor 0.
    SingleUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Msgpack,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::ColdPull => "cold-pull",
            Self::Conflicts => "conflicts",
            Self::Register => "register",
            Self::LongPoll => "long-poll",
            Self::SingleUser => "single-user",
        }
    }
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Msgpack => "msgpack",
        }
    }
}

impl Args {
    /// The measured phase's length (10 s unless given); a bad value, or options that do not go
    /// together, are a usage error.
    pub fn duration(&self) -> Result<Duration, String> {
        let secs = self.duration.unwrap_or(DEFAULT_DURATION_SECS);
        let duration = Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("--duration must be a positive number of seconds, not {secs}"))?;
        if !(self.settle.is_finite() && self.settle >= 0.0) {
            return Err(format!("--settle must be a number of seconds, not {}", self.settle));
        }
        // A long-poll waits at most 60 s: the last user's push must come well before.
        if self.scenario == Scenario::LongPoll && secs + self.settle > 45.0 {
            return Err(
                "long-poll: --duration plus --settle must stay within 45 s (a long-poll waits at most 60 s)".into()
            );
        }
        if self.scenario == Scenario::SingleUser && !self.slice.is_multiple_of(self.batch) {
            return Err(format!(
                "single-user: --slice ({}) must be a multiple of --batch ({})",
                self.slice, self.batch
            ));
        }
        self.check_open_loop()?;
        self.check_target()?;
        Ok(duration)
    }

    fn check_open_loop(&self) -> Result<(), String> {
        match (self.open_loop, self.rate) {
            (false, None) => Ok(()),
            (false, Some(_)) => Err("--rate goes with --open-loop".into()),
            (true, None) => Err("--open-loop needs --rate <events/s>".into()),
            (true, Some(_)) if self.scenario != Scenario::Steady => {
                Err(format!("--open-loop is a mode of `steady`, not of `{}`", self.scenario.name()))
            }
            (true, Some(rate)) if !(rate.is_finite() && rate > 0.0) => {
                Err(format!("--rate must be a positive number of events per second, not {rate}"))
            }
            (true, Some(_)) => Ok(()),
        }
    }

    fn check_target(&self) -> Result<(), String> {
        if self.target == TargetKind::Echolia {
            return Ok(());
        }
        if self.format != Format::Json {
            return Err("--target atuin: Atuin's record API speaks JSON only (--format json)".into());
        }
        match self.scenario {
            Scenario::SingleUser | Scenario::ColdPull => Ok(()),
            Scenario::Steady if self.no_pull || self.open_loop => Ok(()),
            Scenario::Steady => Err("--target atuin runs `steady` with --no-pull (or --open-loop) only".into()),
            other => Err(format!(
                "--target atuin runs `steady --no-pull`, `single-user` and `cold-pull`, not `{}`",
                other.name()
            )),
        }
    }
}

/// `--duration` when not given.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;
