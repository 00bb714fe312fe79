//! Bad sync input: the right 4xx naming the event and field, and the log
//! unchanged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, event, spawn_app};

#[tokio::test]
async fn invalid_events_are_422_naming_index_and_field_and_append_nothing() {
    let app = spawn_app().await;
    let a = app.register().await;
    let me = a.device_id;
    let good = || event("entry", Uuid::new_v4(), "put", &[(me, 1)], Some(b"ok"));
    let before = app.event_count(a.user_id).await;

    let mut cases: Vec<(Value, &str)> = Vec::new();
    for field in ["event_id", "kind", "aggregate_id", "op", "version", "client_time"] {
        let mut e = good();
        e.as_object_mut().unwrap().remove(field);
        cases.push((e, field));
    }
    let mut e = good();
    e["kind"] = json!("diary");
    cases.push((e, "kind"));
    let mut e = good();
    e["kind"] = json!("device");
    cases.push((e, "kind"));
    let mut e = good();
    e["op"] = json!("upsert");
    cases.push((e, "op"));
    let mut e = good();
    e.as_object_mut().unwrap().remove("payload");
    cases.push((e, "payload"));
    cases.push((event("entry", Uuid::new_v4(), "delete", &[(me, 1)], Some(b"x")), "payload"));
    cases.push((event("entry", Uuid::new_v4(), "put", &[(me, 1)], Some(&vec![0u8; 1024 * 1024 + 1])), "payload"));
    let mut e = good();
    e["payload"] = json!("***not base64***");
    cases.push((e, "payload"));
    cases.push((event("entry", Uuid::new_v4(), "put", &[(Uuid::new_v4(), 1)], Some(b"x")), "version"));
    cases.push((event("entry", Uuid::new_v4(), "put", &[(me, 0)], Some(b"x")), "version"));
    cases.push((event("entry", Uuid::new_v4(), "put", &[(me, 1), (Uuid::new_v4(), 0)], Some(b"x")), "version"));
    let mut e = good();
    e["version"] = json!({"not-a-uuid": 1, me.to_string(): 1});
    cases.push((e, "version"));
    let mut e = good();
    e["version"] = json!({me.to_string(): -1});
    cases.push((e, "version"));
    let many: Vec<(Uuid, u64)> = std::iter::once((me, 1)).chain((0..128).map(|_| (Uuid::new_v4(), 1))).collect();
    cases.push((event("entry", Uuid::new_v4(), "put", &many, Some(b"x")), "version"));
    cases.push((event("tag", Uuid::new_v4(), "put", &[(me, 1)], Some(b"x")), "parent_id"));
    cases.push((event("embedding", Uuid::new_v4(), "put", &[(me, 1)], Some(b"x")), "parent_id"));
    let mut e = good();
    e["client_time"] = json!("yesterday");
    cases.push((e, "client_time"));
    let mut e = good();
    e["aggregate_id"] = json!(12);
    cases.push((e, "aggregate_id"));
    for far in ["+10000-01-01T00:00:00Z", "-0001-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00"] {
        let mut e = good();
        e["client_time"] = json!(far);
        cases.push((e, "client_time"));
    }

    for (bad, field) in cases {
        // The bad event sits at index 2, after two good ones.
        let resp = app.push(&a, &[good(), good(), bad.clone()]).await;
        let message = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            message.starts_with(&format!("events[2].{field}")) || message.starts_with("events[2]: missing field"),
            "{field}: {message}"
        );
        assert!(message.contains(field), "{field}: {message}");
    }
    assert_eq!(app.event_count(a.user_id).await, before, "nothing of any batch was appended");

    // Exactly at the limits is fine.
    let at_limit: Vec<(Uuid, u64)> = std::iter::once((me, 1)).chain((0..127).map(|_| (Uuid::new_v4(), 1))).collect();
    app.push_ok(&a, &[event("entry", Uuid::new_v4(), "put", &at_limit, Some(&vec![1u8; 1024 * 1024]))]).await;
}

#[tokio::test]
async fn oversized_batches_are_413() {
    let app = spawn_app().await;
    let a = app.register().await;
    let before = app.event_count(a.user_id).await;
    let too_many: Vec<Value> =
        (0..1001).map(|_| event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"x"))).collect();
    assert_error(app.push(&a, &too_many).await, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large").await;

    let big = STANDARD.encode(vec![9u8; 1024 * 1024]);
    let too_big: Vec<Value> = (0..13)
        .map(|_| {
            let mut e = event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], None);
            e["payload"] = json!(big);
            e
        })
        .collect();
    assert_error(app.push(&a, &too_big).await, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large").await;
    assert_eq!(app.event_count(a.user_id).await, before);
    let exactly: Vec<Value> = too_many[..1000].to_vec();
    app.push_ok(&a, &exactly).await;
}

#[tokio::test]
async fn bad_queries_are_400_and_a_cursor_ahead_is_409() {
    let app = spawn_app().await;
    let a = app.register().await;
    for query in [
        "since=abc",
        "since=-1",
        "since=9223372036854775808",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "kinds=entry,diary",
        "kinds=device",
        "wait=61",
        "wait=soon",
    ] {
        let resp = app.get(&format!("/sync/pull?{query}"), &a.access_token).await;
        let message = assert_error(resp, StatusCode::BAD_REQUEST, "invalid_query").await;
        assert!(message.starts_with(query.split('=').next().unwrap()), "{query}: {message}");
    }
    for query in ["since=x", "limit=0", "limit=5000"] {
        let resp = app.get(&format!("/sync/events?{query}"), &a.access_token).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
    assert_error(app.get("/sync/pull?since=1000", &a.access_token).await, StatusCode::CONFLICT, "cursor_ahead").await;
    assert_error(app.get("/sync/events?since=1000", &a.access_token).await, StatusCode::CONFLICT, "cursor_ahead").await;
}

#[tokio::test]
async fn malformed_bodies_and_revoked_devices() {
    let app = spawn_app().await;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let send = |content_type: &'static str, body: Vec<u8>| {
        app.client
            .post(app.url("/sync/push"))
            .bearer_auth(&a.access_token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    assert_error(
        send("application/json", b"{\"events\": [".to_vec()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert_error(
        send("application/msgpack", vec![0xc1, 0xff, 0x00]).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_msgpack",
    )
    .await;
    assert_error(
        send("text/csv", b"a,b".to_vec()).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let resp = send("application/json", b"{\"events\": {}}".to_vec()).await.unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    assert_eq!(
        app.delete(&format!("/auth/device/{}", b.device_id), &a.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    let before = app.event_count(a.user_id).await;
    let resp = app.push(&b, &[event("entry", Uuid::new_v4(), "put", &[(b.device_id, 1)], Some(b"x"))]).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "device_revoked").await;
    assert_error(app.get("/sync/pull", &b.access_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
    assert_eq!(app.event_count(a.user_id).await, before);
    let resp = app.client.get(app.url("/sync/status")).send().await.unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "missing_token").await;
}
