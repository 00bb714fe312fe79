//! A fake model provider for the LLM proxy's tests: OpenAI-compatible and
//! Anthropic endpoints on 127.0.0.1, replaying recorded streams chosen by
//! the model name, echoing the last user message into the answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};

#[derive(Default)]
pub struct Fake {
    /// Every request: path, body, authorization-ish headers.
    pub requests: Mutex<Vec<(String, Value, HeaderMap)>>,
    pub attempts: AtomicU32,
    /// Set when an endless stream was dropped (the proxy cancelled it).
    pub cancelled: AtomicBool,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub state: Arc<Fake>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let state = Arc::new(Fake::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .route("/v1/messages", post(anthropic))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
            tcp.set_nodelay(true).unwrap();
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeUpstream { addr, state }
    }

    /// The base URL to configure (`…/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn last_request(&self) -> Value {
        self.state.requests.lock().unwrap().last().unwrap().1.clone()
    }
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn chunk(delta: Value, finish: Value, usage: Option<Value>) -> Value {
    let mut chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    if let Some(usage) = usage {
        chunk["usage"] = usage;
    }
    chunk
}

fn usage(input: u64, output: u64) -> Value {
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

/// The recorded OpenAI-style stream of a scenario, as SSE events; `true` = then break the connection.
pub fn openai_events(scenario: &str, echo: &str, include_usage: bool) -> (Vec<String>, bool) {
    let data = |v: &Value| format!("data: {v}\n\n");
    let deltas = [
        json!({"role": "assistant", "content": ""}),
        json!({"content": "Hel"}),
        json!({"content": "lo "}),
        json!({"content": echo}),
    ];
    let mut events = Vec::new();
    match scenario {
        // OpenAI: `usage: null` in each chunk with include_usage, a usage-only chunk at the end;
        // `cut-early` breaks off before its finish and usage chunks.
        "openai" | "openai-old" | "cut-early" => {
            let with_usage = include_usage && scenario != "openai-old";
            let null = with_usage.then_some(Value::Null);
            for delta in &deltas {
                events.push(data(&chunk(delta.clone(), Value::Null, null.clone())));
            }
            if scenario == "cut-early" {
                return (events, true);
            }
            events.push(data(&chunk(json!({}), json!("stop"), null.clone())));
            if with_usage {
                let mut last = chunk(json!({}), Value::Null, Some(usage(11, 4)));
                last["choices"] = json!([]);
                events.push(data(&last));
            }
            events.push("data: [DONE]\n\n".into());
        }
        // vLLM: the usage chunk has `choices: null`.
        "vllm" => {
            for delta in &deltas {
                events.push(data(&chunk(delta.clone(), Value::Null, None)));
            }
            events.push(data(&chunk(json!({}), json!("stop"), None)));
            events.push(data(&json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": null, "usage": usage(13, 5)})));
            events.push("data: [DONE]\n\n".into());
        }
        // llama.cpp: usage in every chunk, cumulative; `\r\n` line ends.
        "llamacpp" | "cut" => {
            for (n, delta) in deltas.iter().enumerate() {
                let event = data(&chunk(delta.clone(), Value::Null, Some(usage(9, n as u64 + 1))));
                events.push(event.replace("\n\n", "\r\n\r\n"));
            }
            if scenario == "cut" {
                return (events, true);
            }
            events.push(data(&chunk(json!({}), json!("stop"), Some(usage(9, 6)))));
            events.push("data: [DONE]\n\n".into());
        }
        other => panic!("no scenario {other}"),
    }
    (events, false)
}

/// The recorded Anthropic stream; `error` = an `error` event after the first delta.
pub fn anthropic_events(echo: &str, error: bool) -> Vec<String> {
    let event = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up", "content": [], "stop_reason": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        ),
    ];
    if error {
        events.push(event(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        return events;
    }
    events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("lo {echo}")}})));
    events.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    events.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}})));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

fn sse(events: Vec<String>, then_break: bool) -> Response {
    let stream = futures_util::stream::iter(events.into_iter().map(|e| Ok::<_, std::io::Error>(Bytes::from(e))))
        .chain(futures_util::stream::iter(then_break.then(|| Err(std::io::Error::other("cut")))))
        .then(|item| async move {
            tokio::time::sleep(Duration::from_millis(if item.is_err() { 100 } else { 2 })).await;
            item
        });
    ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
}

struct OnDrop(Arc<Fake>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
    }
}

fn record(state: &Fake, path: &str, body: &Value, headers: &HeaderMap) {
    state.requests.lock().unwrap().push((path.to_owned(), body.clone(), headers.clone()));
}

/// Scenarios by model: see `openai_events`; `endless` streams until dropped;
/// `bad` answers 400; `flaky` 503 once then answers; `slow` sleeps 3 s.
async fn openai_chat(State(state): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&state, "/v1/chat/completions", &body, &headers);
    let attempt = state.attempts.fetch_add(1, Ordering::SeqCst);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let echo = last_user_text(&body);
    match model.as_str() {
        "bad" => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}})),
            )
                .into_response()
        }
        "flaky" if attempt == 0 => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        _ => {}
    }
    if body["stream"] == json!(true) {
        if model == "endless" {
            let guard = OnDrop(state.clone());
            let stream = futures_util::stream::unfold((0u64, guard), |(n, guard)| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let event = format!("data: {}\n\n", chunk(json!({"content": "x"}), Value::Null, Some(usage(3, n + 1))));
                Some((Ok::<_, std::io::Error>(Bytes::from(event)), (n + 1, guard)))
            });
            return ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response();
        }
        if let Some(count) = model.strip_prefix("firehose-").and_then(|n| n.parse::<u64>().ok()) {
            // As fast as the connection takes them: for the throughput benchmark.
            let events = (0..count).map(move |n| {
                let event =
                    format!("data: {}\n\n", chunk(json!({"content": "tok "}), Value::Null, Some(usage(3, n + 1))));
                Ok::<_, std::io::Error>(Bytes::from(event))
            });
            let done = futures_util::stream::iter([Ok(Bytes::from_static(b"data: [DONE]\n\n"))]);
            return (
                [("content-type", "text/event-stream")],
                Body::from_stream(futures_util::stream::iter(events).chain(done)),
            )
                .into_response();
        }
        let include_usage = body["stream_options"]["include_usage"] == json!(true);
        let scenario = if ["openai", "openai-old", "vllm", "llamacpp", "cut", "cut-early"].contains(&model.as_str()) {
            model.as_str()
        } else {
            "openai"
        };
        let (events, then_break) = openai_events(scenario, &echo, include_usage);
        return sse(events, then_break);
    }
    Json(json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Hello {echo}")}, "finish_reason": "stop"}],
        "usage": usage(11, 7),
    }))
    .into_response()
}

async fn embeddings(State(state): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&state, "/v1/embeddings", &body, &headers);
    Json(json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "model": "up", "usage": {"prompt_tokens": 6, "total_tokens": 6}})).into_response()
}

async fn models(State(state): State<Arc<Fake>>) -> Json<Value> {
    state.requests.lock().unwrap().push(("/v1/models".into(), Value::Null, HeaderMap::new()));
    Json(json!({"object": "list", "data": [{"id": "up-1", "object": "model", "created": 0, "owned_by": "x"}]}))
}

async fn anthropic(State(state): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&state, "/v1/messages", &body, &headers);
    let echo = last_user_text(&body);
    let error = body["model"] == "claude-error";
    if body["stream"] == json!(true) {
        return sse(anthropic_events(&echo, error), false);
    }
    Json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
        "content": [{"type": "text", "text": format!("Hello {echo}")}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 20, "output_tokens": 8},
    }))
    .into_response()
}
