//! The seam to the providers: one POST to an upstream, with its
//! credentials, retried with backoff only before any byte of an answer came
//! back, and its failures turned into the API's errors. Nothing of a request
//! or an answer is logged here: only statuses and kinds of failure.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::time::Instant;

use crate::config::llm::{Provider, ProviderKind};
use crate::error::ApiError;

/// The Messages API version this translation speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Largest upstream error body read (for its message).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Upstream statuses worth another attempt: overloaded or restarting.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502 | 503 | 504 | 529)
}

/// Why an upstream call failed.
#[derive(Debug)]
pub enum Failure {
    /// Refused, reset, unreachable, or its body broke off.
    Connect,
    /// No answer (or no next chunk) within `LLM_UPSTREAM_TIMEOUT_SECS`.
    Timeout,
    /// An error status, with the upstream's message when it gave one.
    Status { status: StatusCode, message: Option<String>, retry_after: Option<u64> },
}

impl Failure {
    /// The answer to the client.
    pub fn into_api_error(self) -> ApiError {
        match self {
            Self::Connect => {
                ApiError::client(StatusCode::BAD_GATEWAY, "upstream_error", "the model provider could not be reached")
            }
            Self::Timeout => ApiError::client(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the model provider did not answer in time",
            ),
            // The upstream refused our key: the client can do nothing about it.
            Self::Status { status, .. } if matches!(status.as_u16(), 401 | 403) => {
                tracing::warn!(status = status.as_u16(), "the model provider refused the proxy's credentials");
                ApiError::client(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the model provider refused the proxy's credentials",
                )
            }
            Self::Status { status, message, retry_after } if status == StatusCode::TOO_MANY_REQUESTS => {
                ApiError::Client {
                    status,
                    code: "upstream_rate_limited",
                    message: message.unwrap_or_else(|| "the model provider is rate limiting; retry later".into()),
                    retry_after: Some(retry_after.unwrap_or(1).max(1)),
                }
            }
            Self::Status { status, message, .. } if status.is_client_error() => ApiError::client(
                status,
                "upstream_rejected",
                message.unwrap_or_else(|| format!("the model provider refused the request ({status})")),
            ),
            Self::Status { status, .. } => ApiError::client(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("the model provider failed ({})", status.as_u16()),
            ),
        }
    }

    /// Whether the request reached the provider and was refused (4xx).
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::Status { status, .. } if status.is_client_error())
    }
}

/// The URL of `path` (e.g. `/chat/completions`) at a provider.
fn url(provider: &Provider, path: &str) -> String {
    format!("{}{path}", provider.base_url)
}

fn with_credentials(provider: &Provider, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let key = provider.api_key.as_ref().map(|key| String::from_utf8_lossy(key.expose_secret()).into_owned());
    match provider.kind {
        ProviderKind::Openai => match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        },
        ProviderKind::Anthropic => {
            let request = request.header("anthropic-version", ANTHROPIC_VERSION);
            // Checked at start (`config::llm`); sensitive: kept out of any debug output.
            match key.and_then(|key| reqwest::header::HeaderValue::from_str(&key).ok()) {
                Some(mut key) => {
                    key.set_sensitive(true);
                    request.header("x-api-key", key)
                }
                None => request,
            }
        }
    }
}

/// POSTs `body` (JSON) and returns the upstream's response once its head
/// arrived with a success status. Connection failures and 502/503/504/529
/// are retried `retries` times with exponential backoff (250 ms, 500 ms, …);
/// nothing is retried once an answer started.
pub async fn post(
    http: &reqwest::Client,
    provider: &Provider,
    path: &str,
    body: Bytes,
    timeout: Duration,
    retries: u32,
) -> Result<reqwest::Response, Failure> {
    let mut attempt = 0;
    loop {
        let started = Instant::now();
        let request = with_credentials(provider, http.post(url(provider, path)))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        let outcome = tokio::time::timeout(timeout, request.send()).await;
        let kind = provider.kind.as_str();
        metrics::histogram!("echolia_llm_upstream_latency_seconds", "provider" => kind)
            .record(started.elapsed().as_secs_f64());
        let failure = match outcome {
            Err(_) => return Err(gave_up(kind, Failure::Timeout, attempt)),
            Ok(Err(err)) if err.is_timeout() => return Err(gave_up(kind, Failure::Timeout, attempt)),
            Ok(Err(_)) => Failure::Connect,
            Ok(Ok(response)) if response.status().is_success() => return Ok(response),
            Ok(Ok(response)) if retryable(response.status()) && attempt < retries => {
                Failure::Status { status: response.status(), message: None, retry_after: None }
            }
            Ok(Ok(response)) => return Err(failure_of(response, timeout).await),
        };
        if attempt >= retries {
            return Err(gave_up(kind, failure, attempt));
        }
        attempt += 1;
        tracing::debug!(attempt, "retrying the model provider");
        tokio::time::sleep(Duration::from_millis(250u64 << (attempt - 1).min(6))).await;
    }
}

/// Logs what failed — never the URL, key or body — so an outage shows in
/// the log, not only in the metrics.
fn gave_up(provider: &str, failure: Failure, attempt: u32) -> Failure {
    let what = match &failure {
        Failure::Connect => "unreachable",
        Failure::Timeout => "timed out",
        Failure::Status { .. } => "failed",
    };
    tracing::warn!(provider, attempts = attempt + 1, "the model provider {what}");
    failure
}

/// GETs a JSON document (the model list), within `timeout`.
pub async fn get_json(http: &reqwest::Client, provider: &Provider, path: &str, timeout: Duration) -> Option<Value> {
    let request = with_credentials(provider, http.get(url(provider, path)));
    let response = tokio::time::timeout(timeout, request.send()).await.ok()?.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(timeout, response.bytes()).await.ok()?.ok()?;
    serde_json::from_slice(&body).ok()
}

/// Reads a whole successful answer (non-streamed), within `timeout`.
pub async fn read_body(response: reqwest::Response, timeout: Duration) -> Result<Bytes, Failure> {
    match tokio::time::timeout(timeout, response.bytes()).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(err)) if err.is_timeout() => Err(Failure::Timeout),
        Ok(Err(_)) => Err(Failure::Connect),
        Ok(Ok(body)) => Ok(body),
    }
}

/// An error answer: its status, its message (OpenAI's and Anthropic's
/// `{"error": {"message"}}`), and `Retry-After`.
async fn failure_of(response: reqwest::Response, timeout: Duration) -> Failure {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let body = match tokio::time::timeout(timeout, response.bytes()).await {
        Ok(Ok(body)) if body.len() <= MAX_ERROR_BODY => body,
        _ => Bytes::new(),
    };
    let message = serde_json::from_slice::<Value>(&body).ok().and_then(|value| {
        let message = value["error"]["message"].as_str().or_else(|| value["message"].as_str())?;
        Some(message.chars().take(1000).collect())
    });
    Failure::Status {
        status: StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        message,
        retry_after,
    }
}
