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
    /// `dir` (and `sentence_bert_config.json`'s `max_seq_length` when there).
    pub fn load(dir: &Path) -> Result<Self, String> {
        let config: Config = serde_json::from_slice(&read(dir, "config.json")?)
            .map_err(|err| format!("config.json is not a BERT configuration: {err}"))?;
        let mut tokenizer = Tokenizer::from_bytes(read(dir, "tokenizer.json")?)
            .map_err(|err| format!("tokenizer.json cannot be loaded: {err}"))?;
        // sentence-transformers truncates to the model's `max_seq_length` (256 for all-MiniLM-L6-v2).
        let max_seq_length = std::fs::read(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|value| value["max_seq_length"].as_u64())
            .and_then(|length| usize::try_from(length).ok());
        let max_tokens = max_seq_length.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
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

    /// The normalised mean-pooled embedding of each text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Output, String> {
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

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Output, String>>,
}

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
        let (jobs, queued) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("embeddings".into())
            .spawn(move || {
                // Ends when the pool (the sender) is dropped.
                while let Ok(job) = queued.recv() {
                    if job.reply.is_closed() {
                        continue; // the client went away while waiting
                    }
                    let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        compute.install(|| model.embed(&texts))
                    }))
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

    /// Requests admitted and not answered yet.
    pub fn depth(&self, capacity: usize) -> usize {
        capacity.saturating_sub(self.places.available_permits())
    }

    /// Computes `texts`; the caller holds its place (from [`Pool::admit`]) until the answer.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Output, String> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { texts, reply }).map_err(|_| "the embeddings thread stopped".to_owned())?;
        answer.await.map_err(|_| "the embeddings thread stopped".to_owned())?
    }
}
