//! `conflicts`: the devices of each user edit the same few aggregates at
//! once, each from what it last pulled, so edits cross and the server
//! records conflicts. Some events carry an older vector of the device
//! (stale), and some batches resend an event of the previous one (duplicate).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use echolia::events::version::VersionVector;
use echolia::sync::wire::{ClientEvent, PushRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{bumped, pull_since, push, put_entry, report, run_workers, set_up_users};
use crate::cli::{Args, Ids};
use crate::client::{Api, Session};
use crate::cpu::CpuProbe;
use crate::report::Report;
use crate::stats::{Budget, Stats};

/// The share of events sent with the device's previous vector of the aggregate.
const STALE_SHARE: f64 = 0.1;
/// The share of batches that resend an event of the previous batch.
const RETRY_SHARE: f64 = 0.05;

pub async fn run(args: &Args, api: &Api, duration: Duration) -> Result<Report, String> {
    let setup = Instant::now();
    let users = set_up_users(api, args).await?;
    let setup = setup.elapsed();

    let mut devices = Vec::new();
    for sessions in users {
        let hot: Arc<Vec<Uuid>> = Arc::new((0..args.hot).map(|_| Uuid::new_v4()).collect());
        devices.extend(sessions.into_iter().map(|session| (session, hot.clone())));
    }
    let budget = Arc::new(Budget::new(duration, args.max_requests));
    let cpu = CpuProbe::start(args.server_pid)?;
    let started = Instant::now();
    let (batch, payload) = (args.batch as usize, args.payload as usize);
    let stats = run_workers(devices, |(device, hot)| {
        let (api, budget) = (api.clone(), budget.clone());
        let editor =
            Editor { device: device.device_id, ids: args.ids, hot, known: HashMap::new(), older: HashMap::new() };
        async move { device_loop(api, device, editor, budget, batch, payload).await }
    })
    .await;
    let mut report = report(args, setup, started, stats);
    let pushed = report.operations.get("push").map_or(0, |op| op.items);
    report.server_cpu = cpu.and_then(|cpu| cpu.finish(pushed));
    Ok(report)
}

async fn device_loop(
    api: Api,
    device: Session,
    mut editor: Editor,
    budget: Arc<Budget>,
    batch: usize,
    payload: usize,
) -> Stats {
    let mut stats = Stats::default();
    let mut rng = StdRng::from_os_rng();
    let mut cursor = 0;
    let mut previous: Vec<ClientEvent> = Vec::new();
    while budget.take() {
        let mut events = editor.next_batch(batch, payload, &mut rng);
        if !previous.is_empty() && rng.random_bool(RETRY_SHARE) {
            // In place of the batch's last event, so a batch never grows past `--batch`.
            let resent = previous[rng.random_range(0..previous.len())].clone();
            match events.last_mut() {
                Some(last) => *last = resent,
                None => events.push(resent),
            }
        }
        let batch = PushRequest { events };
        if push(&api, &device, &batch, &mut stats).await {
            previous = batch.events;
            pull_since(&api, &device, &mut cursor, &budget, &mut stats, |change| editor.learn(change)).await;
        }
    }
    stats
}

/// One device's view of its user's hot aggregates.
struct Editor {
    device: Uuid,
    ids: Ids,
    hot: Arc<Vec<Uuid>>,
    /// The merged version of each aggregate as last pulled or edited here.
    known: HashMap<Uuid, VersionVector>,
    /// The version before this device's latest edit, when it holds the device.
    older: HashMap<Uuid, VersionVector>,
}

impl Editor {
    fn next_batch(&mut self, batch: usize, payload: usize, rng: &mut StdRng) -> Vec<ClientEvent> {
        (0..batch)
            .map(|_| {
                let id = self.hot[rng.random_range(0..self.hot.len())];
                match self.older.get(&id) {
                    // Dominated by this device's later edit: stale.
                    Some(older) if rng.random_bool(STALE_SHARE) => put_entry(self.ids, id, older.clone(), payload, rng),
                    _ => self.edit(id, payload, rng),
                }
            })
            .collect()
    }

    /// An edit from what this device knows: concurrent with whatever the
    /// other devices pushed since its last pull.
    fn edit(&mut self, id: Uuid, payload: usize, rng: &mut StdRng) -> ClientEvent {
        let current = self.known.get(&id).cloned().unwrap_or_default();
        let next = bumped(&current, self.device);
        if current.get(&self.device) > 0 {
            self.older.insert(id, current);
        }
        self.known.insert(id, next.clone());
        put_entry(self.ids, id, next, payload, rng)
    }

    fn learn(&mut self, change: &echolia::sync::wire::Change) {
        self.known.entry(*change.id.as_uuid()).or_default().merge(&change.version);
    }
}
