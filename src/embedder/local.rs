//! The `local` provider: a BERT sentence-embedding model (all-MiniLM-L6-v2 by
//! default) run in this process on candle's CPU backend, with mean pooling
//! and L2 normalisation, as sentence-transformers computes it.
//!
//! Inference never runs on the async workers: one dispatcher thread takes
//! requests from a queue of `EMBEDDINGS_QUEUE` places and computes each on a
//! rayon pool of `EMBEDDINGS_THREADS` threads (candle's matrix products run
//! on the current rayon pool), so however many requests come, embeddings
//! use at most those threads and sync keeps the rest of the CPU.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::batch;

/// Sequences per forward pass at most.
const MAX_BATCH: usize = 32;
/// Padded tokens per forward pass at most: bounds the attention scores'
/// memory (batch × heads × length² floats).
const TOKEN_BUDGET: usize = 4096;

/// Tokens an input is truncated to when the model directory has no
/// `sentence_bert_config.json`: all-MiniLM-L6-v2's `max_seq_length`, as
/// sentence-transformers truncates it (not the 512 positions BERT has).
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// The truncation length: `sentence_bert_config.json`'s `max_seq_length`
/// (the default when the file is absent), at most the model's positions.
fn max_tokens(sentence_bert_config: Option<&[u8]>, positions: usize) -> Result<usize, String> {
    let length = match sentence_bert_config {
        None => DEFAULT_MAX_SEQ_LENGTH,
        Some(bytes) => serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|value| value["max_seq_length"].as_u64())
            .and_then(|length| usize::try_from(length).ok())
            .ok_or("sentence_bert_config.json has no max_seq_length")?,
    };
    Ok(length.min(positions))
}

/// A loaded model and its tokenizer.
pub struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    pad_id: u32,
    pub dimensions: usize,
    pub max_tokens: usize,
}

/// What one request's inputs became.
pub struct Output {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens computed (after truncation, without padding).
    pub tokens: u64,
    /// Inputs and time of each forward pass.
    pub batches: Vec<(usize, Duration)>,
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    std::fs::read(dir.join(file)).map_err(|err| format!("cannot read {}: {err}", dir.join(file).display()))
}

impl Model {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from
    /// `dir`, and `sentence_bert_config.json`'s `max_seq_length` when there
    /// (else [`DEFAULT_MAX_SEQ_LENGTH`]).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let config: Config = serde_json::from_slice(&read(dir, "config.json")?)
            .map_err(|err| format!("config.json is not a BERT configuration: {err}"))?;
        let mut tokenizer = Tokenizer::from_bytes(read(dir, "tokenizer.json")?)
            .map_err(|err| format!("tokenizer.json cannot be loaded: {err}"))?;
        let sentence_bert = match std::fs::read(dir.join("sentence_bert_config.json")) {
            Ok(bytes) => Some(bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(format!("cannot read sentence_bert_config.json: {err}")),
        };
        let max_tokens = max_tokens(sentence_bert.as_deref(), config.max_position_embeddings)?;
        if max_tokens < 2 {
            return Err("the model's maximum sequence length is below 2 tokens".into());
        }
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..TruncationParams::default() }))
            .map_err(|err| format!("tokenizer.json: {err}"))?;
        let weights = read(dir, "model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|err| format!("model.safetensors cannot be read: {err}"))?;
        let bert =
            BertModel::load(vb, &config).map_err(|err| format!("model.safetensors does not fit config.json: {err}"))?;
        let pad_id = u32::try_from(config.pad_token_id).map_err(|_| "config.json: pad_token_id is too large")?;
        Ok(Self { bert, tokenizer, pad_id, dimensions: config.hidden_size, max_tokens })
    }

    /// The normalised mean-pooled embedding of each text, in order; stops
    /// between forward passes once `cancelled` says no one awaits the answer.
    pub fn embed(&self, texts: &[&str], cancelled: &(dyn Fn() -> bool + Sync)) -> Result<Output, String> {
        let mut ids: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
        for text in texts {
            // The tokenizer's errors never quote the text.
            let encoding = self.tokenizer.encode(*text, true).map_err(|err| format!("tokenizer: {err}"))?;
            ids.push(encoding.get_ids().to_vec());
        }
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let tokens = lengths.iter().map(|&length| length as u64).sum();
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut batches = Vec::new();
        for group in batch::batches(&lengths, MAX_BATCH, TOKEN_BUDGET) {
            if cancelled() {
                return Err(CANCELLED.into());
            }
            let started = Instant::now();
            let rows: Vec<&[u32]> = group.iter().map(|&index| ids[index].as_slice()).collect();
            let pooled = self.forward(&rows).map_err(|err| format!("inference: {err}"))?;
            for (index, vector) in group.iter().zip(pooled) {
                vectors[*index] = vector;
            }
            batches.push((group.len(), started.elapsed()));
        }
        Ok(Output { vectors, tokens, batches })
    }

    /// One forward pass over sequences padded to the longest.
    fn forward(&self, rows: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let longest = rows.iter().map(|row| row.len()).max().unwrap_or(0).max(1);
        let mut input = Vec::with_capacity(rows.len() * longest);
        let mut mask = Vec::with_capacity(rows.len() * longest);
        for row in rows {
            input.extend_from_slice(row);
            input.extend(std::iter::repeat_n(self.pad_id, longest - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - row.len()));
        }
        let device = &self.bert.device;
        let input = Tensor::from_vec(input, (rows.len(), longest), device)?;
        let mask = Tensor::from_vec(mask, (rows.len(), longest), device)?;
        let token_types = input.zeros_like()?;
        let hidden = self.bert.forward(&input, &token_types, Some(&mask))?;
        // Mean over the real tokens, then unit length.
        let mask = mask.to_dtype(DType::F32)?;
        let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        let mean = summed.broadcast_div(&mask.sum_keepdim(1)?.clamp(1f32, f32::MAX)?)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}

/// Why a job stopped early: its request was dropped.
const CANCELLED: &str = "the request went away";

/// A request's work, holding its place in the queue until it is computed or skipped.
struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Output, String>>,
    _place: OwnedSemaphorePermit,
}

/// Computes texts (a model's `embed`), given whether its request is gone.
type Compute = Box<dyn FnMut(&[&str], &(dyn Fn() -> bool + Sync)) -> Result<Output, String> + Send>;

/// The queue in front of the model.
pub struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
    /// One permit per place in the queue (computing or waiting).
    places: Arc<Semaphore>,
    pub dimensions: usize,
}

impl Pool {
    /// Loads the model and starts its thread and pool. Blocking.
    pub fn start(dir: &Path, threads: usize, queue: usize) -> Result<Self, String> {
        let model = Model::load(dir)?;
        let dimensions = model.dimensions;
        let compute = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|n| format!("embeddings-{n}"))
            .build()
            .map_err(|err| format!("cannot start the embeddings threads: {err}"))?;
        let compute: Compute = Box::new(move |texts, cancelled| compute.install(|| model.embed(texts, cancelled)));
        Self::with_compute(compute, dimensions, queue)
    }

    /// The queue and its dispatcher thread in front of `compute`.
    fn with_compute(mut compute: Compute, dimensions: usize, queue: usize) -> Result<Self, String> {
        let (jobs, queued) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("embeddings".into())
            .spawn(move || {
                // Ends when the pool (the sender) is dropped; each job's place is freed as it is dropped here.
                while let Ok(job) = queued.recv() {
                    if job.reply.is_closed() {
                        continue; // the client went away while waiting
                    }
                    let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
                    let cancelled = || job.reply.is_closed();
                    let outcome =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compute(&texts, &cancelled)))
                            .unwrap_or_else(|_| Err("the model panicked".into()));
                    let _ = job.reply.send(outcome);
                }
            })
            .map_err(|err| format!("cannot start the embeddings thread: {err}"))?;
        Ok(Self { jobs, places: Arc::new(Semaphore::new(queue)), dimensions })
    }

    /// A place in the queue, or `None` when it is full.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.places.clone().try_acquire_owned().ok()
    }

    /// Jobs admitted and not computed or skipped yet.
    pub fn depth(&self, capacity: usize) -> usize {
        capacity.saturating_sub(self.places.available_permits())
    }

    /// Computes `texts` in the `place` taken by [`Pool::admit`], which the job
    /// keeps until it is computed (or skipped, its request dropped).
    pub async fn embed(&self, place: OwnedSemaphorePermit, texts: Vec<String>) -> Result<Output, String> {
        let (reply, answer) = oneshot::channel();
        let job = Job { texts, reply, _place: place };
        self.jobs.send(job).map_err(|_| "the embeddings thread stopped".to_owned())?;
        answer.await.map_err(|_| "the embeddings thread stopped".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;

    /// A pool whose computation blocks until `go` receives, counting passes.
    fn blocked_pool(queue: usize) -> (Pool, mpsc::Sender<()>, Arc<AtomicUsize>) {
        let (go, wait) = mpsc::channel::<()>();
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = passes.clone();
        let compute: Compute = Box::new(move |texts, cancelled| {
            // Two "forward passes", each waiting for the test's go-ahead.
            for _ in 0..2 {
                if cancelled() {
                    return Err(CANCELLED.into());
                }
                let _ = wait.recv();
                counted.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Output { vectors: vec![vec![1.0]; texts.len()], tokens: 1, batches: Vec::new() })
        });
        (Pool::with_compute(compute, 1, queue).unwrap(), go, passes)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out");
    }

    #[test]
    fn truncation_follows_sentence_transformers() {
        assert_eq!(max_tokens(None, 512), Ok(256), "no sentence_bert_config.json: 256, not the 512 positions");
        assert_eq!(max_tokens(None, 64), Ok(64));
        assert_eq!(max_tokens(Some(br#"{"max_seq_length": 128}"#), 512), Ok(128));
        assert_eq!(max_tokens(Some(br#"{"max_seq_length": 1024}"#), 512), Ok(512));
        assert!(max_tokens(Some(b"{}"), 512).is_err());
        assert!(max_tokens(Some(b"not json"), 512).is_err());
    }

    #[tokio::test]
    async fn places_follow_the_jobs_not_the_requests() {
        let (pool, go, passes) = blocked_pool(2);
        let pool = Arc::new(pool);
        // A request computing (blocked in its first pass), and one queued behind it.
        let first = tokio::spawn({
            let (pool, place) = (pool.clone(), pool.admit().unwrap());
            async move { pool.embed(place, vec!["a".into()]).await }
        });
        let second = tokio::spawn({
            let (pool, place) = (pool.clone(), pool.admit().unwrap());
            async move { pool.embed(place, vec!["b".into()]).await }
        });
        assert!(pool.admit().is_none(), "both places taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Both clients go away: their jobs still hold the places.
        first.abort();
        second.abort();
        let _ = (first.await, second.await);
        assert_eq!(pool.depth(2), 2, "a dropped request does not free a place its job still holds");
        // The computing job stops at its next pass; the queued one is skipped without computing.
        go.send(()).unwrap();
        until(|| pool.depth(2) == 0).await;
        assert_eq!(
            passes.load(Ordering::SeqCst),
            1,
            "the cancelled job stopped between passes, the queued one never ran"
        );
        // And an answered request frees its place.
        let place = pool.admit().unwrap();
        go.send(()).unwrap();
        go.send(()).unwrap();
        assert_eq!(pool.embed(place, vec!["c".into()]).await.unwrap().vectors.len(), 1);
        until(|| pool.depth(2) == 0).await;
    }
}
