//! The real all-MiniLM-L6-v2 through the HTTP API, against vectors computed
//! without the Rust runtime (tests/fixtures/embeddings/reference.py: the
//! same BERT forward pass in numpy). Needs the model directory in
//! `ECHOLIA_TEST_MODEL_DIR` or `EMBEDDINGS_MODEL_DIR` (`.ci/run` installs it
//! from PyPI); skipped, saying so, without it.
#![cfg(feature = "local-embeddings")]

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::embeddings::{cosine, vectors};
use crate::helpers::spawn_app_with;

fn model_dir() -> Option<String> {
    let set = |name: &str| std::env::var(name).ok().filter(|dir| !dir.is_empty());
    let dir = set("ECHOLIA_TEST_MODEL_DIR").or_else(|| set("EMBEDDINGS_MODEL_DIR"));
    if dir.is_none() {
        eprintln!("skipped: set ECHOLIA_TEST_MODEL_DIR (or EMBEDDINGS_MODEL_DIR) to all-MiniLM-L6-v2's directory");
    }
    dir
}

#[tokio::test]
async fn the_real_model_matches_the_reference_and_knows_a_paraphrase() {
    let Some(dir) = model_dir() else { return };
    let reference: Value = serde_json::from_str(include_str!("../fixtures/embeddings/minilm_reference.json")).unwrap();
    let app = spawn_app_with(&[("EMBEDDINGS_MODEL_DIR", &dir)]).await;
    let token = app.register().await.access_token;
    let resp = app.post("/embeddings", Some(&token), &json!({"inputs": reference["sentences"]})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(body["dimensions"], 384);
    let got = vectors(&body);
    let expected = vectors(&json!({"embeddings": reference["vectors"]}));
    assert_eq!(got.len(), expected.len());
    for (n, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got.len(), 384);
        let similarity = cosine(got, expected);
        assert!(similarity >= 0.999, "sentence {n}: cosine {similarity} with the reference");
    }
    // "The cat sits on the mat." is closer to its paraphrase than to quarterly revenue.
    let paraphrase = cosine(&got[0], &got[1]);
    let unrelated = cosine(&got[0], &got[2]);
    assert!(paraphrase > 0.8 && unrelated < 0.3, "paraphrase {paraphrase}, unrelated {unrelated}");
}
