//! `register`: a burst of `--users` registrations, `--concurrency` at a
//! time, as fast as the server answers. 429 answers are counted apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{report, run_workers};
use crate::cli::Args;
use crate::client::Api;
use crate::report::Report;
use crate::stats::{Budget, Stats};

pub async fn run(args: &Args, api: &Api, duration: Duration) -> Result<Report, String> {
    let budget = Arc::new(Budget::new(duration, args.max_requests));
    let next = Arc::new(AtomicU64::new(0));
    let users = args.users;
    let started = Instant::now();
    let workers: Vec<u64> = (0..args.concurrency.min(users)).collect();
    let stats = run_workers(workers, |_| {
        let (api, budget, next) = (api.clone(), budget.clone(), next.clone());
        async move {
            let mut stats = Stats::default();
            while next.fetch_add(1, Ordering::Relaxed) < users && budget.take() {
                let timed = api.register("load-register").await;
                match timed.result {
                    Ok(_) => stats.ok("register", timed.elapsed, 1),
                    Err(failure) => stats.failed("register", &failure),
                }
            }
            stats
        }
    })
    .await;
    Ok(report(args, Duration::ZERO, started, stats))
}
