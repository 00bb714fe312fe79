//! Fallback embeddings' providers, below the area that serves them
//! (`embeddings`) so the state can own the model and its pool: `local` (a
//! sentence-embedding model in this process, feature `local-embeddings`) or
//! `openai` (an OpenAI-compatible upstream). Either way identical inputs are
//! computed once, vectors come back in input order and L2-normalised, and
//! nothing of an input is stored or logged.

pub mod batch;
#[cfg(feature = "local-embeddings")]
pub mod local;
pub mod openai;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;

use crate::config::embeddings::{EmbeddingsConfig, EmbeddingsProvider};
use crate::config::llm::Provider;
use crate::error::{ApiError, ApiResult};

enum Backend {
    /// Why there is none: the message of 503 `not_configured`.
    NotConfigured(String),
    #[cfg(feature = "local-embeddings")]
    Local { pool: local::Pool, queue: usize },
    Openai {
        upstream: Provider,
        timeout: Duration,
        retries: u32,
        /// Inputs per upstream call at most.
        batch: usize,
    },
}

pub struct Embedder {
    backend: Backend,
    model: String,
    /// The vector length; 0 until known (an `openai` upstream's, from its first answer).
    dimensions: AtomicUsize,
}

/// A request's vectors, in input order.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens charged: as computed (`local`) or as the upstream reported.
    pub tokens: Option<u64>,
}

/// A request admitted to the provider: for `local`, its place in the queue.
/// The place moves with the request's job, so it is freed when the job is
/// computed or skipped, not when the request's future is dropped.
pub struct Admission {
    #[cfg(feature = "local-embeddings")]
    place: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// L2-normalises `vector` in place (a zero vector stays zero).
pub fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in vector.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

impl Embedder {
    /// The configured provider, with its model loaded. Blocking (reads the
    /// model); an error names what is wrong and stops the server's start.
    pub fn start(config: &EmbeddingsConfig, retries: u32) -> Result<Self, String> {
        let (backend, dimensions) = match &config.provider {
            Err(message) => (Backend::NotConfigured(message.clone()), 0),
            #[cfg(feature = "local-embeddings")]
            Ok(EmbeddingsProvider::Local { model_dir }) => {
                let pool = local::Pool::start(model_dir, config.threads.get(), config.queue.get())
                    .map_err(|err| format!("EMBEDDINGS_MODEL_DIR ({}): {err}", model_dir.display()))?;
                let dimensions = pool.dimensions;
                (Backend::Local { pool, queue: config.queue.get() }, dimensions)
            }
            #[cfg(not(feature = "local-embeddings"))]
            Ok(EmbeddingsProvider::Local { .. }) => {
                return Err("EMBEDDINGS_MODEL_DIR: this build has no local embeddings".into());
            }
            Ok(EmbeddingsProvider::Openai { upstream }) => (
                Backend::Openai {
                    upstream: upstream.clone(),
                    timeout: config.timeout,
                    retries,
                    batch: config.upstream_batch.get(),
                },
                config.dimensions.unwrap_or(0),
            ),
        };
        Ok(Self { backend, model: config.model.clone(), dimensions: AtomicUsize::new(dimensions) })
    }

    /// `local` or `openai`; `None` when not configured.
    pub fn provider(&self) -> Option<&'static str> {
        match &self.backend {
            Backend::NotConfigured(_) => None,
            #[cfg(feature = "local-embeddings")]
            Backend::Local { .. } => Some("local"),
            Backend::Openai { .. } => Some("openai"),
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The vector length, when known.
    pub fn dimensions(&self) -> Option<usize> {
        Some(self.dimensions.load(Ordering::Relaxed)).filter(|&d| d > 0)
    }

    /// 503 `not_configured` naming the variables, when there is no provider.
    pub fn require_configured(&self) -> ApiResult<()> {
        match &self.backend {
            Backend::NotConfigured(message) => {
                Err(ApiError::client(StatusCode::SERVICE_UNAVAILABLE, "not_configured", message.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Admits a request, or 503 `embeddings_busy` with `Retry-After` when
    /// the local queue is full (before anything is charged).
    pub fn admit(&self) -> ApiResult<Admission> {
        self.require_configured()?;
        match &self.backend {
            #[cfg(feature = "local-embeddings")]
            Backend::Local { pool, .. } => match pool.admit() {
                Some(place) => Ok(Admission { place: Some(place) }),
                None => {
                    metrics::counter!("echolia_embeddings_busy_total").increment(1);
                    Err(ApiError::Client {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        code: "embeddings_busy",
                        message: "the server is computing as many embeddings as it takes at once; retry shortly".into(),
                        retry_after: Some(1),
                    })
                }
            },
            _ => Ok(Admission {
                #[cfg(feature = "local-embeddings")]
                place: None,
            }),
        }
    }

    /// Requests admitted to the local queue whose job is not computed or skipped yet.
    pub fn queue_depth(&self) -> usize {
        match &self.backend {
            #[cfg(feature = "local-embeddings")]
            Backend::Local { pool, queue } => pool.depth(*queue),
            _ => 0,
        }
    }

    /// The vectors of `inputs`, in order; identical inputs computed once.
    pub async fn embed(
        &self,
        // Its place in the queue, handed to the job.
        admission: Admission,
        http: &reqwest::Client,
        inputs: &[String],
    ) -> ApiResult<Embedded> {
        // Only the local provider has places; without it there is nothing to hold.
        #[cfg(not(feature = "local-embeddings"))]
        let Admission {} = admission;
        let (unique, positions) = batch::dedup(inputs);
        let provider = self.provider().unwrap_or("none");
        let (vectors, tokens) = match &self.backend {
            Backend::NotConfigured(_) => {
                self.require_configured()?;
                unreachable_configured()?
            }
            #[cfg(feature = "local-embeddings")]
            Backend::Local { pool, .. } => {
                let Some(place) = admission.place else {
                    return Err(ApiError::internal("an embeddings request was not admitted"));
                };
                let texts = unique.iter().map(|text| (*text).to_owned()).collect();
                let output = pool.embed(place, texts).await.map_err(ApiError::internal)?;
                for (_, took) in &output.batches {
                    metrics::histogram!("echolia_embeddings_batch_seconds", "provider" => provider)
                        .record(took.as_secs_f64());
                }
                (output.vectors, Some(output.tokens))
            }
            Backend::Openai { upstream, timeout, retries, batch } => {
                // In chunks of at most `batch` inputs, one call after the other; tokens only when every call counted them.
                let mut vectors = Vec::with_capacity(unique.len());
                let mut tokens = Some(0u64);
                for chunk in unique.chunks((*batch).max(1)) {
                    let started = std::time::Instant::now();
                    let (chunk_vectors, chunk_tokens) =
                        openai::embed(http, upstream, &self.model, chunk, *timeout, *retries).await?;
                    metrics::histogram!("echolia_embeddings_batch_seconds", "provider" => provider)
                        .record(started.elapsed().as_secs_f64());
                    let length = chunk_vectors.first().map_or(0, Vec::len);
                    let known = self.dimensions.load(Ordering::Relaxed);
                    if known != 0 && known != length {
                        tracing::warn!(
                            expected = known,
                            got = length,
                            "the embeddings provider changed its vector length"
                        );
                        return Err(ApiError::client(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            format!("the embeddings provider answered vectors of {length} dimensions, not {known}"),
                        ));
                    }
                    self.dimensions.store(length, Ordering::Relaxed);
                    vectors.extend(chunk_vectors);
                    tokens = tokens.zip(chunk_tokens).map(|(sum, more)| sum.saturating_add(more));
                }
                vectors.iter_mut().for_each(|vector| normalise(vector));
                (vectors, tokens)
            }
        };
        metrics::counter!("echolia_embeddings_inputs_total", "provider" => provider).increment(unique.len() as u64);
        let vectors = positions
            .into_iter()
            .map(|position| vectors.get(position).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::internal("the provider answered fewer vectors than inputs"))?;
        Ok(Embedded { vectors, tokens })
    }
}

/// `embed` is only reached once `require_configured` passed.
fn unreachable_configured() -> ApiResult<(Vec<Vec<f32>>, Option<u64>)> {
    Err(ApiError::internal("embeddings without a provider"))
}
