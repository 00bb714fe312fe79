//! `echolia-load`: a load generator for a running Echolia Sync server.
//!
//! It registers users and pairs devices through the real API, then runs one
//! scenario (steady push/pull, closed or open loop, one user's large log,
//! cold pull, conflicting edits, a registration burst) for a fixed duration
//! or number of requests, and prints throughput and latency percentiles per
//! operation, as a table or as JSON (`--json`). The push and pull workloads
//! also run against Atuin's server (`--target atuin`), the peer they are
//! measured against. Usage and recorded runs: benches/README.md.

#![deny(unsafe_code)]

mod atuin;
mod cli;
mod client;
mod cpu;
mod report;
mod scenarios;
mod stats;
mod target;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Args, TargetKind};
use crate::client::Failure;
use crate::target::Target;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let duration = match args.duration() {
        Ok(duration) => duration,
        Err(message) => return fail(2, &message),
    };
    if let Err(message) = cpu::check(args.server_pid) {
        return fail(2, &message);
    }
    let target = match Target::new(&args) {
        Ok(target) => target,
        Err(message) => return fail(2, &message),
    };
    if let Err(failure) = target.health().await {
        return fail(1, &unreachable(args.target, target.base(), &failure));
    }
    let report = match scenarios::run(&args, &target, duration).await {
        Ok(report) => report,
        Err(message) => return fail(1, &message),
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => return fail(1, &format!("encoding the report: {err}")),
        }
    } else {
        print!("{}", report.table());
    }
    if report.rate_limited > 0 {
        eprintln!("echolia-load: {}", scenarios::RATE_LIMIT_HINT);
    }
    ExitCode::SUCCESS
}

fn unreachable(kind: TargetKind, url: &str, failure: &Failure) -> String {
    match (kind, failure) {
        (TargetKind::Atuin, Failure::Transport(cause)) => {
            format!("cannot reach Atuin's server at {url} ({cause}); start it first (benches/atuin.sh shows how)")
        }
        (TargetKind::Atuin, other) => format!("Atuin's server at {url} is not healthy: GET /healthz answered {other}"),
        (TargetKind::Echolia, Failure::Transport(cause)) => format!(
            "cannot reach the server at {url} ({cause}); start it first, e.g. \
             `DATA_DIR=/tmp/echolia-load REGISTER_RATE_LIMIT=1000000 BIND_ADDR=127.0.0.1:8000 cargo run --release`"
        ),
        (TargetKind::Echolia, other) => format!("the server at {url} is not healthy: GET /health answered {other}"),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("echolia-load: {message}");
    ExitCode::from(code)
}
