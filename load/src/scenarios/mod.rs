//! The scenarios, and what they share: setting up users and devices through
//! the API, building events, pulling since a cursor.

mod cold_pull;
mod conflicts;
mod long_poll;
mod open_loop;
mod register;
mod single_user;
mod steady;

use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use echolia::events::version::VersionVector;
use echolia::events::{Kind, Op};
use echolia::sync::wire::{Change, ClientEvent, Payload, PushRequest};
use futures_util::{stream, StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::RngCore;
use uuid::Uuid;

use crate::cli::{Args, Ids, Scenario};
use crate::client::{Api, Failure, Session};
use crate::report::Report;
use crate::stats::{Budget, Stats};
use crate::target::Target;

/// Changes a pull asks for (the server's maximum).
pub const PULL_LIMIT: u64 = 1000;
/// Pause after a failed request, so a failing server is not hammered in a loop.
pub const BACKOFF: Duration = Duration::from_millis(100);

pub const RATE_LIMIT_HINT: &str = "registrations were rate limited (429): start the server with a \
     REGISTER_RATE_LIMIT (registrations per client IP per minute) above --users, e.g. REGISTER_RATE_LIMIT=1000000";

/// Runs the chosen scenario to its report; Err when it could not even start.
pub async fn run(args: &Args, target: &Target, duration: Duration) -> Result<Report, String> {
    match (args.scenario, target) {
        (Scenario::Steady, _) if args.open_loop => open_loop::run(args, target, duration).await,
        (Scenario::Steady, _) => steady::run(args, target, duration).await,
        (Scenario::SingleUser, _) => single_user::run(args, target, duration).await,
        (Scenario::ColdPull, _) => cold_pull::run(args, target).await,
        (Scenario::Conflicts, Target::Echolia(api)) => conflicts::run(args, api, duration).await,
        (Scenario::Register, Target::Echolia(api)) => register::run(args, api, duration).await,
        (Scenario::LongPoll, Target::Echolia(api)) => long_poll::run(args, api, duration).await,
        (scenario, Target::Atuin(_)) => Err(format!("`{}` does not run against Atuin", scenario.name())),
    }
}

/// Registers `users` users and pairs `devices - 1` more devices to each,
/// `concurrency` requests at a time. Returns each user's devices, the
/// registered one first.
pub async fn set_up_users(api: &Api, args: &Args) -> Result<Vec<Vec<Session>>, String> {
    set_up(api, args.users, args.devices, args.concurrency).await
}

/// [`set_up_users`] with its counts given.
pub async fn set_up(api: &Api, users: u64, devices: u64, concurrency: u64) -> Result<Vec<Vec<Session>>, String> {
    eprintln!("echolia-load: registering {users} users with {devices} devices each");
    stream::iter(0..users)
        .map(|user| set_up_user(api, user, devices))
        .buffer_unordered(concurrency as usize)
        .try_collect()
        .await
}

async fn set_up_user(api: &Api, user: u64, devices: u64) -> Result<Vec<Session>, String> {
    let first = api.register(&format!("load-{user}-0")).await.result.map_err(|f| setup_failure("register", &f))?;
    let mut sessions = vec![first];
    for device in 1..devices {
        let paired = api.pair(&sessions[0], &format!("load-{user}-{device}")).await;
        sessions.push(paired.result.map_err(|f| setup_failure("pair-device", &f))?);
    }
    Ok(sessions)
}

pub fn setup_failure(what: &str, failure: &Failure) -> String {
    if failure.is_rate_limited() {
        return format!("setup failed: {RATE_LIMIT_HINT}");
    }
    format!("setup failed: {what}: {failure}")
}

/// Runs one worker per item, each with its own stats, and merges them.
pub async fn run_workers<T, F, Fut>(items: Vec<T>, worker: F) -> Stats
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let handles: Vec<_> = items.into_iter().map(|item| tokio::spawn(worker(item))).collect();
    let mut stats = Stats::default();
    for handle in handles {
        match handle.await {
            Ok(theirs) => stats.merge(theirs),
            Err(err) => eprintln!("echolia-load: a worker failed: {err}"),
        }
    }
    stats
}

/// The report of a timed phase.
pub fn report(args: &Args, setup: Duration, started: Instant, stats: Stats) -> Report {
    Report::new(args, setup, started.elapsed(), stats)
}

/// Pulls from `cursor` until `has_more` is false, one budgeted request per
/// page, handing each change to `seen`. Stops early when the budget runs
/// out or a request fails.
pub async fn pull_since(
    api: &Api,
    device: &Session,
    cursor: &mut u64,
    budget: &Budget,
    stats: &mut Stats,
    mut seen: impl FnMut(&Change),
) {
    loop {
        if !budget.take() {
            return;
        }
        let timed = api.pull(device, *cursor, PULL_LIMIT).await;
        let page = match timed.result {
            Ok(page) => page,
            Err(failure) => {
                stats.failed("pull", &failure);
                tokio::time::sleep(BACKOFF).await;
                return;
            }
        };
        stats.ok("pull", timed.elapsed, page.changes.len() as u64);
        page.changes.iter().for_each(&mut seen);
        *cursor = page.cursor;
        if !page.has_more {
            return;
        }
    }
}

/// Pushes a batch and records it; false when it failed (after a short pause).
pub async fn push(api: &Api, device: &Session, batch: &PushRequest, stats: &mut Stats) -> bool {
    let count = batch.events.len() as u64;
    let timed = api.push(device, batch).await;
    match timed.result {
        Ok(response) => {
            stats.ok("push", timed.elapsed, count);
            stats.pushed(&response);
            true
        }
        Err(failure) => {
            stats.failed("push", &failure);
            tokio::time::sleep(BACKOFF).await;
            false
        }
    }
}

/// A `put` of an entry with `payload` random bytes, with a new event id made as `ids` says.
pub fn put_entry(
    ids: Ids,
    aggregate_id: Uuid,
    version: VersionVector,
    payload: usize,
    rng: &mut StdRng,
) -> ClientEvent {
    let mut bytes = vec![0; payload];
    rng.fill_bytes(&mut bytes);
    ClientEvent {
        event_id: ids.new_id(),
        kind: Kind::Entry,
        aggregate_id,
        parent_id: None,
        op: Op::Put,
        version,
        payload: Some(Payload(bytes)),
        // The log keeps microseconds.
        client_time: Utc::now().trunc_subsecs(6),
    }
}

/// `version` with `device`'s counter raised by one: an edit by `device` of
/// what `version` describes, which dominates it.
pub fn bumped(version: &VersionVector, device: Uuid) -> VersionVector {
    let mut next = version.clone();
    next.merge(&VersionVector::single(device, version.get(&device) + 1));
    next
}
