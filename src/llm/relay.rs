//! A streamed answer, relayed event by event as the upstream sends it:
//! nothing waits for more than the rest of the event it belongs to. The
//! usage chunk the proxy asked for is dropped again unless the client asked
//! for it too; Anthropic's events are translated on the way. When the stream
//! ends — completely, cut upstream, or dropped because the client went away
//! (which drops the upstream request with it) — the call is recorded with
//! what was counted.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::{json, Value};

use super::anthropic::{StreamTranslator, Translated};
use super::call::Call;
use super::ledger::Status;
use super::sse::{self, Event};
use super::usage::{is_usage_only, Usage};
use crate::state::AppState;

pub enum Mode {
    /// Relayed as they are; the usage-only chunk is kept if the client asked for it.
    Openai {
        include_usage: bool,
    },
    Anthropic(StreamTranslator),
}

struct Relay {
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: sse::Parser,
    mode: Mode,
    /// Taken when the call is recorded; if the relay is dropped first, the call's own `Drop` records it.
    call: Option<Call>,
    idle: Duration,
    /// OpenAI: `[DONE]` or a `finish_reason` was seen.
    complete: bool,
    first_token: bool,
    ended: bool,
}

/// The event a client sees when the stream broke off (an OpenAI-style error chunk).
fn error_event(code: &str, message: &str) -> Bytes {
    let body = json!({"error": {"message": message, "type": "upstream_error", "code": code}});
    Bytes::from(format!("data: {body}\n\n"))
}

fn data_event(value: &Value) -> String {
    format!("data: {value}\n\n")
}

impl Relay {
    /// The bytes `events` become for the client; `Some(status)` once the stream must end.
    fn relay(&mut self, events: Vec<Event>, out: &mut BytesMut) -> Option<Status> {
        for event in events {
            match &mut self.mode {
                Mode::Openai { include_usage } => {
                    if event.data.trim() == "[DONE]" {
                        self.complete = true;
                        out.extend_from_slice(&event.raw);
                        continue;
                    }
                    if let Ok(chunk) = serde_json::from_str::<Value>(&event.data) {
                        if let Some(call) = self.call.as_mut() {
                            call.counter.observe_openai(&chunk);
                            call.counter.add_output(&chunk);
                        }
                        let finished = chunk["choices"]
                            .as_array()
                            .is_some_and(|choices| choices.iter().any(|c| !c["finish_reason"].is_null()));
                        self.complete |= finished;
                        if is_usage_only(&chunk) && !*include_usage {
                            continue;
                        }
                        if chunk.get("error").is_some() {
                            out.extend_from_slice(&event.raw);
                            return Some(Status::UpstreamError);
                        }
                    }
                    out.extend_from_slice(&event.raw);
                }
                Mode::Anthropic(translator) => {
                    let Ok(data) = serde_json::from_str::<Value>(&event.data) else { continue };
                    let translated = translator.event(event.name.as_deref(), &data);
                    let usage: Usage = translator.usage();
                    // The output count is final from `message_delta` on; before, an estimate may raise it.
                    let last = event.name.as_deref() == Some("message_delta");
                    if let Some(call) = self.call.as_mut() {
                        if last {
                            call.counter.set(usage);
                        } else {
                            call.counter.set_partial(usage);
                        }
                    }
                    match translated {
                        Translated::Chunks { chunks, done } => {
                            for chunk in chunks {
                                if let Some(call) = self.call.as_mut() {
                                    call.counter.add_output(&chunk);
                                }
                                out.extend_from_slice(data_event(&chunk).as_bytes());
                            }
                            if done {
                                out.extend_from_slice(b"data: [DONE]\n\n");
                                self.complete = true;
                                return Some(Status::Ok);
                            }
                        }
                        Translated::Error { kind } => {
                            let message = format!("the model provider reported an error mid-stream ({kind})");
                            out.extend_from_slice(&error_event("upstream_error", &message));
                            return Some(Status::UpstreamError);
                        }
                    }
                }
            }
        }
        None
    }

    /// The next bytes for the client, or `None` at the end (the call recorded by then).
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        loop {
            let mut out = BytesMut::new();
            let status = match tokio::time::timeout(self.idle, self.upstream.next()).await {
                Ok(Some(Ok(bytes))) => match self.parser.push(&bytes) {
                    Ok(events) => self.relay(events, &mut out),
                    Err(sse::TooLong) => {
                        out.extend_from_slice(&error_event(
                            "upstream_error",
                            "the model provider sent an invalid stream",
                        ));
                        Some(Status::UpstreamError)
                    }
                },
                Ok(None) if self.complete && self.parser.pending() == 0 => Some(Status::Ok),
                Ok(None) | Ok(Some(Err(_))) => {
                    out.extend_from_slice(&error_event("upstream_error", "the model provider's stream broke off"));
                    Some(Status::Interrupted)
                }
                Err(_) => {
                    out.extend_from_slice(&error_event("upstream_timeout", "the model provider stopped sending"));
                    Some(Status::Interrupted)
                }
            };
            if !out.is_empty() && !self.first_token {
                self.first_token = true;
                if let Some(call) = &self.call {
                    metrics::histogram!("echolia_llm_time_to_first_token_seconds", "model" => call.model_label().unwrap_or_default().to_owned())
                        .record(call.started().elapsed().as_secs_f64());
                }
            }
            if let Some(status) = status {
                self.ended = true;
                if let Some(call) = self.call.take() {
                    call.finish(status).await;
                }
                return if out.is_empty() { None } else { Some(out.freeze()) };
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
        }
    }
}

/// The client's `text/event-stream` answer over the upstream's.
pub fn respond(state: &AppState, call: Call, upstream: reqwest::Response, mode: Mode) -> Response {
    let relay = Relay {
        upstream: upstream.bytes_stream().boxed(),
        parser: sse::Parser::default(),
        mode,
        call: Some(call),
        idle: state.config.llm.upstream_timeout,
        complete: false,
        first_token: false,
        ended: false,
    };
    let metrics = state.metrics.clone();
    let stream = futures_util::stream::unfold(relay, move |mut relay| {
        // Each step records into this server's metrics, like the request did.
        metrics.scope(async move { relay.next().await.map(|bytes| (Ok::<_, std::io::Error>(bytes), relay)) })
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
