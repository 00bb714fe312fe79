//! Key rotation, device audit history, account info, export and deletion.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, event, spawn_app, Session, TestApp};

async fn rotate(app: &TestApp, by: &Session, epoch: u64, devices: &[Uuid]) -> reqwest::Response {
    let envelopes: Vec<Value> = devices
        .iter()
        .map(|d| json!({"device_id": d, "key_envelope": STANDARD.encode(format!("sealed for {d}"))}))
        .collect();
    app.post("/auth/keys/rotate", Some(&by.access_token), &json!({"key_epoch": epoch, "envelopes": envelopes})).await
}

#[tokio::test]
async fn rotation_after_a_revocation_names_exactly_the_active_devices() {
    let app = spawn_app().await;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let c = app.pair(&a, "C").await;
    assert_eq!(
        app.delete(&format!("/auth/device/{}", b.device_id), &a.access_token).await.status(),
        StatusCode::NO_CONTENT
    );

    let cases: [(&[Uuid], &str); 4] = [
        (&[a.device_id, b.device_id, c.device_id], "envelopes[1].device_id"),
        (&[a.device_id], "envelopes"),
        (&[a.device_id, c.device_id, c.device_id], "envelopes[2].device_id"),
        (&[a.device_id, c.device_id, Uuid::new_v4()], "envelopes[2].device_id"),
    ];
    for (devices, field) in cases {
        let message =
            assert_error(rotate(&app, &a, 2, devices).await, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
                .await;
        assert!(message.starts_with(field), "{field}: {message}");
    }
    for epoch in [1, 3] {
        let resp = rotate(&app, &a, epoch, &[a.device_id, c.device_id]).await;
        assert_error(resp, StatusCode::CONFLICT, "key_epoch_mismatch").await;
    }
    let bad = json!({"key_epoch": 2, "envelopes": [{"device_id": a.device_id, "key_envelope": "%%%"}, {"device_id": c.device_id, "key_envelope": "eA=="}]});
    let message = assert_error(
        app.post("/auth/keys/rotate", Some(&a.access_token), &bad).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(message.starts_with("envelopes[0].key_envelope"), "{message}");
    let big = json!({"key_epoch": 2, "envelopes": [{"device_id": a.device_id, "key_envelope": STANDARD.encode(vec![0u8; 64 * 1024 + 1])}]});
    assert_error(
        app.post("/auth/keys/rotate", Some(&a.access_token), &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "key_envelope_too_large",
    )
    .await;

    let resp = rotate(&app, &a, 2, &[c.device_id, a.device_id]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mine: Value = resp.json().await.unwrap();
    assert_eq!(mine["key_epoch"], 2);
    assert_eq!(
        STANDARD.decode(mine["key_envelope"].as_str().unwrap()).unwrap(),
        format!("sealed for {}", a.device_id).as_bytes()
    );
    let theirs: Value = app.get("/auth/keys", &c.access_token).await.json().await.unwrap();
    assert_eq!(theirs["key_epoch"], 2);
    assert_eq!(
        STANDARD.decode(theirs["key_envelope"].as_str().unwrap()).unwrap(),
        format!("sealed for {}", c.device_id).as_bytes()
    );
    assert_error(app.get("/auth/keys", &b.access_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
    assert_error(rotate(&app, &a, 2, &[a.device_id, c.device_id]).await, StatusCode::CONFLICT, "key_epoch_mismatch")
        .await;

    // The rotation is a device event: who and which epoch.
    let log: Value = app.get("/sync/events", &a.access_token).await.json().await.unwrap();
    let last = log["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "device");
    assert_eq!(last["device_id"], a.device_id.to_string());
    let payload: Value = serde_json::from_slice(&STANDARD.decode(last["payload"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(payload, json!({"action": "keys_rotated", "key_epoch": 2}));

    // A device paired after the rotation gets its envelope at the new epoch.
    let mut body = crate::helpers::device_body("D", "web");
    body["key_envelope"] = json!(STANDARD.encode(b"sealed for d"));
    let resp = app.post("/auth/pair-device", Some(&a.access_token), &body).await;
    let d = Session::from_json(&resp.json().await.unwrap());
    let keys: Value = app.get("/auth/keys", &d.access_token).await.json().await.unwrap();
    assert_eq!(keys["key_epoch"], 2);
}

#[tokio::test]
async fn audit_history_lists_what_a_device_did() {
    let app = spawn_app().await;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let batch: Vec<Value> =
        ids.iter().map(|id| event("entry", *id, "put", &[(b.device_id, 1)], Some(b"secret"))).collect();
    app.push_ok(&b, &batch).await;
    app.push_ok(&b, &[event("entry", ids[0], "delete", &[(b.device_id, 2)], None)]).await;
    app.push_ok(&a, &[event("memory", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"a's"))]).await;

    let history: Value =
        app.get(&format!("/audit/devices/{}/history", b.device_id), &a.access_token).await.json().await.unwrap();
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 4, "{history}");
    assert_eq!(history["has_more"], false);
    assert!(events.iter().all(|e| e.get("payload").is_none()), "metadata only");
    assert_eq!(events[3]["op"], "delete");
    assert_eq!(events[3]["aggregate_id"], ids[0].to_string());
    let keys: Vec<&str> = events[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 7, "{keys:?}");

    let page: Value = app
        .get(&format!("/audit/devices/{}/history?limit=2", b.device_id), &a.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((page["events"].as_array().unwrap().len(), page["has_more"].clone()), (2, json!(true)));
    let rest: Value = app
        .get(&format!("/audit/devices/{}/history?since={}", b.device_id, page["cursor"]), &a.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["events"].as_array().unwrap().len(), 2);

    // The approver's pairing is in its own history.
    let a_history: Value =
        app.get(&format!("/audit/devices/{}/history", a.device_id), &b.access_token).await.json().await.unwrap();
    assert_eq!(a_history["events"].as_array().unwrap().len(), 3, "registered, paired B, pushed a memory");

    let stranger = app.register().await;
    let resp = app.get(&format!("/audit/devices/{}/history", b.device_id), &stranger.access_token).await;
    assert_error(resp, StatusCode::NOT_FOUND, "device_not_found").await;
    assert_error(
        app.get("/audit/devices/nope/history", &a.access_token).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
    let huge = format!("/audit/devices/{}/history?since=18446744073709551615", b.device_id);
    assert_error(app.get(&huge, &a.access_token).await, StatusCode::BAD_REQUEST, "invalid_query").await;
    let last = format!("/audit/devices/{}/history?since=9223372036854775807", b.device_id);
    assert_eq!(app.get(&last, &a.access_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_export_equals_the_log_and_the_account_counts_it() {
    let app = spawn_app().await;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    for round in 0..7u64 {
        let batch: Vec<Value> = (0..150)
            .map(|i| {
                event("entry", Uuid::new_v4(), "put", &[(a.device_id, round * 150 + i + 1)], Some(&[round as u8; 64]))
            })
            .collect();
        app.push_ok(&a, &batch).await;
    }
    let resp = app.get("/account/export", &b.access_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let exported: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(text.ends_with('\n'));

    let mut logged = Vec::new();
    let mut since = 0;
    loop {
        let page: Value =
            app.get(&format!("/sync/events?since={since}&limit=1000"), &b.access_token).await.json().await.unwrap();
        logged.extend(page["events"].as_array().unwrap().iter().cloned());
        since = page["cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(exported.len(), 2 + 7 * 150);
    assert_eq!(exported, logged);

    let account: Value = app.get("/account", &b.access_token).await.json().await.unwrap();
    assert_eq!(account["user_id"], a.user_id.to_string());
    assert_eq!(account["devices"], 2);
    assert_eq!(account["events"], exported.len());
    assert_eq!(account["tier"], "free");
    assert!(account["storage_bytes"].as_u64().unwrap() > 7 * 150 * 64);
    assert!(account["created_at"].is_string());
}

#[tokio::test]
async fn deleting_the_account_removes_the_database_and_every_token() {
    let app = spawn_app().await;
    let a = app.register().await;
    let b = app.pair(&a, "B").await;
    let other = app.register().await;
    app.push_ok(&a, &[event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(b"bye"))]).await;
    assert!(app.user_db_path(a.user_id).exists());

    assert_eq!(app.delete("/account", &b.access_token).await.status(), StatusCode::NO_CONTENT);

    assert!(!app.user_db_path(a.user_id).exists(), "the database file is gone");
    for token in [&a.access_token, &b.access_token] {
        assert_error(app.get("/auth/devices", token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
        assert_error(app.get("/sync/pull", token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    for token in [&a.refresh_token, &b.refresh_token] {
        assert_error(app.refresh(token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    assert!(!app.user_db_path(a.user_id).exists(), "no request brought it back");
    let control = app.state.control.conn().await.unwrap();
    let mut rows =
        control.query("SELECT count(*) FROM users WHERE user_id = ?1", [a.user_id.to_string()]).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap(), 0);
    assert_eq!(app.devices(&other).await.len(), 1, "other users are untouched");
}
