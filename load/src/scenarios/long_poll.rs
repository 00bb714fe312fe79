//! `long-poll`: `--users` users, each with `--devices` devices that wait in
//! `GET /sync/pull?wait=` and one more device that pushes. Once every waiter
//! has sent its long-poll and `--settle` seconds have passed, each user's
//! pusher pushes one batch, the pushes spread evenly over `--duration`
//! seconds. A waiter is woken when its long-poll answers with changes; its
//! wake latency runs from the moment its user's push was sent (so it
//! includes the push itself, fsync and all) to the last byte of the
//! long-poll's answer. With `--metrics-url`, pushes wait until the server's
//! `echolia_long_polls_waiting` counts every waiter (a waiter not yet
//! waiting would find the change at once and look fast).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use echolia::events::version::VersionVector;
use echolia::sync::wire::PushRequest;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{push, put_entry, set_up, PULL_LIMIT};
use crate::cli::Args;
use crate::client::{Api, Failure, Session};
use crate::report::Report;
use crate::stats::Stats;

/// When a user's push was sent; read by its waiters when they wake.
type SentAt = Arc<Mutex<Option<Instant>>>;

pub async fn run(args: &Args, api: &Api, duration: Duration) -> Result<Report, String> {
    let setup = Instant::now();
    let users = set_up(api, args.users, args.devices + 1, args.concurrency).await?;
    let wait = duration + Duration::from_secs_f64(args.settle) + Duration::from_secs(10);
    let wait_secs = wait.as_secs().min(echolia::sync::pull::MAX_WAIT_SECS);

    let mut waiters = Vec::new();
    let mut pushers = Vec::new();
    for mut devices in users {
        let pusher = devices.remove(0);
        let sent: SentAt = Arc::default();
        for device in devices {
            let (api, sent) = (api.clone(), sent.clone());
            waiters.push(tokio::spawn(async move { wait_for_push(&api, &device, wait_secs, &sent).await }));
        }
        pushers.push((pusher, sent));
    }
    settle(api, args, waiters.len()).await?;
    let setup = setup.elapsed();

    let started = Instant::now();
    let spacing = duration.div_f64(pushers.len().max(1) as f64);
    let mut pushes = Vec::new();
    for (i, (pusher, sent)) in pushers.into_iter().enumerate() {
        let (api, batch, payload, ids) = (api.clone(), args.batch, args.payload as usize, args.ids);
        let at = tokio::time::Instant::from_std(started + spacing.mul_f64(i as f64));
        pushes.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut rng = StdRng::from_os_rng();
            let version = VersionVector::single(pusher.device_id, 1);
            let events = (0..batch).map(|_| put_entry(ids, ids.new_id(), version.clone(), payload, &mut rng)).collect();
            let mut stats = Stats::default();
            *sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
            push(&api, &pusher, &PushRequest { events }, &mut stats).await;
            stats
        }));
    }
    let mut stats = Stats::default();
    for handle in pushes.into_iter().chain(waiters) {
        match handle.await {
            Ok(theirs) => stats.merge(theirs),
            Err(err) => eprintln!("echolia-load: a task failed: {err}"),
        }
    }
    Ok(super::report(args, setup, started, stats))
}

/// Waits `--settle` seconds, or with `--metrics-url` until the server
/// counts `waiters` long-polls waiting (failing after `--settle` seconds).
async fn settle(api: &Api, args: &Args, waiters: usize) -> Result<(), String> {
    let settle = Duration::from_secs_f64(args.settle);
    let Some(metrics) = &args.metrics_url else {
        eprintln!("echolia-load: {waiters} long-polls sent; settling for {} s", args.settle);
        tokio::time::sleep(settle).await;
        return Ok(());
    };
    let deadline = Instant::now() + settle;
    loop {
        let waiting = api.gauge(metrics, "echolia_long_polls_waiting").await.map_err(|f| format!("{metrics}: {f}"))?;
        if waiting >= waiters as f64 {
            eprintln!("echolia-load: the server counts {waiting} long-polls waiting");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("only {waiting} of {waiters} long-polls were waiting after {} s", args.settle));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One long-poll from cursor 0 (the account is empty): woken, or failed.
async fn wait_for_push(api: &Api, device: &Session, wait_secs: u64, sent: &SentAt) -> Stats {
    let mut stats = Stats::default();
    let asked = Instant::now();
    let timed = api.long_poll(device, 0, PULL_LIMIT, wait_secs).await;
    // The answer's last byte, before decoding it.
    let woke = asked + timed.elapsed;
    match timed.result {
        Ok(page) if page.changes.is_empty() => {
            stats.failed("wake", &Failure::Decode("the long-poll ended without a change".into()))
        }
        Ok(page) => match *sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Some(at) => stats.ok("wake", woke.saturating_duration_since(at), page.changes.len() as u64),
            None => stats.failed("wake", &Failure::Decode("answered before its user pushed".into())),
        },
        Err(failure) => stats.failed("wake", &failure),
    }
    stats
}
