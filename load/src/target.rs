//! The server under test behind one interface, for the workloads Echolia and
//! Atuin both serve: users with several devices push batches of new records,
//! and a fresh device pulls everything. Echolia-only scenarios use the
//! [`Api`] inside.

use echolia::events::version::VersionVector;
use echolia::sync::wire::{PushRequest, PushResponse};
use futures_util::{stream, StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::RngCore;

use crate::atuin::{AtuinApi, Host};
use crate::cli::{Args, Ids, TargetKind};
use crate::client::{Api, Encoded, Failure, Session, Timed};
use crate::scenarios::{put_entry, setup_failure, PULL_LIMIT};
use crate::stats::Stats;

#[derive(Clone)]
pub enum Target {
    Echolia(Api),
    Atuin(AtuinApi),
}

/// A device of a user: an Echolia session, or an Atuin host.
#[derive(Debug, Clone)]
pub enum Device {
    Echolia(Session),
    Atuin(Host),
}

/// A push body ready to send, encoded before the clock starts.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: u64,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Echolia(Encoded),
    Atuin(axum::body::Bytes),
}

/// What a cold pull of everything moved.
pub struct Pulled {
    pub stats: Stats,
    pub pages: u64,
    pub rows: u64,
}

impl Target {
    pub fn new(args: &Args) -> Result<Self, String> {
        match args.target {
            TargetKind::Echolia => Api::new(&args.url, args.format).map(Target::Echolia),
            TargetKind::Atuin => AtuinApi::new(&args.url).map(Target::Atuin),
        }
    }

    pub fn base(&self) -> &str {
        match self {
            Target::Echolia(api) => api.base(),
            Target::Atuin(api) => api.base(),
        }
    }

    pub async fn health(&self) -> Result<(), Failure> {
        match self {
            Target::Echolia(api) => api.health().await,
            Target::Atuin(api) => api.health().await,
        }
    }

    /// Registers `users` users with `devices` devices each (`concurrency` users at a time);
    /// each user's devices, the registered one first.
    pub async fn set_up(&self, users: u64, devices: u64, concurrency: u64) -> Result<Vec<Vec<Device>>, String> {
        let api = match self {
            Target::Echolia(api) => {
                let users = crate::scenarios::set_up(api, users, devices, concurrency).await?;
                return Ok(users.into_iter().map(|u| u.into_iter().map(Device::Echolia).collect()).collect());
            }
            Target::Atuin(api) => api,
        };
        eprintln!("echolia-load: registering {users} Atuin users with {devices} hosts each");
        // Atuin's usernames are unique: a tag of this run keeps runs against one server apart.
        let run = rand::rng().next_u32();
        stream::iter(0..users)
            .map(|user| async move {
                let first = api.register(&format!("load-{run:08x}-{user}")).await;
                let first = first.result.map_err(|f| setup_failure("register", &f))?;
                let mut hosts = vec![Device::Atuin(first.clone())];
                hosts.extend((1..devices).map(|_| Device::Atuin(first.sibling())));
                Ok::<_, String>(hosts)
            })
            .buffer_unordered(concurrency as usize)
            .try_collect()
            .await
    }

    /// A new device of `of`'s user: paired (Echolia), or a new host id on the user's session (Atuin).
    pub async fn fresh_device(&self, of: &Device, name: &str) -> Result<Device, String> {
        match (self, of) {
            (Target::Echolia(api), Device::Echolia(session)) => {
                let paired = api.pair(session, name).await;
                paired.result.map(Device::Echolia).map_err(|f| setup_failure("pair-device", &f))
            }
            (Target::Atuin(_), Device::Atuin(host)) => Ok(Device::Atuin(host.sibling())),
            _ => Err("a device of another target".into()),
        }
    }

    /// A batch of `count` new records of `device` (Echolia: new entries, each its own aggregate),
    /// ids made as `ids` says, `payload` random bytes each.
    pub fn new_records(
        &self,
        device: &Device,
        count: u64,
        payload: usize,
        ids: Ids,
        rng: &mut StdRng,
    ) -> Result<Batch, Failure> {
        let body = match (self, device) {
            (Target::Echolia(api), Device::Echolia(session)) => {
                let version = VersionVector::single(session.device_id, 1);
                let events = (0..count).map(|_| put_entry(ids, ids.new_id(), version.clone(), payload, rng)).collect();
                Body::Echolia(api.encode(&PushRequest { events })?)
            }
            (Target::Atuin(api), Device::Atuin(host)) => Body::Atuin(api.new_records(host, count, payload, ids, rng)?),
            _ => return Err(Failure::Decode("a device of another target".into())),
        };
        Ok(Batch { events: count, body })
    }

    /// Sends a batch; Echolia's answer says what became of each event, Atuin's nothing.
    pub async fn push(&self, device: &Device, batch: &Batch) -> Timed<Option<PushResponse>> {
        match (self, device, &batch.body) {
            (Target::Echolia(api), Device::Echolia(session), Body::Echolia(body)) => {
                let Timed { result, elapsed } = api.push_encoded(session, body).await;
                Timed { result: result.map(Some), elapsed }
            }
            (Target::Atuin(api), Device::Atuin(host), Body::Atuin(body)) => {
                let Timed { result, elapsed } = api.push(host, body.clone()).await;
                Timed { result: result.map(|()| None), elapsed }
            }
            _ => {
                Timed { result: Err(Failure::Decode("a device of another target".into())), elapsed: Default::default() }
            }
        }
    }

    /// Pulls everything the user's devices pushed, as a fresh device does, page by page
    /// ([`PULL_LIMIT`] a page), each page decoded then dropped. Stops at the first failure.
    pub async fn pull_everything(&self, device: &Device) -> Pulled {
        let mut pulled = Pulled { stats: Stats::default(), pages: 0, rows: 0 };
        match (self, device) {
            (Target::Echolia(api), Device::Echolia(session)) => {
                let mut cursor = 0;
                loop {
                    let timed = api.pull(session, cursor, PULL_LIMIT).await;
                    let page = match timed.result {
                        Ok(page) => page,
                        Err(failure) => return pulled.failed("pull", &failure),
                    };
                    pulled.page(timed.elapsed, page.changes.len() as u64);
                    cursor = page.cursor;
                    if !page.has_more {
                        return pulled;
                    }
                }
            }
            (Target::Atuin(api), Device::Atuin(host)) => {
                // As Atuin's client syncs: the status, then each host's records of each tag from idx 0.
                let timed = api.status(host).await;
                let status = match timed.result {
                    Ok(status) => status,
                    Err(failure) => return pulled.failed("status", &failure),
                };
                pulled.stats.ok("status", timed.elapsed, 0);
                for (of, tags) in status.hosts {
                    for (tag, last) in tags {
                        let mut start = 0;
                        while start <= last {
                            let timed = api.next(host, of, &tag, start, PULL_LIMIT).await;
                            let records = match timed.result {
                                Ok(records) => records,
                                Err(failure) => return pulled.failed("pull", &failure),
                            };
                            pulled.page(timed.elapsed, records.len() as u64);
                            match records.last() {
                                Some(record) => start = record.idx + 1,
                                None => break,
                            }
                        }
                    }
                }
                pulled
            }
            _ => pulled.failed("pull", &Failure::Decode("a device of another target".into())),
        }
    }
}

impl Pulled {
    fn page(&mut self, elapsed: std::time::Duration, rows: u64) {
        self.stats.ok("pull", elapsed, rows);
        self.pages += 1;
        self.rows += rows;
    }

    fn failed(mut self, op: &'static str, failure: &Failure) -> Self {
        self.stats.failed(op, failure);
        self
    }
}

/// Pushes a batch and records it (its latency, and Echolia's statuses); false when it failed.
pub fn record_push(stats: &mut Stats, batch: &Batch, timed: &Timed<Option<PushResponse>>) -> bool {
    match &timed.result {
        Ok(response) => {
            stats.ok("push", timed.elapsed, batch.events);
            if let Some(response) = response {
                stats.pushed(response);
            }
            true
        }
        Err(failure) => {
            stats.failed("push", failure);
            false
        }
    }
}
