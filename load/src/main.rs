//! `echolia-load`: a load generator for a running Echolia Sync server.
//!
//! It registers users and pairs devices through the real API, then runs one
//! scenario (steady push/pull, cold pull, conflicting edits, a registration
//! burst) for a fixed duration or number of requests, and prints throughput
//! and latency percentiles per operation, as a table or as JSON (`--json`).
//! Usage and recorded runs: benches/README.md.

mod cli;
mod client;
mod report;
mod scenarios;
mod stats;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Args;
use crate::client::{Api, Failure};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let duration = match args.duration() {
        Ok(duration) => duration,
        Err(message) => return fail(2, &message),
    };
    let api = match Api::new(&args.url, args.format) {
        Ok(api) => api,
        Err(message) => return fail(2, &message),
    };
    if let Err(failure) = api.health().await {
        return fail(1, &unreachable(api.base(), &failure));
    }
    let report = match scenarios::run(&args, &api, duration).await {
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

fn unreachable(url: &str, failure: &Failure) -> String {
    match failure {
        Failure::Transport(cause) => format!(
            "cannot reach the server at {url} ({cause}); start it first, e.g. \
             `DATA_DIR=/tmp/echolia-load REGISTER_RATE_LIMIT=1000000 BIND_ADDR=127.0.0.1:8000 cargo run --release`"
        ),
        other => format!("the server at {url} is not healthy: GET /health answered {other}"),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("echolia-load: {message}");
    ExitCode::from(code)
}
