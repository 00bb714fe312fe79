//! `single-user`: one user's `--devices` devices push batches of `--batch`
//! new entries (Atuin: records), each device back to back, until the server
//! has acknowledged `--events` events (or `--duration` has passed). Push
//! throughput is reported overall and over each successive `--slice` events
//! of the log, so how its cost grows with the log's size reads off one run.
//! Then a freshly paired device pulls everything from cursor 0 (the pull
//! phase, timed apart). Batches are made as they are sent and dropped once
//! answered: the client holds no more than one batch per device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{run_workers, BACKOFF};
use crate::cli::Args;
use crate::cpu::CpuProbe;
use crate::report::{FullPull, Report, SingleUser, Slice};
use crate::stats::{Percentiles, Stats};
use crate::target::{record_push, Device, Target};

pub async fn run(args: &Args, target: &Target, duration: Duration) -> Result<Report, String> {
    let setup = Instant::now();
    let devices: Vec<Device> = target.set_up(1, args.devices, 1).await?.into_iter().flatten().collect();
    let first = devices.first().cloned().ok_or("setup failed: no device")?;
    let setup = setup.elapsed();

    eprintln!("echolia-load: one user's {} devices pushing {} events", devices.len(), args.events);
    let cpu = CpuProbe::start(args.server_pid)?;
    let started = Instant::now();
    // Without --duration, the run ends at --events however long it takes.
    let deadline = args.duration.map(|_| started + duration);
    let work = Arc::new(Work { total: args.events, claimed: AtomicU64::new(0), deadline });
    let slices = Arc::new(Mutex::new(Slices::new(args.slice, started)));
    let (batch, payload, ids) = (args.batch, args.payload as usize, args.ids);
    let stats = run_workers(devices, |device| {
        let (target, work, slices) = (target.clone(), work.clone(), slices.clone());
        async move {
            let mut stats = Stats::default();
            let mut rng = StdRng::from_os_rng();
            while let Some(count) = work.claim(batch) {
                let pushed = match target.new_records(&device, count, payload, ids, &mut rng) {
                    Ok(records) => {
                        let timed = target.push(&device, &records).await;
                        let pushed = record_push(&mut stats, &records, &timed);
                        if pushed {
                            lock(&slices).acknowledged(count, timed.elapsed);
                        }
                        pushed
                    }
                    Err(failure) => {
                        stats.failed("push", &failure);
                        false
                    }
                };
                // A failed batch is not sent again: the run ends with fewer events, as the report says.
                if !pushed {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            stats
        }
    })
    .await;
    let push_wall = started.elapsed();
    let acknowledged = stats.ops.get("push").map_or(0, |op| op.items);
    let server_cpu = cpu.and_then(|cpu| cpu.finish(acknowledged));
    let slices = lock(&slices).finish();

    let fresh = target.fresh_device(&first, "load-single-fresh").await?;
    eprintln!("echolia-load: a fresh device pulling everything from cursor 0");
    let cpu = CpuProbe::start(args.server_pid)?;
    let started = Instant::now();
    let pulled = target.pull_everything(&fresh).await;
    let pull_wall = started.elapsed();
    let pull_cpu = cpu.and_then(|cpu| cpu.finish(0)).map(|cpu| cpu.cpu_secs);
    if pulled.rows != acknowledged {
        eprintln!("echolia-load: pulled {} rows, the server acknowledged {acknowledged} events", pulled.rows);
    }

    let mut report = Report::new(args, setup, push_wall, stats);
    report.add_phase(pulled.stats, pull_wall);
    report.server_cpu = server_cpu;
    let push_secs = push_wall.as_secs_f64().max(1e-9);
    let pull_secs = pull_wall.as_secs_f64().max(1e-9);
    report.single_user = Some(SingleUser {
        devices: args.devices,
        events: acknowledged,
        push_secs,
        events_per_sec: acknowledged as f64 / push_secs,
        last_over_first: last_over_first(&slices, args.slice),
        slices,
        pull: FullPull {
            rows: pulled.rows,
            pages: pulled.pages,
            secs: pull_secs,
            rows_per_sec: pulled.rows as f64 / pull_secs,
            server_cpu_secs: pull_cpu,
        },
    });
    Ok(report)
}

/// The events left to push, shared by the devices.
struct Work {
    total: u64,
    claimed: AtomicU64,
    deadline: Option<Instant>,
}

impl Work {
    /// The size of this device's next batch; None once every event is claimed or time is up.
    fn claim(&self, batch: u64) -> Option<u64> {
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return None;
        }
        let before = self.claimed.fetch_add(batch, Ordering::Relaxed);
        (before < self.total).then(|| batch.min(self.total - before))
    }
}

/// Push throughput per slice of the log: the time between the moments the
/// acknowledged events crossed successive multiples of the slice size, and
/// the latencies of the pushes acknowledged in between.
struct Slices {
    size: u64,
    acknowledged: u64,
    since: Instant,
    latencies_us: Vec<u64>,
    done: Vec<Slice>,
}

impl Slices {
    fn new(size: u64, started: Instant) -> Self {
        Slices { size, acknowledged: 0, since: started, latencies_us: Vec::new(), done: Vec::new() }
    }

    fn acknowledged(&mut self, events: u64, latency: Duration) {
        self.acknowledged += events;
        self.latencies_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        // A batch that crosses a boundary counts in the slice it closes.
        while self.acknowledged >= self.next_boundary() {
            let to = self.next_boundary();
            self.close(to);
        }
    }

    fn next_boundary(&self) -> u64 {
        (self.done.len() as u64 + 1) * self.size
    }

    fn close(&mut self, to: u64) {
        let now = Instant::now();
        let from = self.done.last().map_or(0, |slice| slice.to);
        let secs = now.duration_since(self.since).as_secs_f64().max(1e-9);
        let latency_ms = Percentiles::of(&mut self.latencies_us);
        self.latencies_us.clear();
        self.done.push(Slice { from, to, secs, events_per_sec: (to - from) as f64 / secs, latency_ms });
        self.since = now;
    }

    /// The slices, with a last partial one if events were acknowledged past the last boundary.
    fn finish(&mut self) -> Vec<Slice> {
        let last = self.done.last().map_or(0, |slice| slice.to);
        if self.acknowledged > last {
            self.close(self.acknowledged);
        }
        std::mem::take(&mut self.done)
    }
}

/// The last full slice's throughput over the first's, when there are two full slices or more.
fn last_over_first(slices: &[Slice], size: u64) -> Option<f64> {
    let mut full = slices.iter().filter(|slice| slice.to - slice.from == size);
    let first = full.next()?;
    let last = full.next_back()?;
    Some(last.events_per_sec / first.events_per_sec)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_close_at_each_multiple_and_keep_a_partial_last_one() {
        let mut slices = Slices::new(100, Instant::now());
        for _ in 0..5 {
            slices.acknowledged(50, Duration::from_millis(10));
        }
        let done = slices.finish();
        let bounds: Vec<(u64, u64)> = done.iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(bounds, [(0, 100), (100, 200), (200, 250)]);
        assert_eq!(done[0].latency_ms.max, 10.0);
        assert!(last_over_first(&done, 100).is_some());
        assert!(last_over_first(&done[..1], 100).is_none(), "one full slice has nothing to compare");
    }

    #[test]
    fn a_batch_crossing_several_boundaries_closes_each() {
        let mut slices = Slices::new(10, Instant::now());
        slices.acknowledged(35, Duration::from_millis(1));
        let bounds: Vec<(u64, u64)> = slices.finish().iter().map(|s| (s.from, s.to)).collect();
        assert_eq!(bounds, [(0, 10), (10, 20), (20, 30), (30, 35)]);
    }

    #[test]
    fn work_is_claimed_up_to_the_total() {
        let work = Work { total: 250, claimed: AtomicU64::new(0), deadline: None };
        let claims: Vec<u64> = std::iter::from_fn(|| work.claim(100)).collect();
        assert_eq!(claims, [100, 100, 50]);
    }
}
