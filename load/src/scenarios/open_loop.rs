//! `steady --open-loop --rate R`: pushes of `--batch` new entries (Atuin:
//! records) arrive as a Poisson process of R / batch requests a second,
//! each from one of the `--users` × `--devices` devices drawn at random, for
//! `--duration` seconds. Each request is sent at its scheduled time
//! whatever the state of earlier ones (its own task), and its latency runs
//! from that scheduled time, not from when it could be sent: a server that
//! falls behind shows as latency, not as fewer requests (no coordinated
//! omission). Batches are built just ahead of their time; a request that
//! still starts behind schedule is counted as late. The schedule (arrival
//! times and devices) comes from a seeded RNG (`--seed`): the same seed, the
//! same schedule.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::cli::Args;
use crate::cpu::CpuProbe;
use crate::report::{OpenLoop, Report};
use crate::stats::{Percentiles, Stats};
use crate::target::{record_push, Device, Target};

/// A request that starts later than this after its scheduled time is late (the timer's resolution is 1 ms).
const LATE_AFTER: Duration = Duration::from_millis(2);

pub async fn run(args: &Args, target: &Target, duration: Duration) -> Result<Report, String> {
    let setup = Instant::now();
    let devices: Vec<Device> =
        target.set_up(args.users, args.devices, args.concurrency).await?.into_iter().flatten().collect();
    let setup = setup.elapsed();

    let rate = args.rate.ok_or("--open-loop needs --rate")?;
    let requests_per_sec = rate / args.batch as f64;
    let mut schedule = StdRng::seed_from_u64(args.seed);
    let mut payloads = StdRng::from_os_rng();
    let mut in_flight = JoinSet::new();
    eprintln!(
        "echolia-load: offering {rate} events/s open-loop ({requests_per_sec:.1} pushes/s) for {} s",
        duration.as_secs_f64()
    );

    let cpu = CpuProbe::start(args.server_pid)?;
    let started = Instant::now();
    let mut at = Duration::ZERO;
    let mut scheduled = 0u64;
    loop {
        at += exponential(&mut schedule, requests_per_sec);
        if at >= duration || args.max_requests.is_some_and(|max| scheduled >= max) {
            break;
        }
        let device = devices[schedule.random_range(0..devices.len())].clone();
        let batch = target.new_records(&device, args.batch, args.payload as usize, args.ids, &mut payloads);
        let due = started + at;
        tokio::time::sleep_until(due.into()).await;
        let target = target.clone();
        scheduled += 1;
        in_flight.spawn(async move {
            let lag = due.elapsed();
            let mut stats = Stats::default();
            match batch {
                Ok(batch) => {
                    let mut timed = target.push(&device, &batch).await;
                    // From the scheduled time: the wait to start counts.
                    timed.elapsed += lag;
                    record_push(&mut stats, &batch, &timed);
                }
                Err(failure) => stats.failed("push", &failure),
            }
            (stats, lag)
        });
    }

    let mut stats = Stats::default();
    let mut lags_us = Vec::with_capacity(scheduled as usize);
    while let Some(done) = in_flight.join_next().await {
        match done {
            Ok((theirs, lag)) => {
                stats.merge(theirs);
                lags_us.push(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
            }
            Err(err) => eprintln!("echolia-load: a request task failed: {err}"),
        }
    }
    let wall = started.elapsed();
    let acknowledged = stats.ops.get("push").map_or(0, |op| op.items);
    let late_after_us = u64::try_from(LATE_AFTER.as_micros()).unwrap_or(u64::MAX);
    let late_starts = lags_us.iter().filter(|&&lag| lag > late_after_us).count() as u64;

    let mut report = Report::new(args, setup, wall, stats);
    report.server_cpu = cpu.and_then(|cpu| cpu.finish(acknowledged));
    report.open_loop = Some(OpenLoop {
        seed: args.seed,
        offered_events_per_sec: rate,
        scheduled_events_per_sec: (scheduled * args.batch) as f64 / duration.as_secs_f64(),
        achieved_events_per_sec: acknowledged as f64 / wall.as_secs_f64().max(1e-9),
        scheduled_requests: scheduled,
        late_starts,
        late_after_ms: LATE_AFTER.as_secs_f64() * 1000.0,
        start_lag_ms: Percentiles::of(&mut lags_us),
    });
    Ok(report)
}

/// The time to the next arrival of a Poisson process of `rate` a second (by inversion).
fn exponential(rng: &mut StdRng, rate: f64) -> Duration {
    // 1 - u lies in (0, 1], so its log is finite.
    let u: f64 = rng.random();
    Duration::try_from_secs_f64(-(1.0 - u).ln() / rate).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_average_the_rate_and_repeat_with_the_seed() {
        let gaps = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20_000).map(|_| exponential(&mut rng, 150.0)).collect::<Vec<_>>()
        };
        let (a, b) = (gaps(7), gaps(7));
        assert_eq!(a, b);
        let mean = a.iter().map(Duration::as_secs_f64).sum::<f64>() / a.len() as f64;
        assert!((mean * 150.0 - 1.0).abs() < 0.03, "mean gap {mean} s");
        assert_ne!(a, gaps(8));
    }
}
