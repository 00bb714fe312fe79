//! Fallback embeddings through the HTTP API: the local provider with a tiny
//! BERT built here (random weights, a vocabulary of letters), the openai
//! provider against a fake upstream started by the test, limits, the full
//! queue, quotas, capabilities, and no input in any log or file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, device_body, spawn_app_with, TestApp};

/// Writes a small BERT model directory (random weights) to `dir`.
#[cfg(feature = "local-embeddings")]
pub fn write_tiny_model(dir: &std::path::Path) {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::bert::{BertModel, Config};

    let mut vocab = serde_json::Map::new();
    let mut words: Vec<String> =
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?"].iter().map(|s| s.to_string()).collect();
    for c in ('a'..='z').chain('0'..='9') {
        words.push(c.to_string());
        words.push(format!("##{c}"));
    }
    for (id, word) in words.iter().enumerate() {
        vocab.insert(word.clone(), json!(id));
    }
    let special = |id: usize, content: &str| json!({"id": id, "special": true, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"), special(3, "[SEP]"), special(4, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab},
    });
    let config = json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": words.len(), "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let config: Config = serde_json::from_value(config).unwrap();
    let varmap = VarMap::new();
    BertModel::load(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), &config).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let value = if name.ends_with("LayerNorm.weight") {
            Tensor::ones(var.shape(), DType::F32, &Device::Cpu)
        } else {
            Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu)
        };
        var.set(&value.unwrap()).unwrap();
    }
    varmap.save(dir.join("model.safetensors")).unwrap();
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

pub fn vectors(body: &Value) -> Vec<Vec<f64>> {
    body["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

/// A sample of a scrape, 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

async fn embed(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.post("/embeddings", Some(token), body).await
}

#[cfg(feature = "local-embeddings")]
async fn local_app(extra: &[(&str, &str)]) -> (TestApp, tempfile::TempDir) {
    let model = tempfile::tempdir().unwrap();
    write_tiny_model(model.path());
    let dir = model.path().display().to_string();
    let mut vars = vec![("EMBEDDINGS_MODEL_DIR", dir.as_str()), ("EMBEDDINGS_MODEL", "tiny-bert")];
    vars.extend_from_slice(extra);
    (spawn_app_with(&vars).await, model)
}

#[cfg(feature = "local-embeddings")]
#[tokio::test]
async fn local_vectors_keep_order_are_normalised_and_each_distinct_input_is_computed_once() {
    let (app, _model) = local_app(&[]).await;
    let session = app.register().await;
    let token = session.access_token.as_str();
    let inputs = ["the cat sat on the mat", "a dog ran far away today, quickly!", "the cat sat on the mat", "sun"];
    let resp = embed(&app, token, &json!({"inputs": inputs})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!((body["model"].as_str(), body["dimensions"].as_u64()), (Some("tiny-bert"), Some(32)));
    let batch = vectors(&body);
    assert_eq!(batch.len(), 4);
    for vector in &batch {
        assert_eq!(vector.len(), 32);
        let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
    }
    assert_eq!(batch[0], batch[2], "identical inputs, identical vectors");
    assert!(cosine(&batch[0], &batch[1]) < 0.999, "different inputs, different vectors");
    assert_eq!(sample(&app.scrape().await, "echolia_embeddings_inputs_total{provider=\"local\"}"), 3.0);
    // Each alone gives what it got in the batch (padding changes nothing, the order is kept).
    for (input, expected) in inputs.iter().zip(&batch) {
        let body: Value = embed(&app, token, &json!({"inputs": [input]})).await.json().await.unwrap();
        assert!(cosine(&vectors(&body)[0], expected) > 0.9999, "{input}");
    }
    let scrape = app.scrape().await;
    assert_eq!(sample(&scrape, "echolia_embeddings_inputs_total{provider=\"local\"}"), 7.0);
    assert!(sample(&scrape, "echolia_embeddings_batch_seconds_count{provider=\"local\"}") >= 5.0, "{scrape}");
    assert_eq!(sample(&scrape, "echolia_embeddings_queue_depth"), 0.0);
    // Charged to the user's LLM usage, under the embeddings model.
    let usage: Value = app.get("/llm/usage", token).await.json().await.unwrap();
    let rows = usage["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{usage}");
    assert_eq!((rows[0]["model"].as_str(), rows[0]["requests"].as_u64()), (Some("tiny-bert"), Some(5)));
    assert!(rows[0]["input_tokens"].as_u64().unwrap() > 20, "{usage}");
}

#[cfg(feature = "local-embeddings")]
#[tokio::test]
async fn bad_inputs_answer_422_naming_the_field_and_charge_nothing() {
    let (app, _model) = local_app(&[]).await;
    let token = app.register().await.access_token;
    let many: Vec<String> = (0..257).map(|n| format!("entry {n}")).collect();
    let long = "a".repeat(8193);
    for (body, field) in [
        (json!({"inputs": many}), "inputs:"),
        (json!({"inputs": ["fine", long]}), "inputs[1]:"),
        (json!({"inputs": "private words"}), "inputs:"),
        (json!({"inputs": []}), "inputs:"),
        (json!({"inputs": ["fine", 3]}), "inputs[1]:"),
        (json!({"input": ["fine"]}), "inputs:"),
    ] {
        let message =
            assert_error(embed(&app, &token, &body).await, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(message.starts_with(field), "{message}");
        assert!(!message.contains("private"), "{message}");
    }
    // At the limits exactly: fine.
    let most: Vec<String> = (0..256).map(|n| format!("entry {n}")).collect();
    assert_eq!(embed(&app, &token, &json!({"inputs": most})).await.status(), StatusCode::OK);
    assert_eq!(embed(&app, &token, &json!({"inputs": ["a".repeat(8192)]})).await.status(), StatusCode::OK);
    let resp = app.client.post(app.url("/embeddings")).bearer_auth(&token).body("{\"inputs\": [").send().await.unwrap();
    assert_error(resp, StatusCode::BAD_REQUEST, "malformed_json").await;
    let resp = app.client.post(app.url("/embeddings")).json(&json!({"inputs": ["a"]})).send().await.unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "missing_token").await;
    let usage: Value = app.get("/llm/usage", &token).await.json().await.unwrap();
    assert_eq!(usage["usage"][0]["requests"], 2, "only the two good requests were charged: {usage}");
    // The limits are configurable.
    let (app, _model) = local_app(&[("EMBEDDINGS_MAX_INPUTS", "2"), ("EMBEDDINGS_MAX_INPUT_CHARS", "5")]).await;
    let token = app.register().await.access_token;
    for body in [json!({"inputs": ["a", "b", "c"]}), json!({"inputs": ["abcdef"]})] {
        assert_error(embed(&app, &token, &body).await, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    // The body limit follows them (2 × 5 characters, escaped, and 64 KiB): over it, JSON 413 like every area.
    let over = json!({"inputs": ["a".repeat(70_000)]});
    assert_error(embed(&app, &token, &over).await, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
}

#[cfg(feature = "local-embeddings")]
#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_charges_nothing() {
    let (app, _model) = local_app(&[("EMBEDDINGS_QUEUE", "1")]).await;
    let token = app.register().await.access_token;
    // The test takes the one place itself, as a request being computed would.
    let held = app.state.embedder.admit().unwrap();
    assert_eq!(app.state.embedder.queue_depth(), 1);
    let resp = embed(&app, &token, &json!({"inputs": ["hello"]})).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "embeddings_busy").await;
    assert_eq!(sample(&app.scrape().await, "echolia_embeddings_busy_total"), 1.0);
    drop(held);
    assert_eq!(embed(&app, &token, &json!({"inputs": ["hello"]})).await.status(), StatusCode::OK);
    let usage: Value = app.get("/llm/usage", &token).await.json().await.unwrap();
    assert_eq!(usage["usage"][0]["requests"], 1, "{usage}");

    // Many at once with one place: each answers 200 or 503, none waits forever or fails otherwise.
    let body = json!({"inputs": (0..64).map(|n| format!("entry number {n} of a long day")).collect::<Vec<_>>()});
    let answers = futures_util::future::join_all((0..6).map(|_| embed(&app, &token, &body))).await;
    for resp in answers {
        assert!(matches!(resp.status().as_u16(), 200 | 503), "{}", resp.status());
    }
    assert_eq!(app.state.embedder.queue_depth(), 0);
}

#[cfg(feature = "local-embeddings")]
#[tokio::test]
async fn the_quota_of_the_tier_covers_embeddings() {
    let (app, _model) = local_app(&[("LLM_FREE_REQUESTS_PER_MINUTE", "1")]).await;
    let token = app.register().await.access_token;
    assert_eq!(embed(&app, &token, &json!({"inputs": ["one"]})).await.status(), StatusCode::OK);
    let resp = embed(&app, &token, &json!({"inputs": ["two"]})).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    // Counted like the proxy's refusals.
    let scrape = app.scrape().await;
    assert!(
        scrape.contains("echolia_llm_quota_refusals_total{tier=\"free\",limit=\"requests_per_minute\"} 1"),
        "{scrape}"
    );
}

#[cfg(feature = "local-embeddings")]
#[tokio::test]
async fn the_capability_follows_what_the_device_registered() {
    let (app, _model) = local_app(&[]).await;
    let mut phone = device_body("Phone", "mobile");
    phone["capabilities"] = json!({"local_embeddings": false, "ram_mb": 2048});
    let phone = app.register_body(&phone).await;
    let capability = |token: String| {
        let app = &app;
        async move { app.get("/embeddings/capability", &token).await.json::<Value>().await.unwrap() }
    };
    let body = capability(phone.access_token.clone()).await;
    assert_eq!(body, json!({"use_fallback": true, "available": true, "model": "tiny-bert", "dimensions": 32}));
    let mut desktop = device_body("Desktop", "desktop");
    desktop["capabilities"] = json!({"local_embeddings": true, "ram_mb": 16384});
    let desktop = app.register_body(&desktop).await;
    assert_eq!(capability(desktop.access_token.clone()).await["use_fallback"], false);
    // A device that runs other models only asks the server, so vectors stay comparable.
    let resp = app
        .client
        .patch(app.url("/auth/devices/current"))
        .bearer_auth(&desktop.access_token)
        .json(&json!({"capabilities": {"local_embeddings": true, "embedding_models": ["other-model"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(capability(desktop.access_token.clone()).await["use_fallback"], true);
    let resp = app
        .client
        .patch(app.url("/auth/devices/current"))
        .bearer_auth(&desktop.access_token)
        .json(&json!({"capabilities": {"local_embeddings": true, "embedding_models": ["tiny-bert"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(capability(desktop.access_token).await["use_fallback"], false);
}

#[tokio::test]
async fn without_a_provider_embeddings_answer_not_configured_naming_the_variables() {
    let app = spawn_app_with(&[]).await;
    let token = app.register().await.access_token;
    let message = assert_error(
        embed(&app, &token, &json!({"inputs": ["a"]})).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_configured",
    )
    .await;
    for variable in ["EMBEDDINGS_MODEL_DIR", "EMBEDDINGS_BASE_URL", "EMBEDDINGS_MODEL"] {
        assert!(message.contains(variable), "{message}");
    }
    let body: Value = app.get("/embeddings/capability", &token).await.json().await.unwrap();
    assert_eq!(body, json!({"use_fallback": false, "available": false, "model": null, "dimensions": null}));
}

/// An OpenAI-compatible `/v1/embeddings`: answers out of order (by `index`)
/// and unnormalised; `fail` answers 500, `slow` takes 3 s.
struct FakeUpstream {
    addr: std::net::SocketAddr,
    inputs_seen: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    /// The most inputs one call carried.
    largest_call: Arc<AtomicUsize>,
}

impl FakeUpstream {
    async fn start() -> Self {
        use axum::routing::post;
        let inputs_seen = Arc::new(AtomicUsize::new(0));
        let (calls, largest_call) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let seen = inputs_seen.clone();
        let (counted, largest) = (calls.clone(), largest_call.clone());
        let app = axum::Router::new().route(
            "/v1/embeddings",
            post(move |axum::Json(body): axum::Json<Value>| {
                let (seen, counted, largest) = (seen.clone(), counted.clone(), largest.clone());
                async move {
                    let inputs: Vec<String> =
                        body["input"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
                    seen.fetch_add(inputs.len(), Ordering::SeqCst);
                    counted.fetch_add(1, Ordering::SeqCst);
                    largest.fetch_max(inputs.len(), Ordering::SeqCst);
                    match body["model"].as_str().unwrap() {
                        "fail" => {
                            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "boom"}})))
                        }
                        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
                        _ => {}
                    }
                    let data: Vec<Value> = inputs
                        .iter()
                        .enumerate()
                        .rev()
                        .map(|(index, input)| json!({"object": "embedding", "index": index, "embedding": [input.len() as f64, 3.0, 4.0]}))
                        .collect();
                    (StatusCode::OK, axum::Json(json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 7, "total_tokens": 7}})))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeUpstream { addr, inputs_seen, calls, largest_call }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

#[tokio::test]
async fn the_openai_provider_sends_a_request_in_chunks_of_the_upstream_batch() {
    let fake = FakeUpstream::start().await;
    let url = fake.url();
    let app = spawn_app_with(&[
        ("EMBEDDINGS_BASE_URL", &url),
        ("EMBEDDINGS_MODEL", "emb"),
        ("EMBEDDINGS_UPSTREAM_BATCH", "2"),
    ])
    .await;
    let token = app.register().await.access_token;
    // Five distinct inputs (and a duplicate) whose lengths 1..=5 come back as each vector's first component.
    let inputs = ["a", "bb", "ccc", "bb", "dddd", "eeeee"];
    let resp = embed(&app, &token, &json!({"inputs": inputs})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = vectors(&resp.json().await.unwrap());
    assert_eq!(got.len(), 6);
    for (vector, input) in got.iter().zip(inputs) {
        let n = input.len() as f64;
        let norm = (n * n + 25.0).sqrt();
        assert!(cosine(vector, &[n / norm, 3.0 / norm, 4.0 / norm]) > 0.99999, "{input}: {vector:?}");
    }
    assert_eq!(fake.inputs_seen.load(Ordering::SeqCst), 5);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3, "5 inputs in calls of at most 2");
    assert_eq!(fake.largest_call.load(Ordering::SeqCst), 2);
    let usage: Value = app.get("/llm/usage", &token).await.json().await.unwrap();
    assert_eq!(usage["usage"][0]["input_tokens"], 21, "each call's count, summed: {usage}");
    assert_eq!(sample(&app.scrape().await, "echolia_embeddings_batch_seconds_count{provider=\"openai\"}"), 3.0);
}

#[tokio::test]
async fn the_openai_provider_keeps_order_normalises_and_maps_failures() {
    let fake = FakeUpstream::start().await;
    let url = fake.url();
    let app =
        spawn_app_with(&[("EMBEDDINGS_BASE_URL", &url), ("EMBEDDINGS_MODEL", "emb"), ("EMBEDDINGS_API_KEY", "sk-e")])
            .await;
    let mut phone = device_body("Phone", "mobile");
    phone.as_object_mut().unwrap().remove("capabilities");
    let token = app.register_body(&phone).await.access_token;
    let body: Value = app.get("/embeddings/capability", &token).await.json().await.unwrap();
    assert_eq!(body, json!({"use_fallback": true, "available": true, "model": "emb", "dimensions": null}));
    let resp = embed(&app, &token, &json!({"inputs": ["aaaa", "b", "aaaa"]})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!((body["model"].as_str(), body["dimensions"].as_u64()), (Some("emb"), Some(3)));
    let got = vectors(&body);
    let unit = |v: [f64; 3]| {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.map(|x| x / norm)
    };
    for (vector, expected) in got.iter().zip([unit([4.0, 3.0, 4.0]), unit([1.0, 3.0, 4.0]), unit([4.0, 3.0, 4.0])]) {
        assert!(cosine(vector, &expected) > 0.99999 && (vector.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(fake.inputs_seen.load(Ordering::SeqCst), 2, "the duplicate was sent once");
    let body: Value = app.get("/embeddings/capability", &token).await.json().await.unwrap();
    assert_eq!(body["dimensions"], 3, "learned from the first answer");
    let usage: Value = app.get("/llm/usage", &token).await.json().await.unwrap();
    assert_eq!(usage["usage"][0]["input_tokens"], 7, "{usage}");
    assert_eq!(sample(&app.scrape().await, "echolia_embeddings_inputs_total{provider=\"openai\"}"), 2.0);

    let failing =
        spawn_app_with(&[("EMBEDDINGS_BASE_URL", &url), ("EMBEDDINGS_MODEL", "fail"), ("LLM_RETRIES", "0")]).await;
    let token = failing.register().await.access_token;
    assert_error(embed(&failing, &token, &json!({"inputs": ["x"]})).await, StatusCode::BAD_GATEWAY, "upstream_error")
        .await;
    let slow = spawn_app_with(&[
        ("EMBEDDINGS_BASE_URL", &url),
        ("EMBEDDINGS_MODEL", "slow"),
        ("EMBEDDINGS_TIMEOUT_SECS", "1"),
    ])
    .await;
    let token = slow.register().await.access_token;
    assert_error(
        embed(&slow, &token, &json!({"inputs": ["x"]})).await,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    )
    .await;
    let gone = spawn_app_with(&[
        ("EMBEDDINGS_BASE_URL", "http://127.0.0.1:1/v1"),
        ("EMBEDDINGS_MODEL", "m"),
        ("LLM_RETRIES", "0"),
    ])
    .await;
    let token = gone.register().await.access_token;
    assert_error(embed(&gone, &token, &json!({"inputs": ["x"]})).await, StatusCode::BAD_GATEWAY, "upstream_error")
        .await;
}

/// The shipped binary logging at `trace`: an input's text is in none of its
/// log lines and in no file of its data directory. A model directory that
/// does not load stops the start, naming it.
#[cfg(feature = "local-embeddings")]
#[tokio::test]
async fn inputs_reach_no_log_and_no_file_and_a_broken_model_stops_the_start() {
    const MARKER: &str = "okapi quietly wrote zq7 in the diary";
    let (model, data, logs) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tiny_model(model.path());
    let server = |log: &std::path::Path, port: u16| {
        crate::helpers::spawn_binary(data.path(), port, log, &[("EMBEDDINGS_MODEL_DIR", model.path().as_os_str())])
    };
    let log_path = logs.path().join("server.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = server(&log_path, port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::helpers::wait_healthy(&client, &base, &log_path).await;
    let resp = client.post(format!("{base}/auth/register")).json(&device_body("Phone", "mobile")).send().await.unwrap();
    let token = resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    for body in [json!({"inputs": [MARKER, "and another"]}), json!({"inputs": [MARKER, 7]}), json!({"inputs": MARKER})]
    {
        let resp = client.post(format!("{base}/embeddings")).bearer_auth(&token).json(&body).send().await.unwrap();
        let text = resp.text().await.unwrap();
        assert!(!text.contains("okapi"), "{text}");
    }
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("/embeddings"), "requests are traced: {log}");
    assert!(!log.contains("okapi"), "an input reached the log");
    let mut files = Vec::new();
    crate::helpers::files_under(data.path(), &mut files);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(5).any(|w| w == b"okapi"), "an input reached {}", file.display());
    }

    // A model file that is not one: the server does not start, and says why.
    std::fs::write(model.path().join("model.safetensors"), b"not a model").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broken_log = logs.path().join("broken.log");
    let status = server(&broken_log, port).wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(&broken_log).unwrap();
    assert!(log.contains("EMBEDDINGS_MODEL_DIR") && log.contains("model.safetensors"), "{log}");
}
