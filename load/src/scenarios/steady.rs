//! `steady`: every device of every user loops: push a batch of new and
//! edited entries, then pull since its cursor (following `has_more`).
//! Against Atuin (`--no-pull` only), every record of a batch is new: its
//! record store has no edits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use echolia::events::version::VersionVector;
use echolia::sync::wire::{ClientEvent, PushRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{bumped, pull_since, push, put_entry, report, run_workers, BACKOFF};
use crate::cli::{Args, Ids};
use crate::client::{Api, Session};
use crate::cpu::CpuProbe;
use crate::report::Report;
use crate::stats::{Budget, Stats};
use crate::target::{record_push, Device, Target};

/// The share of events that edit one of the device's earlier entries.
const EDIT_SHARE: f64 = 0.25;
/// Entries a device remembers to edit later.
const REMEMBERED: usize = 10_000;

pub async fn run(args: &Args, target: &Target, duration: Duration) -> Result<Report, String> {
    let setup = Instant::now();
    let devices: Vec<Device> =
        target.set_up(args.users, args.devices, args.concurrency).await?.into_iter().flatten().collect();
    let setup = setup.elapsed();

    let budget = Arc::new(Budget::new(duration, args.max_requests));
    let cpu = CpuProbe::start(args.server_pid)?;
    let started = Instant::now();
    let (batch, payload, pulls, ids) = (args.batch as usize, args.payload as usize, !args.no_pull, args.ids);
    let stats = run_workers(devices, |device| {
        let (target, budget) = (target.clone(), budget.clone());
        async move {
            match (target, device) {
                (Target::Echolia(api), Device::Echolia(session)) => {
                    let entries = Entries { ids, known: Vec::new() };
                    device_loop(api, session, budget, entries, batch, payload, pulls).await
                }
                (target, device) => new_records_loop(target, device, budget, batch as u64, payload, ids).await,
            }
        }
    })
    .await;
    let mut report = report(args, setup, started, stats);
    let pushed = report.operations.get("push").map_or(0, |op| op.items);
    report.server_cpu = cpu.and_then(|cpu| cpu.finish(pushed));
    Ok(report)
}

/// Pushes batches of new records back to back, never pulling (the Atuin target).
async fn new_records_loop(
    target: Target,
    device: Device,
    budget: Arc<Budget>,
    batch: u64,
    payload: usize,
    ids: Ids,
) -> Stats {
    let mut stats = Stats::default();
    let mut rng = StdRng::from_os_rng();
    while budget.take() {
        let pushed = match target.new_records(&device, batch, payload, ids, &mut rng) {
            Ok(records) => record_push(&mut stats, &records, &target.push(&device, &records).await),
            Err(failure) => {
                stats.failed("push", &failure);
                false
            }
        };
        if !pushed {
            tokio::time::sleep(BACKOFF).await;
        }
    }
    stats
}

async fn device_loop(
    api: Api,
    device: Session,
    budget: Arc<Budget>,
    mut entries: Entries,
    batch: usize,
    payload: usize,
    pulls: bool,
) -> Stats {
    let mut stats = Stats::default();
    let mut rng = StdRng::from_os_rng();
    let mut cursor = 0;
    while budget.take() {
        let events = entries.next_batch(device.device_id, batch, payload, &mut rng);
        if push(&api, &device, &PushRequest { events }, &mut stats).await && pulls {
            pull_since(&api, &device, &mut cursor, &budget, &mut stats, |_| {}).await;
        }
    }
    stats
}

/// The entries this device created, with the version of its latest edit.
struct Entries {
    ids: Ids,
    known: Vec<(Uuid, VersionVector)>,
}

impl Entries {
    /// `batch` events: about a quarter edit earlier entries, the rest create new ones.
    fn next_batch(&mut self, device: Uuid, batch: usize, payload: usize, rng: &mut StdRng) -> Vec<ClientEvent> {
        (0..batch)
            .map(|_| {
                if !self.known.is_empty() && rng.random_bool(EDIT_SHARE) {
                    let index = rng.random_range(0..self.known.len());
                    let (id, version) = &mut self.known[index];
                    *version = bumped(version, device);
                    put_entry(self.ids, *id, version.clone(), payload, rng)
                } else {
                    let (id, version) = (self.ids.new_id(), VersionVector::single(device, 1));
                    if self.known.len() < REMEMBERED {
                        self.known.push((id, version.clone()));
                    }
                    put_entry(self.ids, id, version, payload, rng)
                }
            })
            .collect()
    }
}
