//! Criterion benchmarks of the pure core: version vectors, the hash chain,
//! and both codecs on the real wire types (a pull page of 1,000 rows, a push
//! batch of 100 events; 512-byte payloads).
//!
//! `cargo bench --bench core` — figures are recorded in benches/README.md.

use chrono::{SubsecRound, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use echolia::events::hash::{canonical_bytes, expected_hash, link, ChainVerifier, GENESIS};
use echolia::events::version::VersionVector;
use echolia::events::{Kind, NewEvent, Op, StoredEvent};
use echolia::http::codec::{from_msgpack, parse_msgpack};
use echolia::projection::aggregate::AggregateHead;
use echolia::sync::wire::{Change, ChangeHead, ClientEvent, HexHash, Payload, PullResponse, PushRequest};
use uuid::Uuid;

const PAYLOAD: usize = 512;
const CHAIN: usize = 10_000;
const PAGE_ROWS: usize = 1000;
const PUSH_EVENTS: usize = 100;

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|_| rand::random::<u8>()).collect()
}

/// Two vectors over the same `n` devices, each ahead on half of them.
fn concurrent_pair(n: usize) -> (VersionVector, VersionVector) {
    let devices: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let a = devices.iter().enumerate().map(|(i, d)| (*d, 10 + (i % 2) as u64)).collect();
    let b = devices.iter().enumerate().map(|(i, d)| (*d, 11 - (i % 2) as u64)).collect();
    (a, b)
}

fn version_vectors(c: &mut Criterion) {
    let mut group = c.benchmark_group("version vector");
    for n in [2, 8, 32] {
        let (a, b) = concurrent_pair(n);
        let mut ahead = a.clone();
        ahead.merge(&b);
        let ahead = bump_all(&ahead);
        group.bench_with_input(BenchmarkId::new("compare (concurrent)", n), &n, |bench, _| {
            bench.iter(|| std::hint::black_box(&a).compare(std::hint::black_box(&b)))
        });
        group.bench_with_input(BenchmarkId::new("dominates (true)", n), &n, |bench, _| {
            bench.iter(|| std::hint::black_box(&ahead).dominates(std::hint::black_box(&a)))
        });
        group.bench_with_input(BenchmarkId::new("merge", n), &n, |bench, _| {
            bench.iter_batched_ref(|| a.clone(), |mine| mine.merge(std::hint::black_box(&b)), BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn bump_all(version: &VersionVector) -> VersionVector {
    version.iter().map(|(device, counter)| (*device, counter + 1)).collect()
}

fn new_event(device: Uuid, counter: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        kind: Kind::Entry,
        aggregate_id: Uuid::new_v4(),
        parent_id: None,
        op: Op::Put,
        version: VersionVector::single(device, counter),
        payload: Some(payload()),
        client_time: Utc::now().trunc_subsecs(6),
    }
}

/// A valid chain of `n` events with 512-byte payloads, as the append path links it.
fn chain(n: usize) -> Vec<StoredEvent> {
    let device = Uuid::new_v4();
    let received_at = Utc::now().trunc_subsecs(6);
    let mut prev = GENESIS;
    (1..=n as u64)
        .map(|seq| {
            let mut stored =
                StoredEvent { seq, device_id: device, received_at, hash: [0; 32], event: new_event(device, seq) };
            stored.hash = expected_hash(&prev, &stored);
            prev = stored.hash;
            stored
        })
        .collect()
}

fn hash_chain(c: &mut Criterion) {
    let events = chain(CHAIN);
    let mut group = c.benchmark_group("hash chain");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hash one event, 512-byte payload (canonical bytes + SHA-256)", |b| {
        let stored = &events[0];
        let received = echolia::clock::rfc3339(stored.received_at);
        b.iter(|| link(&GENESIS, &canonical_bytes(stored.seq, stored.device_id, &received, &stored.event)))
    });
    group.throughput(Throughput::Elements(CHAIN as u64));
    group.bench_function("ChainVerifier over 10,000 events, 512-byte payloads", |b| {
        b.iter(|| {
            let mut verifier = ChainVerifier::default();
            for stored in &events {
                verifier.check(stored).unwrap();
            }
            verifier.head()
        })
    });
    group.finish();
}

/// A pull page: `PAGE_ROWS` entries, one head each, versions of two devices.
fn pull_page() -> PullResponse {
    let devices = [Uuid::new_v4(), Uuid::new_v4()];
    let changes = (0..PAGE_ROWS)
        .map(|i| {
            let version: VersionVector = devices.iter().map(|d| (*d, i as u64 + 1)).collect();
            let head = AggregateHead {
                seq: i as u64 + 1,
                event_id: Uuid::new_v4(),
                device_id: devices[i % 2],
                op: Op::Put,
                version: version.clone(),
                client_time: Utc::now().trunc_subsecs(6),
                parent_id: None,
            };
            Change {
                kind: Kind::Entry,
                id: Uuid::new_v4().hyphenated(),
                parent_id: None,
                deleted: false,
                conflict: false,
                version,
                heads: vec![ChangeHead::new(head, Some(payload()))],
            }
        })
        .collect();
    PullResponse { changes, cursor: PAGE_ROWS as u64, has_more: true, head_hash: HexHash([0xab; 32]) }
}

fn push_batch() -> PushRequest {
    let device = Uuid::new_v4();
    let events = (0..PUSH_EVENTS)
        .map(|i| ClientEvent {
            event_id: Uuid::new_v4(),
            kind: Kind::Entry,
            aggregate_id: Uuid::new_v4(),
            parent_id: None,
            op: Op::Put,
            version: VersionVector::single(device, i as u64 + 1),
            payload: Some(Payload(payload())),
            client_time: Utc::now().trunc_subsecs(6),
        })
        .collect();
    PushRequest { events }
}

/// Encoding the typed response (the server writes the same bytes from the
/// views' stored text, `sync::page`) and decoding as a client of this crate
/// reads it.
fn pull_codecs(c: &mut Criterion) {
    let page = pull_page();
    let json = serde_json::to_vec(&page).unwrap();
    let msgpack = rmp_serde::to_vec_named(&page).unwrap();
    eprintln!("pull page of {PAGE_ROWS} rows: JSON {} bytes, MessagePack {} bytes", json.len(), msgpack.len());
    let mut group = c.benchmark_group("codec: pull page of 1,000 rows");
    group.throughput(Throughput::Elements(PAGE_ROWS as u64));
    group.bench_function("encode JSON", |b| b.iter(|| serde_json::to_vec(&page).unwrap()));
    group.bench_function("decode JSON", |b| b.iter(|| serde_json::from_slice::<PullResponse>(&json).unwrap()));
    group.bench_function("encode MessagePack", |b| b.iter(|| rmp_serde::to_vec_named(&page).unwrap()));
    group.bench_function("decode MessagePack", |b| b.iter(|| from_msgpack::<PullResponse>(&msgpack).unwrap()));
    group.finish();
}

/// Encoding as a client sends it and decoding through the server's own
/// body parsers (with their error paths).
fn push_codecs(c: &mut Criterion) {
    let batch = push_batch();
    let json = serde_json::to_vec(&batch).unwrap();
    let msgpack = rmp_serde::to_vec_named(&batch).unwrap();
    eprintln!("push batch of {PUSH_EVENTS} events: JSON {} bytes, MessagePack {} bytes", json.len(), msgpack.len());
    let mut group = c.benchmark_group("codec: push batch of 100 events");
    group.throughput(Throughput::Elements(PUSH_EVENTS as u64));
    group.bench_function("encode JSON", |b| b.iter(|| serde_json::to_vec(&batch).unwrap()));
    group.bench_function("decode JSON", |b| {
        b.iter(|| echolia::http::json::parse::<PushRequest>(&json).unwrap_or_else(|_| panic!("decodes")))
    });
    group.bench_function("encode MessagePack", |b| b.iter(|| rmp_serde::to_vec_named(&batch).unwrap()));
    group.bench_function("decode MessagePack", |b| {
        b.iter(|| parse_msgpack::<PushRequest>(&msgpack).unwrap_or_else(|_| panic!("decodes")))
    });
    group.finish();
}

criterion_group!(benches, version_vectors, hash_chain, pull_codecs, push_codecs);
criterion_main!(benches);
