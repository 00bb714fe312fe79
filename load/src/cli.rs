//! Command-line options of `echolia-load`.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use uuid::Uuid;

/// Drives a running Echolia Sync server over HTTP and reports throughput and
/// latency percentiles per operation.
#[derive(Debug, Clone, Parser)]
#[command(name = "echolia-load", version)]
pub struct Args {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
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
    /// How long the measured phase lasts, in seconds (setup not included; `cold-pull` ignores it;
    /// for `long-poll`, the time the users' pushes are spread over).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
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
    /// The measured phase's length; a bad value is a usage error.
    pub fn duration(&self) -> Result<Duration, String> {
        let duration = Duration::try_from_secs_f64(self.duration)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("--duration must be a positive number of seconds, not {}", self.duration))?;
        if !(self.settle.is_finite() && self.settle >= 0.0) {
            return Err(format!("--settle must be a number of seconds, not {}", self.settle));
        }
        // A long-poll waits at most 60 s: the last user's push must come well before.
        if self.scenario == Scenario::LongPoll && self.duration + self.settle > 45.0 {
            return Err(
                "long-poll: --duration plus --settle must stay within 45 s (a long-poll waits at most 60 s)".into()
            );
        }
        Ok(duration)
    }
}
