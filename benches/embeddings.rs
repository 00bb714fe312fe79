//! Fallback embeddings on this machine: the local model's pool as the server
//! runs it (`EMBEDDINGS_THREADS` threads, default all cores here), batches of
//! 1, 16 and 256 journal-like inputs: embeddings per second, p50/p99 latency,
//! and the memory the model adds to the process (RSS).
//!
//! `EMBEDDINGS_MODEL_DIR=<all-MiniLM-L6-v2> cargo bench --bench embeddings`

use std::time::{Duration, Instant};

use echolia::embedder::local::Pool;

/// Kilobytes of a `/proc/self/status` field (VmRSS, VmHWM).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Deterministic journal-like sentences of 8 to 40 words.
fn inputs(count: usize, seed: usize) -> Vec<String> {
    const WORDS: [&str; 24] = [
        "today", "walked", "garden", "rain", "coffee", "friend", "quiet", "morning", "work", "tired", "happy",
        "meeting", "read", "book", "evening", "sea", "called", "mother", "plans", "weekend", "slept", "late",
        "thinking", "about",
    ];
    (0..count)
        .map(|n| {
            let mut state = (n + seed * 7919) as u64 * 2_654_435_761 + 1;
            let length = 8 + (state % 33) as usize;
            (0..length)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    WORDS[(state >> 33) as usize % WORDS.len()]
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let Some(dir) = std::env::var_os("EMBEDDINGS_MODEL_DIR") else {
        eprintln!("skipped: set EMBEDDINGS_MODEL_DIR to all-MiniLM-L6-v2's directory");
        return;
    };
    let threads = std::env::var("EMBEDDINGS_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let before = status_kb("VmRSS:");
    let started = Instant::now();
    let pool = Pool::start(std::path::Path::new(&dir), threads, 8).unwrap();
    let loaded = status_kb("VmRSS:");
    println!(
        "model loaded in {:.2} s; RSS {} MiB before, {} MiB after (+{} MiB); {threads} threads",
        started.elapsed().as_secs_f64(),
        before / 1024,
        loaded / 1024,
        loaded.saturating_sub(before) / 1024
    );
    for (batch, runs) in [(1usize, 200usize), (16, 40), (256, 12)] {
        let mut latencies = Vec::with_capacity(runs);
        let embed = |seed: usize| {
            let texts = inputs(batch, seed);
            let place = pool.admit().unwrap();
            let started = Instant::now();
            runtime.block_on(pool.embed(place, texts)).unwrap();
            started.elapsed()
        };
        embed(0); // warm-up
        for run in 0..runs {
            latencies.push(embed(run + 1));
        }
        let total: Duration = latencies.iter().sum();
        latencies.sort();
        println!(
            "batch {batch:>3}: {:>7.1} embeddings/s, p50 {:>8.1} ms, p99 {:>8.1} ms ({runs} runs)",
            (batch * runs) as f64 / total.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
    }
    println!(
        "RSS now {} MiB, peak {} MiB (the process before the model: {} MiB)",
        status_kb("VmRSS:") / 1024,
        status_kb("VmHWM:") / 1024,
        before / 1024
    );
}
