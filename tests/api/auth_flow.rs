//! Register, pair, list, rename, refresh, revoke — through HTTP.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, device_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn register_answers_the_contract_and_lists_the_device() {
    let app = spawn_app().await;
    let resp = app.post("/auth/register", None, &device_body("My Desktop", "desktop")).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
    for key in ["user_id", "device_id", "access_token", "refresh_token", "token_type", "expires_in"] {
        assert!(body.get(key).is_some(), "missing {key}");
    }
    let session = crate::helpers::Session::from_json(&body);

    let devices = app.devices(&session).await;
    assert_eq!(devices.len(), 1);
    let device = &devices[0];
    assert_eq!(device["device_id"], session.device_id.to_string());
    assert_eq!(device["device_name"], "My Desktop");
    assert_eq!(device["device_type"], "desktop");
    assert_eq!(device["platform"], "macos");
    assert_eq!(device["capabilities"], json!({"local_embeddings": true}));
    assert!(device["public_key"].as_str().unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(device["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(device["last_seen_at"].is_string());
    assert_eq!(device["revoked_at"], Value::Null);
    assert_eq!(device["current"], true);
}

#[tokio::test]
async fn capabilities_are_optional() {
    let app = spawn_app().await;
    let mut body = device_body("CLI", "cli");
    body.as_object_mut().unwrap().remove("capabilities");
    let session = app.register_body(&body).await;
    assert_eq!(app.devices(&session).await[0]["capabilities"], json!({}));
}

#[tokio::test]
async fn a_paired_device_gets_its_own_tokens_and_sees_the_same_devices() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let phone = app.pair(&desktop, "Phone").await;
    assert_ne!(phone.device_id, desktop.device_id);

    let from_phone = app.devices(&phone).await;
    assert_eq!(from_phone.len(), 2);
    let current: Vec<&Value> = from_phone.iter().filter(|d| d["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["device_id"], phone.device_id.to_string());
    assert_eq!(current[0]["device_name"], "Phone");
    assert_eq!(current[0]["device_type"], "mobile");
    let from_desktop = app.devices(&desktop).await;
    let ids = |list: &[Value]| list.iter().map(|d| d["device_id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&from_desktop), ids(&from_phone));
}

#[tokio::test]
async fn pairing_stores_only_the_sealed_key_envelope() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let mut body = device_body("Tablet", "tablet");
    body["key_envelope"] = json!("c2VhbGVkIGJ5dGVz"); // "sealed bytes"
    let resp = app.post("/auth/pair-device", Some(&desktop.access_token), &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let tablet = crate::helpers::Session::from_json(&resp.json().await.unwrap());

    let conn = app.open_user_db(desktop.user_id).await;
    let mut rows = conn
        .query("SELECT key_epoch, envelope FROM key_envelopes WHERE device_id = ?1", [tablet.device_id.to_string()])
        .await
        .unwrap();
    let row = rows.next().await.unwrap().expect("an envelope row");
    assert_eq!(row.get::<u64>(0).unwrap(), 1);
    assert_eq!(row.get::<Vec<u8>>(1).unwrap(), b"sealed bytes");
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let phone = app.pair(&desktop, "Phone").await;
    assert_eq!(app.get("/auth/devices", &phone.access_token).await.status(), StatusCode::OK);

    let resp = app.delete(&format!("/auth/device/{}", phone.device_id), &desktop.access_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    assert_error(app.get("/auth/devices", &phone.access_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
    assert_error(app.refresh(&phone.refresh_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
    let resp = app.post("/auth/pair-device", Some(&phone.access_token), &device_body("Sneaky", "web")).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "device_revoked").await;

    let devices = app.devices(&desktop).await;
    let revoked = devices.iter().find(|d| d["device_id"] == phone.device_id.to_string()).unwrap();
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(devices.len(), 2, "a revoked device stays listed");

    // Idempotent, and the revoking device is unaffected.
    let again = app.delete(&format!("/auth/device/{}", phone.device_id), &desktop.access_token).await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.refresh(&desktop.refresh_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn revocation_reaches_a_device_already_cached_as_active() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let phone = app.pair(&desktop, "Phone").await;
    // Warm the status cache for the phone with several requests.
    for _ in 0..3 {
        assert_eq!(app.get("/auth/devices", &phone.access_token).await.status(), StatusCode::OK);
    }
    // The phone revokes itself (signing out).
    let resp = app.delete(&format!("/auth/device/{}", phone.device_id), &phone.access_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_error(app.get("/auth/devices", &phone.access_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_kills_the_device_tokens() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let other = app.pair(&desktop, "Other").await;

    let resp = app.refresh(&desktop.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let second = crate::helpers::Session::from_json(&resp.json().await.unwrap());
    assert_eq!((second.user_id, second.device_id), (desktop.user_id, desktop.device_id));
    assert_ne!(second.refresh_token, desktop.refresh_token);
    assert_ne!(second.access_token, desktop.access_token);
    assert_eq!(app.get("/auth/devices", &second.access_token).await.status(), StatusCode::OK);

    let resp = app.refresh(&second.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let third = crate::helpers::Session::from_json(&resp.json().await.unwrap());

    // The first refresh token again: theft.
    assert_error(app.refresh(&desktop.refresh_token).await, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    // Every token of that device stops working, the newest included.
    assert_error(app.refresh(&third.refresh_token).await, StatusCode::UNAUTHORIZED, "token_revoked").await;
    assert_error(app.get("/auth/devices", &third.access_token).await, StatusCode::UNAUTHORIZED, "token_revoked").await;
    assert_error(app.get("/auth/devices", &desktop.access_token).await, StatusCode::UNAUTHORIZED, "token_revoked")
        .await;
    // Other devices of the user carry on.
    assert_eq!(app.get("/auth/devices", &other.access_token).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&other.refresh_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_expire_on_the_service_clock() {
    let app = spawn_app().await;
    let session = app.register().await;
    app.clock.advance(chrono::Duration::minutes(61));
    assert_error(app.get("/auth/devices", &session.access_token).await, StatusCode::UNAUTHORIZED, "token_expired")
        .await;
    let resp = app.refresh(&session.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK, "the refresh token outlives the access token");
    let renewed = crate::helpers::Session::from_json(&resp.json().await.unwrap());
    assert_eq!(app.get("/auth/devices", &renewed.access_token).await.status(), StatusCode::OK);

    app.clock.advance(chrono::Duration::days(31));
    assert_error(app.refresh(&renewed.refresh_token).await, StatusCode::UNAUTHORIZED, "token_expired").await;
}

#[tokio::test]
async fn users_are_isolated() {
    let app = spawn_app().await;
    let alice = app.register().await;
    let alice_phone = app.pair(&alice, "Alice phone").await;
    let bob = app.register().await;
    assert_ne!(alice.user_id, bob.user_id);

    let bobs = app.devices(&bob).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["device_id"], bob.device_id.to_string());

    // Bob cannot see, revoke or even confirm Alice's devices.
    let resp = app.delete(&format!("/auth/device/{}", alice_phone.device_id), &bob.access_token).await;
    assert_error(resp, StatusCode::NOT_FOUND, "device_not_found").await;
    assert_eq!(app.get("/auth/devices", &alice_phone.access_token).await.status(), StatusCode::OK);
    assert_eq!(app.devices(&alice).await.len(), 2);
}

#[tokio::test]
async fn the_current_device_can_be_renamed() {
    let app = spawn_app().await;
    let session = app.register().await;
    let resp = app
        .client
        .patch(app.url("/auth/devices/current"))
        .bearer_auth(&session.access_token)
        .json(&json!({"device_name": "  Work laptop  ", "capabilities": {"local_embeddings": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let device: Value = resp.json().await.unwrap();
    assert_eq!(device["device_name"], "Work laptop");
    assert_eq!(device["current"], true);
    let listed = app.devices(&session).await;
    assert_eq!(listed[0]["device_name"], "Work laptop");
    assert_eq!(listed[0]["capabilities"], json!({"local_embeddings": false}));

    let resp = app
        .client
        .patch(app.url("/auth/devices/current"))
        .bearer_auth(&session.access_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

#[tokio::test]
async fn registration_is_rate_limited_per_client_ip() {
    let app = spawn_app_with(&[("REGISTER_RATE_LIMIT", "3")]).await;
    for _ in 0..3 {
        app.register().await;
    }
    let resp = app.post("/auth/register", None, &device_body("One too many", "desktop")).await;
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(crate::helpers::user_db_files(&app).len(), 3, "a limited request creates nothing");
}

/// Two API servers on one store share one limit (it is kept in the control
/// database): a client cannot get twice its registrations by alternating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_limit_is_one_across_servers() {
    let first = spawn_app_with(&[("REGISTER_RATE_LIMIT", "2")]).await;
    let second = first.beside().await;
    first.register().await;
    second.register().await;
    for app in [&first, &second] {
        let resp = app.post("/auth/register", None, &device_body("Third", "desktop")).await;
        let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry_after), "{retry_after}");
        assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    assert_eq!(crate::helpers::user_db_files(&first).len(), 2, "a limited request creates nothing");
    // Half a minute on (one interval at 2 a minute), one more is allowed, then none: shown on a third
    // server, whose own in-memory limit (on the wall clock, not the test's) has counted nothing yet.
    first.clock.advance(chrono::Duration::seconds(31));
    let third = first.beside().await;
    third.register().await;
    let resp = third.post("/auth/register", None, &device_body("Fourth", "desktop")).await;
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_trusted_proxies() {
    let limited = |app: &crate::helpers::TestApp, forwarded: &'static str| {
        let req = app.client.post(app.url("/auth/register")).header("x-forwarded-for", forwarded);
        req.json(&device_body("Behind a proxy", "web")).send()
    };
    // Loopback is a trusted proxy: each forwarded client has its own budget.
    let app = spawn_app_with(&[("REGISTER_RATE_LIMIT", "1"), ("TRUSTED_PROXIES", "127.0.0.1")]).await;
    assert_eq!(limited(&app, "203.0.113.1").await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(limited(&app, "203.0.113.2").await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(limited(&app, "203.0.113.1").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    // Without trust, the header is ignored: the socket peer is the client.
    let app = spawn_app_with(&[("REGISTER_RATE_LIMIT", "1")]).await;
    assert_eq!(limited(&app, "203.0.113.1").await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(limited(&app, "203.0.113.2").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
}
