//! The OHTTP gateway with the `ohttp` crate's client: the same answers as
//! plain HTTP, streamed answers chunk by chunk, and clean refusals.

use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_util::TryStreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, Session, TestApp};
use crate::llm::{chat, llm_app, rows};

fn inner_request(session: &Session, path: &str, body: &Value, mode: bhttp::Mode) -> Vec<u8> {
    let mut message = bhttp::Message::request(
        b"POST".to_vec(),
        b"https".to_vec(),
        b"sync.example".to_vec(),
        path.as_bytes().to_vec(),
    );
    message.put_header("authorization", format!("Bearer {}", session.access_token));
    message.put_header("content-type", "application/json");
    message.write_content(serde_json::to_vec(body).unwrap());
    let mut encoded = Vec::new();
    message.write_bhttp(mode, &mut encoded).unwrap();
    encoded
}

async fn key_config(app: &TestApp) -> Vec<u8> {
    let resp = app.client.get(app.url("/llm/ohttp-keys")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/ohttp-keys");
    resp.bytes().await.unwrap().to_vec()
}

async fn post_ohttp(app: &TestApp, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    app.client.post(app.url("/llm/ohttp")).header("content-type", content_type).body(body).send().await.unwrap()
}

/// Sends one request through `/llm/ohttp`; returns the inner response.
async fn through_ohttp(app: &TestApp, session: &Session, path: &str, body: &Value) -> bhttp::Message {
    let client = ohttp::ClientRequest::from_encoded_config_list(&key_config(app).await).unwrap();
    let (enc, response) = client.encapsulate(&inner_request(session, path, body, bhttp::Mode::KnownLength)).unwrap();
    let resp = post_ohttp(app, "message/ohttp-req", enc).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "message/ohttp-res");
    let plain = response.decapsulate(&resp.bytes().await.unwrap()).unwrap();
    bhttp::Message::read_bhttp(&mut Cursor::new(&plain[..])).unwrap()
}

/// An `AsyncWrite` into a shared buffer (the chunked client's output).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The inner request has the same 8 MiB body limit as plain HTTP, not axum's 2 MiB default.
#[tokio::test]
async fn a_3_mib_request_through_ohttp_is_not_refused_as_too_large() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let long = "a".repeat(3 * 1024 * 1024);
    let body = json!({"model": "priced", "messages": [{"role": "user", "content": long}]});
    assert_eq!(chat(app, &session, &body).await.status(), StatusCode::OK, "plain HTTP");
    let inner = through_ohttp(app, &session, "/llm/v1/chat/completions", &body).await;
    assert_eq!(inner.control().status().unwrap().code(), 200);
    let answer: Value = serde_json::from_slice(inner.content()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"].as_str().unwrap().len(), long.len() + 6);
}

#[tokio::test]
async fn a_request_through_ohttp_gets_the_same_answer_as_plain_http() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let body = json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}]});
    let plain: Value = chat(app, &session, &body).await.json().await.unwrap();
    let inner = through_ohttp(app, &session, "/llm/v1/chat/completions", &body).await;
    assert_eq!(inner.control().status().unwrap().code(), 200);
    assert_eq!(serde_json::from_slice::<Value>(inner.content()).unwrap(), plain);
    assert_eq!(inner.header().get(b"content-type"), Some(&b"application/json"[..]));
    // The inner Authorization is the one checked; usage is the user's.
    assert_eq!(rows(app, session.user_id).await.len(), 2);
    let usage = through_ohttp(app, &session, "/llm/usage", &json!({})).await;
    assert_eq!(usage.control().status().unwrap().code(), 405, "GET only, and the inner method counts");
    let mut forged = session.clone();
    forged.access_token = "nope".into();
    let refused = through_ohttp(app, &forged, "/llm/v1/chat/completions", &body).await;
    assert_eq!(refused.control().status().unwrap().code(), 401);
    let elsewhere = through_ohttp(app, &session, "/auth/devices", &body).await;
    assert_eq!(elsewhere.control().status().unwrap().code(), 404);
}

#[tokio::test]
async fn a_streamed_answer_comes_back_as_chunked_ohttp_as_it_is_generated() {
    let llm = llm_app(&[]).await;
    let (app, fake) = (&llm.app, &llm.fake);
    let session = app.register().await;
    let body = json!({"model": "openai", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let plain = chat(app, &session, &body).await.text().await.unwrap();

    let send = |body: Value| {
        let session = session.clone();
        async move {
            let client = ohttp::ClientRequest::from_encoded_config_list(&key_config(app).await).unwrap();
            let sink = Sink::default();
            let mut request = client.encapsulate_stream(sink.clone()).unwrap();
            request
                .write_all(&inner_request(
                    &session,
                    "/llm/v1/chat/completions",
                    &body,
                    bhttp::Mode::IndeterminateLength,
                ))
                .await
                .unwrap();
            request.close().await.unwrap();
            let enc = std::mem::take(&mut *sink.0.lock().unwrap());
            let resp = post_ohttp(app, "message/ohttp-chunked-req", enc).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["content-type"], "message/ohttp-chunked-res");
            let source = resp.bytes_stream().map_err(std::io::Error::other).into_async_read();
            request.response(source).unwrap()
        }
    };

    let mut response = send(body.clone()).await;
    let mut decrypted = Vec::new();
    response.read_to_end(&mut decrypted).await.unwrap();
    let inner = bhttp::Message::read_bhttp(&mut Cursor::new(&decrypted[..])).unwrap();
    assert_eq!(inner.control().status().unwrap().code(), 200);
    assert_eq!(inner.header().get(b"content-type"), Some(&b"text/event-stream"[..]));
    assert_eq!(String::from_utf8(inner.content().to_vec()).unwrap(), plain);

    // An endless stream: its first events arrive decrypted while it is still being generated.
    let mut endless = body.clone();
    endless["model"] = json!("endless");
    let mut response = send(endless).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("data: ").count() < 3 {
        let n = response.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(response);
    for _ in 0..100 {
        if fake.state.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        fake.state.cancelled.load(std::sync::atomic::Ordering::SeqCst),
        "dropping the OHTTP answer dropped the upstream"
    );
}

#[tokio::test]
async fn wrong_keys_truncated_and_tampered_encapsulations_are_refused_cleanly() {
    let llm = llm_app(&[]).await;
    let app = &llm.app;
    let session = app.register().await;
    let body = json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}]});
    let config = key_config(app).await;
    let encapsulate = || {
        let client = ohttp::ClientRequest::from_encoded_config_list(&config).unwrap();
        client
            .encapsulate(&inner_request(&session, "/llm/v1/chat/completions", &body, bhttp::Mode::KnownLength))
            .unwrap()
            .0
    };

    let mut wrong_key = encapsulate();
    wrong_key[0] = wrong_key[0].wrapping_add(1);
    let resp = post_ohttp(app, "message/ohttp-req", wrong_key).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["type"], "https://iana.org/assignments/http-problem-types#ohttp-key");

    let whole = encapsulate();
    for broken in [whole[..20].to_vec(), whole[..5].to_vec(), {
        let mut tampered = whole.clone();
        *tampered.last_mut().unwrap() ^= 1;
        tampered
    }] {
        let resp = post_ohttp(app, "message/ohttp-req", broken.clone()).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_encapsulation").await;
        let resp = post_ohttp(app, "message/ohttp-chunked-req", broken).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_encapsulation").await;
    }
    let resp = post_ohttp(app, "application/json", encapsulate()).await;
    assert_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    assert!(rows(app, session.user_id).await.is_empty(), "nothing reached the proxy");
    let scrape = app.scrape().await;
    assert!(scrape.contains("echolia_ohttp_requests_total{outcome=\"invalid\"} 6"), "{scrape}");
}
