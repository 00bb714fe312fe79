//! The LLM proxy through the real HTTP API, against a fake provider
//! replaying recorded streams: what the client receives, chunk for chunk,
//! and what the user's database records.

use std::time::Duration;

use chrono::TimeDelta;
use futures_util::StreamExt;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use uuid::Uuid;

use echolia::clock::Clock;

use crate::helpers::{assert_error, files_under, spawn_app, spawn_app_with, Session, TestApp};
use crate::llm_fake::{anthropic_events, openai_events, FakeUpstream};

pub struct LlmApp {
    pub app: TestApp,
    pub fake: FakeUpstream,
    _models: TempDir,
}

/// A models file: a priced alias of the default provider and an Anthropic provider.
pub fn models_file(fake: &FakeUpstream) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("models.toml"),
        format!(
            r#"
[providers.claude]
kind = "anthropic"
base_url = "{url}"
api_key_env = "CLAUDE_KEY"

[[models]]
name = "priced"
upstream = "openai"
input_per_million = 1.0
output_per_million = 2.0

[[models]]
name = "claude"
provider = "claude"
upstream = "claude-up"
input_per_million = 3.0
output_per_million = 15.0

[[models]]
name = "claude-error"
provider = "claude"
"#,
            url = fake.url()
        ),
    )
    .unwrap();
    dir
}

pub async fn llm_app(extra: &[(&str, &str)]) -> LlmApp {
    let fake = FakeUpstream::start().await;
    let models = models_file(&fake);
    let (url, file) = (fake.url(), models.path().join("models.toml").display().to_string());
    let mut vars = vec![
        ("LLM_BASE_URL", url.as_str()),
        ("LLM_API_KEY", "sk-test"),
        ("LLM_MODELS_FILE", file.as_str()),
        ("CLAUDE_KEY", "ak-test"),
        ("LLM_UPSTREAM_TIMEOUT_SECS", "1"),
        ("LLM_FREE_REQUESTS_PER_MINUTE", "1000"),
    ];
    vars.extend_from_slice(extra);
    LlmApp { app: spawn_app_with(&vars).await, fake, _models: models }
}

pub async fn chat(app: &TestApp, session: &Session, body: &Value) -> Response {
    app.post("/llm/v1/chat/completions", Some(&session.access_token), body).await
}

pub fn ask(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]})
}

/// The usage rows of a user, once none is pending: (model, status, input, output, cost in nano-USD).
pub async fn rows(app: &TestApp, user: Uuid) -> Vec<(String, String, i64, i64, i64)> {
    for _ in 0..100 {
        let conn = app.open_user_db(user).await;
        let mut result = conn
            .query("SELECT model, status, input_tokens, output_tokens, cost_nano_usd FROM llm_usage ORDER BY id", ())
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(row) = result.next().await.unwrap() {
            out.push((
                row.get(0).unwrap(),
                row.get(1).unwrap(),
                row.get(2).unwrap(),
                row.get(3).unwrap(),
                row.get(4).unwrap(),
            ));
        }
        if out.iter().all(|row: &(String, String, i64, i64, i64)| row.1 != "pending") {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a usage row stayed pending");
}

async fn sse_body(resp: Response) -> String {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp.text().await.unwrap()
}

fn row(model: &str, status: &str, input: i64, output: i64, cost: i64) -> (String, String, i64, i64, i64) {
    (model.into(), status.into(), input, output, cost)
}

#[tokio::test]
async fn without_settings_the_proxy_answers_not_configured_and_the_rest_runs() {
    let app = spawn_app().await;
    let session = app.register().await;
    let message = assert_error(
        chat(&app, &session, &ask("m", "hi", false)).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
    )
    .await;
    assert!(message.contains("LLM_BASE_URL"), "{message}");
    let resp = app.get("/llm/v1/models", &session.access_token).await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
    let resp = app.get("/llm/usage", &session.access_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"usage": []}));
    assert_eq!(app.get("/sync/status", &session.access_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_plain_completion_is_forwarded_and_its_usage_and_cost_recorded() {
    let llm = llm_app(&[]).await;
    let (app, fake) = (&llm.app, &llm.fake);
    let session = app.register().await;
    let resp = chat(app, &session, &ask("priced", "hi", false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello hi");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    // The alias was resolved, the key sent, nothing added to a non-streamed request.
    let sent = fake.last_request();
    assert_eq!(sent["model"], "openai");
    assert!(sent.get("stream_options").is_none());
    let headers = fake.state.requests.lock().unwrap().last().unwrap().2.clone();
    assert_eq!(headers["authorization"], "Bearer sk-test");
    // 11 × $1/M + 7 × $2/M = 25 µ$.
    assert_eq!(rows(app, session.user_id).await, vec![row("priced", "ok", 11, 7, 25_000)]);

    // An unpriced name goes to the default provider as it is, at cost 0.
    let resp = chat(app, &session, &ask("whatever-model", "hi", false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(fake.last_request()["model"], "whatever-model");
    let usage: Value = app.get("/llm/usage", &session.access_token).await.json().await.unwrap();
    let today = app.clock.now().date_naive().to_string();
    assert_eq!(
        usage,
        json!({"usage": [
            {"day": today, "model": "priced", "requests": 1, "input_tokens": 11, "output_tokens": 7, "cost_usd": 0.000025},
            {"day": today, "model": "whatever-model", "requests": 1, "input_tokens": 11, "output_tokens": 7, "cost_usd": 0.0},
        ]})
    );
    let resp = app.get("/llm/usage?from=2020-01-01&to=2020-01-31", &session.access_token).await;
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"usage": []}));
    for query in ["from=2026-13-01", "from=2026-02-01&to=2026-01-01", "from=2020-01-01&to=2026-01-01"] {
        let resp = app.get(&format!("/llm/usage?{query}"), &session.access_token).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
}

#[tokio::test]
async fn streams_are_relayed_chunk_for_chunk_and_counted_by_the_last_usage() {
    let llm = llm_app(&[]).await;
    let (app, fake) = (&llm.app, &llm.fake);
    let session = app.register().await;

    // The client asks for usage: it gets every upstream event, as sent.
    let mut body = ask("openai", "hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let text = sse_body(chat(app, &session, &body).await).await;
    assert_eq!(text, openai_events("openai", "hi", true).0.concat());

    // It did not: the usage chunk the proxy asked for is removed again.
    let text = sse_body(chat(app, &session, &ask("openai", "hi", true)).await).await;
    assert_eq!(fake.last_request()["stream_options"]["include_usage"], true, "injected upstream");
    let expected: Vec<String> =
        openai_events("openai", "hi", true).0.into_iter().filter(|e| !e.contains("\"choices\":[]")).collect();
    assert_eq!(text, expected.concat());

    // A server ignoring include_usage: nothing counted, still complete.
    let text = sse_body(chat(app, &session, &ask("openai-old", "hi", true)).await).await;
    assert_eq!(text, openai_events("openai-old", "hi", false).0.concat());

    // vLLM's `choices: null` usage chunk (removed: not asked for), llama.cpp's cumulative usage in every chunk.
    let text = sse_body(chat(app, &session, &ask("vllm", "hi", true)).await).await;
    let vllm: Vec<String> =
        openai_events("vllm", "hi", true).0.into_iter().filter(|e| !e.contains("\"choices\":null")).collect();
    assert_eq!(text, vllm.concat());
    let text = sse_body(chat(app, &session, &ask("llamacpp", "hi", true)).await).await;
    assert_eq!(text, openai_events("llamacpp", "hi", true).0.concat());

    assert_eq!(
        rows(app, session.user_id).await,
        vec![
            row("openai", "ok", 11, 4, 0),
            row("openai", "ok", 11, 4, 0),
            // No usage reported: estimated, (9 + 2) / 4 in and 8 / 4 out, rounded up.
            row("openai-old", "ok", 3, 2, 0),
            row("vllm", "ok", 13, 5, 0),
            row("llamacpp", "ok", 9, 6, 0),
        ]
    );
}

#[tokio::test]
async fn a_stream_cut_upstream_is_recorded_as_interrupted_with_what_was_counted() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let text = sse_body(chat(app, &session, &ask("cut", "hi", true)).await).await;
    let (events, _) = openai_events("cut", "hi", true);
    let (relayed, error) = text.split_at(events.concat().len());
    assert_eq!(relayed, events.concat(), "every chunk before the cut, in order");
    assert!(error.starts_with("data: {\"error\""), "then an error event: {error}");
    assert_eq!(rows(app, session.user_id).await, vec![row("cut", "interrupted", 9, 4, 0)]);
}

/// Which rows of a user hold estimated counts, in order.
async fn estimated(app: &TestApp, user: Uuid) -> Vec<bool> {
    let conn = app.open_user_db(user).await;
    let mut result = conn.query("SELECT estimated FROM llm_usage ORDER BY id", ()).await.unwrap();
    let mut out = Vec::new();
    while let Some(row) = result.next().await.unwrap() {
        out.push(row.get::<i64>(0).unwrap() == 1);
    }
    out
}

/// A stream that breaks off before its usage chunk is charged an estimate
/// from its content (prompt bytes / 4, relayed bytes / 4), flagged, and the
/// estimate counts toward the day's token quota.
#[tokio::test]
async fn a_stream_cut_before_its_usage_is_charged_an_estimate_toward_the_quota() {
    let llm = llm_app(&[("LLM_FREE_TOKENS_PER_DAY", "5")]).await;
    let app = &llm.app;
    let session = app.register().await;
    let text = sse_body(chat(app, &session, &ask("cut-early", "hi", true)).await).await;
    assert!(text.contains("\"content\":\"lo \"") && text.contains("\"error\""), "{text}");
    // "Be brief." + "hi" = 11 bytes → 3 tokens; "" + "Hel" + "lo " + "hi" = 8 bytes → 2 tokens.
    assert_eq!(rows(app, session.user_id).await, vec![row("cut-early", "interrupted", 3, 2, 0)]);
    assert_eq!(estimated(app, session.user_id).await, [true]);
    assert_error(chat(app, &session, &ask("m", "x", false)).await, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
        .await;
    // A reported count is not flagged.
    let other = app.register().await;
    assert_eq!(chat(app, &other, &ask("m", "x", false)).await.status(), StatusCode::OK);
    assert_eq!(estimated(app, other.user_id).await, [false]);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_and_is_still_recorded() {
    let llm = llm_app(&[]).await;
    let (app, fake) = (&llm.app, &llm.fake);
    let session = app.register().await;
    let resp = chat(app, &session, &ask("endless", "hi", true)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut seen = 0;
    while seen < 3 {
        let bytes = stream.next().await.unwrap().unwrap();
        seen += String::from_utf8_lossy(&bytes).matches("data: ").count();
    }
    drop(stream);
    for _ in 0..100 {
        if fake.state.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fake.state.cancelled.load(std::sync::atomic::Ordering::SeqCst), "the upstream request was dropped");
    let recorded = rows(app, session.user_id).await;
    assert_eq!(recorded.len(), 1);
    let (model, status, input, output, _) = &recorded[0];
    assert_eq!((model.as_str(), status.as_str(), *input), ("endless", "interrupted", 3));
    assert!(*output >= 3, "the last usage seen: {output}");
}

/// The client reads up to `data: [DONE]` and closes the connection at once,
/// while the final usage write waits for the user's write lock (another
/// request of the same user writing): the row still ends with the real usage.
#[tokio::test]
async fn a_client_closing_right_after_done_still_gets_its_usage_recorded() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let resp = chat(app, &session, &ask("openai", "hi", true)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The row is open; hold the user's writer until the client has gone.
    let db = app.state.users.get(session.user_id).await.unwrap();
    let lock = db.begin_write().await.unwrap();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("data: [DONE]") {
        text.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(lock);
    assert_eq!(rows(app, session.user_id).await, vec![row("openai", "ok", 11, 4, 0)]);
}

#[tokio::test]
async fn anthropic_is_translated_both_ways_streaming_included() {
    let llm = llm_app(&[]).await;
    let (app, fake) = (&llm.app, &llm.fake);
    let session = app.register().await;

    let resp = chat(app, &session, &ask("claude", "hi", false)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello hi");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let sent = fake.last_request();
    assert_eq!(sent["model"], "claude-up");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 4096);
    let headers = fake.state.requests.lock().unwrap().last().unwrap().2.clone();
    assert_eq!(headers["x-api-key"], "ak-test");
    assert_eq!(headers["anthropic-version"], "2023-06-01");

    let mut body = ask("claude", "hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let text = sse_body(chat(app, &session, &body).await).await;
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Hello hi");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
    );
    assert_eq!(chunks.len(), 5, "role, two deltas, finish, usage: {text}");

    // An `error` event mid-stream: what came before, then an error chunk; the counts so far are recorded.
    let text = sse_body(chat(app, &session, &ask("claude-error", "hi", true)).await).await;
    assert!(text.contains("\"content\":\"Hel\""), "{text}");
    assert!(text.contains("overloaded_error") && !text.contains("[DONE]"), "{text}");
    assert_eq!(anthropic_events("hi", true).len(), 5);

    assert_eq!(
        rows(app, session.user_id).await,
        vec![
            row("claude", "ok", 20, 8, 20 * 3000 + 8 * 15000),
            row("claude", "ok", 25, 15, 25 * 3000 + 15 * 15000),
            row("claude-error", "upstream_error", 25, 1, 0),
        ]
    );
    // Anthropic has no embeddings; requests it cannot carry are refused before any is recorded.
    let resp =
        app.post("/llm/v1/embeddings", Some(&session.access_token), &json!({"model": "claude", "input": "x"})).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_parameter").await;
    let tools =
        json!({"model": "claude", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]});
    assert_error(chat(app, &session, &tools).await, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_parameter").await;
    assert_eq!(rows(app, session.user_id).await.len(), 3);
}

#[tokio::test]
async fn embeddings_and_models() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let resp =
        app.post("/llm/v1/embeddings", Some(&session.access_token), &json!({"model": "emb", "input": "hi"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["data"][0]["embedding"], json!([0.1, 0.2]));
    assert_eq!(rows(app, session.user_id).await, vec![row("emb", "ok", 6, 0, 0)]);
    let models: Value = app.get("/llm/v1/models", &session.access_token).await.json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["claude", "claude-error", "priced", "up-1"]);
    assert_eq!(models["object"], "list");
    let again: Value = app.get("/llm/v1/models", &session.access_token).await.json().await.unwrap();
    assert_eq!(again, models);
    let asked = llm.fake.state.requests.lock().unwrap().iter().filter(|(path, ..)| path == "/v1/models").count();
    assert_eq!(asked, 1, "the provider's list is reused for a minute");
}

#[tokio::test]
async fn bad_requests_are_refused_clearly_and_record_nothing() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let raw = |body: &'static str| {
        app.client
            .post(app.url("/llm/v1/chat/completions"))
            .bearer_auth(&session.access_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_error(raw("{not json").await.unwrap(), StatusCode::BAD_REQUEST, "malformed_json").await;
    let message =
        assert_error(raw("\"a secret prompt\"").await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
            .await;
    assert!(!message.contains("secret"), "{message}");
    assert_error(
        chat(app, &session, &json!({"messages": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let long = "m".repeat(201);
    assert_error(
        chat(app, &session, &ask(&long, "x", false)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let resp = app.client.post(app.url("/llm/v1/chat/completions")).json(&ask("m", "x", false)).send().await.unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "missing_token").await;
    assert!(rows(app, session.user_id).await.is_empty());
}

#[tokio::test]
async fn upstream_failures_map_to_502_504_and_the_upstream_4xx() {
    let llm = llm_app(&[]).await;
    let (app, fake) = (&llm.app, &llm.fake);
    let session = app.register().await;
    let message =
        assert_error(chat(app, &session, &ask("bad", "x", false)).await, StatusCode::BAD_REQUEST, "upstream_rejected")
            .await;
    assert_eq!(message, "max_tokens is too large");
    assert_error(chat(app, &session, &ask("slow", "x", false)).await, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        .await;
    // A 503 before any byte is retried.
    fake.state.attempts.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(chat(app, &session, &ask("flaky", "x", false)).await.status(), StatusCode::OK);
    assert_eq!(fake.state.attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    let statuses: Vec<String> = rows(app, session.user_id).await.into_iter().map(|r| r.1).collect();
    assert_eq!(statuses, ["rejected", "upstream_error", "ok"]);

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let down = spawn_app_with(&[("LLM_BASE_URL", &url), ("LLM_RETRIES", "1")]).await;
    let session = down.register().await;
    assert_error(chat(&down, &session, &ask("m", "x", false)).await, StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert_error(chat(&down, &session, &ask("m", "x", true)).await, StatusCode::BAD_GATEWAY, "upstream_error").await;
}

#[tokio::test]
async fn quotas_refuse_with_retry_after_and_reset() {
    let llm = llm_app(&[("LLM_FREE_REQUESTS_PER_MINUTE", "2"), ("LLM_FREE_TOKENS_PER_DAY", "40")]).await;
    let app = &llm.app;
    let (alice, bob) = (app.register().await, app.register().await);
    for _ in 0..2 {
        assert_eq!(chat(app, &alice, &ask("m", "x", false)).await.status(), StatusCode::OK);
    }
    let resp = chat(app, &alice, &ask("m", "x", false)).await;
    assert_eq!(resp.headers()["retry-after"], "60");
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    // Another user has a budget of their own.
    assert_eq!(chat(app, &bob, &ask("m", "x", false)).await.status(), StatusCode::OK);
    // A minute later the requests are free again; 36 tokens < 40, so one more runs and overshoots
    // (charged in full: 54), and the next is refused until midnight UTC.
    app.clock.advance(TimeDelta::seconds(61));
    assert_eq!(chat(app, &alice, &ask("m", "x", false)).await.status(), StatusCode::OK);
    let resp = chat(app, &alice, &ask("m", "x", false)).await;
    let retry: i64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let now = app.clock.now();
    let midnight = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).unwrap().and_utc();
    assert!((retry - (midnight - now).num_seconds()).abs() <= 1, "{retry}");
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    app.clock.advance(TimeDelta::seconds(retry));
    let refreshed = app.refresh(&alice.refresh_token).await;
    let alice = Session::from_json(&refreshed.json().await.unwrap());
    assert_eq!(chat(app, &alice, &ask("m", "x", false)).await.status(), StatusCode::OK);
    let scrape = app.scrape().await;
    assert!(
        scrape.contains("echolia_llm_quota_refusals_total{tier=\"free\",limit=\"requests_per_minute\"} 1"),
        "{scrape}"
    );
    assert!(scrape.contains("echolia_llm_quota_refusals_total{tier=\"free\",limit=\"tokens_per_day\"} 1"));
    // `m` is not in the models file: counted under the fixed label, never under its own name.
    assert!(scrape.contains("echolia_llm_requests_total{model=\"passthrough\",endpoint=\"chat\",status=\"ok\"} 5"));
    assert!(scrape.contains("echolia_llm_tokens_total{model=\"passthrough\"} 90"));
    assert!(!scrape.contains("model=\"m\""), "{scrape}");
}

#[tokio::test]
async fn two_servers_on_one_data_directory_share_one_budget() {
    let first = llm_app(&[("LLM_FREE_REQUESTS_PER_MINUTE", "3")]).await;
    let dir = first.app.data_dir().display().to_string();
    let second = llm_app(&[("LLM_FREE_REQUESTS_PER_MINUTE", "3"), ("DATA_DIR", &dir)]).await;
    let session = first.app.register().await;
    for app in [&first.app, &second.app, &first.app] {
        assert_eq!(chat(app, &session, &ask("m", "x", false)).await.status(), StatusCode::OK);
    }
    for app in [&second.app, &first.app] {
        assert_error(chat(app, &session, &ask("m", "x", false)).await, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
            .await;
    }
}

#[tokio::test]
async fn stream_metrics_are_scraped() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    sse_body(chat(app, &session, &ask("priced", "hi", true)).await).await;
    rows(app, session.user_id).await;
    let scrape = app.scrape().await;
    assert!(scrape.contains("echolia_llm_time_to_first_token_seconds_count{model=\"priced\"} 1"), "{scrape}");
    assert!(scrape.contains("echolia_llm_upstream_latency_seconds_count{provider=\"openai\"} 1"));
    assert!(scrape.contains("echolia_llm_tokens_total{model=\"priced\"} 15"));
    assert!(scrape.contains("echolia_llm_cost_microdollars_total{model=\"priced\"} 19"));
}

/// A whole conversation with a marker in the prompts (and so, echoed, in the
/// answers), through the shipped binary logging at `trace`: the marker is in
/// none of its log lines and in no file of its data directory.
#[tokio::test]
async fn prompts_and_completions_reach_no_log_and_no_database_file() {
    const MARKER: &str = "ZEBRA-7f3a-PROMPT-MARKER";
    let fake = FakeUpstream::start().await;
    let models = models_file(&fake);
    let (data, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_path = logs.path().join("server.log");
    let models_path = models.path().join("models.toml");
    let upstream = fake.url();
    let vars: [(&str, &std::ffi::OsStr); 4] = [
        ("LLM_BASE_URL", upstream.as_ref()),
        ("LLM_API_KEY", "sk-test".as_ref()),
        ("LLM_MODELS_FILE", models_path.as_os_str()),
        ("CLAUDE_KEY", "ak-test".as_ref()),
    ];
    let mut child = crate::helpers::spawn_binary(data.path(), port, &log_path, &vars);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::helpers::wait_healthy(&client, &base, &log_path).await;
    let resp = client
        .post(format!("{base}/auth/register"))
        .json(&crate::helpers::device_body("Mac", "desktop"))
        .send()
        .await
        .unwrap();
    let token = resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).bearer_auth(&token).json(&body).send();
    let prompt = format!("please remember {MARKER}");
    for (model, stream) in [
        ("priced", false),
        ("openai", true),
        ("llamacpp", true),
        ("claude", false),
        ("claude", true),
        ("claude-error", true),
        ("cut", true),
    ] {
        let text = post("/llm/v1/chat/completions", ask(model, &prompt, stream)).await.unwrap().text().await.unwrap();
        if model != "claude-error" && model != "cut" {
            assert!(text.contains(MARKER), "the answer echoes the marker ({model}): {text}");
        }
    }
    let resp = post("/llm/v1/embeddings", json!({"model": "emb", "input": prompt})).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = post("/llm/v1/chat/completions", json!({"model": "claude", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": MARKER}]}]})).await.unwrap();
    let refused = resp.text().await.unwrap();
    assert!(refused.contains("unsupported_parameter") && !refused.contains(MARKER), "{refused}");
    // The same conversation encrypted to the gateway.
    let keys = client.get(format!("{base}/llm/ohttp-keys")).send().await.unwrap().bytes().await.unwrap();
    let mut message = bhttp::Message::request(
        b"POST".to_vec(),
        b"https".to_vec(),
        b"x".to_vec(),
        b"/llm/v1/chat/completions".to_vec(),
    );
    message.put_header("authorization", format!("Bearer {token}"));
    message.write_content(serde_json::to_vec(&ask("priced", &prompt, false)).unwrap());
    let mut encoded = Vec::new();
    message.write_bhttp(bhttp::Mode::KnownLength, &mut encoded).unwrap();
    let (enc, response) = ohttp::ClientRequest::from_encoded_config_list(&keys).unwrap().encapsulate(&encoded).unwrap();
    let resp = client
        .post(format!("{base}/llm/ohttp"))
        .header("content-type", "message/ohttp-req")
        .body(enc)
        .send()
        .await
        .unwrap();
    let plain = response.decapsulate(&resp.bytes().await.unwrap()).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains(MARKER));

    let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    for _ in 0..400 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let logged = std::fs::read(&log_path).unwrap();
    assert!(logged.len() > 1000, "trace logging was on");
    assert!(!String::from_utf8_lossy(&logged).contains(MARKER), "the marker is in the log");
    let mut files = Vec::new();
    files_under(data.path(), &mut files);
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "db")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "the marker is in {}", file.display());
    }
}

/// The proxy's cost, measured against the fake provider on this machine:
/// time to the first byte of a streamed answer directly and through the
/// proxy (median of 50), and chunks per second relayed for a 20,000-chunk
/// stream. Prints the figures; asserts nothing about them.
/// `cargo test --release --test api llm::bench_ -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn bench_first_byte_overhead_and_stream_throughput() {
    let llm = llm_app(&[("LLM_FREE_REQUESTS_PER_MINUTE", "0"), ("LLM_FREE_TOKENS_PER_DAY", "0")]).await;
    let (app, fake) = (&llm.app, &llm.fake);
    let session = app.register().await;
    let direct = format!("{}/chat/completions", fake.url());
    let proxied = app.url("/llm/v1/chat/completions");
    async fn first_byte(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> Duration {
        let started = std::time::Instant::now();
        let resp = client.post(url).bearer_auth(token).json(body).send().await.unwrap();
        let mut stream = resp.bytes_stream();
        stream.next().await.unwrap().unwrap();
        let elapsed = started.elapsed();
        while stream.next().await.is_some() {}
        elapsed
    }
    let body = ask("openai", "hi", true);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        d.push(first_byte(&app.client, &direct, "sk-test", &body).await);
        p.push(first_byte(&app.client, &proxied, &session.access_token, &body).await);
    }
    let (d, p) = (median(d), median(p));
    println!("first byte: direct {d:?}, through the proxy {p:?}, added {:?}", p.saturating_sub(d));

    let count = 20_000u64;
    let body = ask(&format!("firehose-{count}"), "hi", true);
    for (name, url, token) in [("direct", &direct, "sk-test"), ("proxy", &proxied, session.access_token.as_str())] {
        let started = std::time::Instant::now();
        let text =
            app.client.post(url.as_str()).bearer_auth(token).json(&body).send().await.unwrap().text().await.unwrap();
        let elapsed = started.elapsed();
        let chunks = text.matches("data: ").count();
        assert!(chunks as u64 >= count, "{chunks}");
        println!("{name}: {chunks} chunks in {elapsed:?} = {:.0} chunks/s", chunks as f64 / elapsed.as_secs_f64());
    }
    rows(app, session.user_id).await;
}

/// The official OpenAI Python SDK against `/llm/v1`, unchanged: the access
/// token as its API key. Gated on `OPENAI_SDK_PYTHON`, a Python with the
/// `openai` package (`python3 -m venv v && v/bin/pip install openai`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_talks_to_the_proxy() {
    let Ok(python) = std::env::var("OPENAI_SDK_PYTHON") else {
        eprintln!("skipped: set OPENAI_SDK_PYTHON to a Python that has the `openai` package");
        return;
    };
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])
reply = client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])
assert reply.choices[0].message.content == "Hello hi", reply
assert reply.usage.prompt_tokens == 11
text, usage = "", None
for chunk in client.chat.completions.create(model="openai", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert text == "Hello hi", text
assert usage.completion_tokens == 4, usage
text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], stream=True))
assert text == "Hello hi", text
emb = client.embeddings.create(model="emb", input="hi")
assert emb.data[0].embedding == [0.1, 0.2]
ids = [m.id for m in client.models.list()]
assert "priced" in ids, ids
try:
    client.chat.completions.create(model="bad", messages=[{"role": "user", "content": "hi"}])
    raise SystemExit("expected an error")
except openai.BadRequestError as err:
    assert err.status_code == 400
print("sdk ok")
"#;
    let base = app.url("/llm/v1");
    let token = session.access_token.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg("-c").arg(script).arg(base).arg(token).output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.contains("sdk ok"), "{stdout}\n{stderr}");
    assert_eq!(rows(app, session.user_id).await.len(), 5);
}
