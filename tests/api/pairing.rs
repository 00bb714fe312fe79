//! Pairing with a code, through HTTP, with real X25519 sealed boxes.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app, spawn_app_with, Session, TestApp};

/// The new device: an X25519 key pair and what it says about itself.
struct NewDevice {
    secret: SecretKey,
}

impl NewDevice {
    fn new() -> Self {
        NewDevice { secret: SecretKey::generate(&mut OsRng) }
    }

    fn public_key(&self) -> String {
        STANDARD.encode(self.secret.public_key().as_bytes())
    }

    fn claim_body(&self, code: &str) -> Value {
        json!({"code": code, "device_name": "New phone", "device_type": "mobile", "platform": "ios",
               "public_key": self.public_key()})
    }
}

async fn start(app: &TestApp, by: &Session) -> Value {
    let resp = app.post("/auth/pairing", Some(&by.access_token), &json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    resp.json().await.unwrap()
}

async fn claim(app: &TestApp, body: &Value) -> Response {
    app.post("/auth/pairing/claim", None, body).await
}

/// `GET /auth/pairing/{pairing}/result{query}` with the claimer's token.
pub(crate) async fn result(app: &TestApp, pairing: &str, claim_token: &str, query: &str) -> Response {
    let url = app.url(&format!("/auth/pairing/{pairing}/result{query}"));
    app.client.get(url).header("x-claim-token", claim_token).send().await.unwrap()
}

async fn approve(app: &TestApp, by: &Session, pairing: &str, envelope: &[u8]) -> Response {
    let body = json!({"key_envelope": STANDARD.encode(envelope)});
    app.post(&format!("/auth/pairing/{pairing}/approve"), Some(&by.access_token), &body).await
}

/// Opens and claims a pairing; returns (pairing_id, claim_token).
async fn claimed(app: &TestApp, by: &Session, device: &NewDevice) -> (String, String) {
    let started = start(app, by).await;
    let resp = claim(app, &device.claim_body(started["code"].as_str().unwrap())).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    (body["pairing_id"].as_str().unwrap().to_owned(), body["claim_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_device_pairs_with_a_code_and_opens_the_sealed_user_key() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let started = start(&app, &desktop).await;
    let code = started["code"].as_str().unwrap();
    assert_eq!(code.len(), 9);
    assert_eq!(&code[4..5], "-");
    assert!(code.chars().filter(|c| *c != '-').all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
    let pairing_id = started["pairing_id"].as_str().unwrap().to_owned();
    let phone = NewDevice::new();

    // Typed sloppily: lower case, no hyphen.
    let resp = claim(&app, &phone.claim_body(&code.replace('-', "").to_lowercase())).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let claimed: Value = resp.json().await.unwrap();
    assert_eq!(claimed["pairing_id"], pairing_id);
    let claim_token = claimed["claim_token"].as_str().unwrap();

    let pending = result(&app, &pairing_id, claim_token, "").await;
    assert_eq!(pending.status(), StatusCode::ACCEPTED);
    assert_eq!(pending.json::<Value>().await.unwrap(), json!({"status": "claimed"}));

    // The desktop sees the claimant's key (and would show its fingerprint).
    let seen: Value =
        app.get(&format!("/auth/pairing/{pairing_id}"), &desktop.access_token).await.json().await.unwrap();
    assert_eq!(seen["status"], "claimed");
    assert_eq!(seen["new_device"]["public_key"], phone.public_key());
    assert_eq!(seen["new_device"]["device_name"], "New phone");

    // It seals a fresh user key to that public key; the server only sees the sealed bytes.
    let user_key: [u8; 32] = rand::random();
    let phone_key =
        PublicKey::from_slice(&STANDARD.decode(seen["new_device"]["public_key"].as_str().unwrap()).unwrap()).unwrap();
    let sealed = phone_key.seal(&mut OsRng, &user_key).unwrap();
    let resp = approve(&app, &desktop, &pairing_id, &sealed).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let new_device_id = resp.json::<Value>().await.unwrap()["device_id"].as_str().unwrap().to_owned();

    let resp = result(&app, &pairing_id, claim_token, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let delivered: Value = resp.json().await.unwrap();
    let session = Session::from_json(&delivered);
    assert_eq!(session.user_id, desktop.user_id);
    assert_eq!(session.device_id.to_string(), new_device_id);
    assert_eq!(delivered["approver_device_id"], desktop.device_id.to_string());
    assert!(delivered["approver_public_key"].as_str().unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    let envelope = STANDARD.decode(delivered["key_envelope"].as_str().unwrap()).unwrap();
    assert_eq!(phone.secret.unseal(&envelope).unwrap(), user_key, "the new device opens the user key");

    // Delivered once.
    let again = result(&app, &pairing_id, claim_token, "").await;
    assert_error(again, StatusCode::NOT_FOUND, "pairing_collected").await;

    // The new device is a full device: listed, with its envelope at the current epoch.
    let devices = app.devices(&session).await;
    assert_eq!(devices.len(), 2);
    let keys: Value = app.get("/auth/keys", &session.access_token).await.json().await.unwrap();
    assert_eq!(keys["key_epoch"], 1);
    assert_eq!(STANDARD.decode(keys["key_envelope"].as_str().unwrap()).unwrap(), envelope);
    let first: Value = app.get("/auth/keys", &desktop.access_token).await.json().await.unwrap();
    assert_eq!(first, json!({"key_epoch": 1, "key_envelope": null}));

    // Nothing on disk but sealed bytes.
    let conn = app.open_user_db(desktop.user_id).await;
    let mut rows = conn.query("SELECT envelope FROM key_envelopes", ()).await.unwrap();
    let stored: Vec<u8> = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(stored, sealed);
    assert!(!stored.windows(user_key.len()).any(|w| w == user_key));
    let control = app.state.control.conn().await.unwrap();
    let mut rows = control.query("SELECT key_envelope FROM pairings", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<Option<Vec<u8>>>(0).unwrap(), None, "dropped once delivered");

    // The pairing is a device event by the approver.
    let log: Value = app.get("/sync/events", &session.access_token).await.json().await.unwrap();
    let paired =
        log["events"].as_array().unwrap().iter().find(|e| e["aggregate_id"] == new_device_id.as_str()).unwrap();
    assert_eq!(paired["device_id"], desktop.device_id.to_string());
    let payload: Value =
        serde_json::from_slice(&STANDARD.decode(paired["payload"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(payload["action"], "paired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_device_long_polls_for_the_result() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let phone = NewDevice::new();
    let (pairing_id, token) = claimed(&app, &desktop, &phone).await;
    let waiting = app
        .client
        .get(app.url(&format!("/auth/pairing/{pairing_id}/result?wait=30")))
        .header("x-claim-token", &token)
        .send();
    let waiter = tokio::spawn(async move {
        let resp = waiting.await.unwrap();
        (Instant::now(), resp.status())
    });
    // Waiting for the decision before it is made: only the wake-up answers it early.
    let started = Instant::now();
    while app.state.pairing_updates.waiting() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the result request never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!waiter.is_finished());
    assert_eq!(approve(&app, &desktop, &pairing_id, b"sealed").await.status(), StatusCode::OK);
    let approved_at = Instant::now();
    let (answered_at, status) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(answered_at.duration_since(approved_at) < Duration::from_secs(1));

    let resp = result(&app, &pairing_id, &token, "?wait=61").await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_query").await;
}

#[tokio::test]
async fn pairings_expire_on_the_service_clock() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let phone = NewDevice::new();

    let unclaimed = start(&app, &desktop).await;
    let (pairing_id, token) = claimed(&app, &desktop, &phone).await;
    app.clock.advance(chrono::Duration::minutes(11));

    assert_error(
        claim(&app, &phone.claim_body(unclaimed["code"].as_str().unwrap())).await,
        StatusCode::NOT_FOUND,
        "pairing_not_found",
    )
    .await;
    let seen: Value =
        app.get(&format!("/auth/pairing/{pairing_id}"), &desktop.access_token).await.json().await.unwrap();
    assert_eq!(seen["status"], "expired");
    assert_error(approve(&app, &desktop, &pairing_id, b"sealed").await, StatusCode::NOT_FOUND, "pairing_expired").await;
    assert_error(result(&app, &pairing_id, &token, "").await, StatusCode::NOT_FOUND, "pairing_expired").await;
    assert_eq!(app.devices(&desktop).await.len(), 1, "no device was created");
}

#[tokio::test]
async fn a_rejected_pairing_answers_403_to_the_new_device() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let (pairing_id, token) = claimed(&app, &desktop, &NewDevice::new()).await;
    let resp = app.post(&format!("/auth/pairing/{pairing_id}/reject"), Some(&desktop.access_token), &json!({})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_error(result(&app, &pairing_id, &token, "").await, StatusCode::FORBIDDEN, "pairing_rejected").await;
    assert_error(approve(&app, &desktop, &pairing_id, b"x").await, StatusCode::CONFLICT, "pairing_already_decided")
        .await;
    let seen: Value =
        app.get(&format!("/auth/pairing/{pairing_id}"), &desktop.access_token).await.json().await.unwrap();
    assert_eq!(seen["status"], "rejected");
}

#[tokio::test]
async fn wrong_codes_tokens_users_and_repeats_are_refused() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let stranger = app.register().await;
    let phone = NewDevice::new();
    // Read from a scrape: the counter lives in the server's recorder.
    let failures = || async {
        let body = app.scrape().await;
        body.lines()
            .find_map(|line| line.strip_prefix("echolia_pairing_failures_total "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };

    assert_error(claim(&app, &phone.claim_body("ZZZZ-ZZZZ")).await, StatusCode::NOT_FOUND, "pairing_not_found").await;
    assert_error(claim(&app, &phone.claim_body("not a code")).await, StatusCode::NOT_FOUND, "pairing_not_found").await;
    assert_eq!(failures().await, 2, "failed claims are counted");

    let started = start(&app, &desktop).await;
    let code = started["code"].as_str().unwrap();
    assert_eq!(claim(&app, &phone.claim_body(code)).await.status(), StatusCode::ACCEPTED);
    assert_error(claim(&app, &phone.claim_body(code)).await, StatusCode::NOT_FOUND, "pairing_not_found").await;
    assert_eq!(failures().await, 3, "a reused code is a failed claim");
    let pairing_id = started["pairing_id"].as_str().unwrap();

    // Another pairing's claim token does not open this one.
    let (_, other_token) = claimed(&app, &desktop, &NewDevice::new()).await;
    assert_error(result(&app, pairing_id, &other_token, "").await, StatusCode::FORBIDDEN, "invalid_claim_token").await;
    assert_error(result(&app, pairing_id, "", "").await, StatusCode::FORBIDDEN, "invalid_claim_token").await;
    let unknown = Uuid::new_v4();
    assert_error(
        result(&app, &unknown.to_string(), &other_token, "").await,
        StatusCode::NOT_FOUND,
        "pairing_not_found",
    )
    .await;

    // Another user's pairing is not there for them.
    assert_error(approve(&app, &stranger, pairing_id, b"x").await, StatusCode::NOT_FOUND, "pairing_not_found").await;
    let resp = app.get(&format!("/auth/pairing/{pairing_id}"), &stranger.access_token).await;
    assert_error(resp, StatusCode::NOT_FOUND, "pairing_not_found").await;

    // Envelopes over 64 KiB are too large; approving twice is a conflict.
    let resp = approve(&app, &desktop, pairing_id, &vec![1u8; 64 * 1024 + 1]).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "key_envelope_too_large").await;
    assert_eq!(approve(&app, &desktop, pairing_id, b"sealed").await.status(), StatusCode::OK);
    assert_error(approve(&app, &desktop, pairing_id, b"sealed").await, StatusCode::CONFLICT, "pairing_already_decided")
        .await;

    // Approving before anyone claimed is a conflict too.
    let unclaimed = start(&app, &desktop).await;
    let resp = approve(&app, &desktop, unclaimed["pairing_id"].as_str().unwrap(), b"x").await;
    assert_error(resp, StatusCode::CONFLICT, "pairing_not_claimed").await;
    assert_eq!(app.devices(&desktop).await.len(), 2, "only the one approved pairing made a device");
}

#[tokio::test]
async fn open_pairings_and_claim_attempts_are_limited() {
    let app = spawn_app_with(&[("PAIRING_CLAIM_RATE_LIMIT", "3")]).await;
    let desktop = app.register().await;
    for _ in 0..5 {
        start(&app, &desktop).await;
    }
    let resp = app.post("/auth/pairing", Some(&desktop.access_token), &json!({})).await;
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry_after));
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "too_many_pairings").await;

    let phone = NewDevice::new();
    for _ in 0..3 {
        assert_eq!(claim(&app, &phone.claim_body("AAAA-AAAA")).await.status(), StatusCode::NOT_FOUND);
    }
    let resp = claim(&app, &phone.claim_body("AAAA-AAAA")).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Expired pairings stop counting.
    app.clock.advance(chrono::Duration::minutes(11));
    start(&app, &desktop).await;
}

#[tokio::test]
async fn a_pairing_survives_a_restart() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let phone = NewDevice::new();
    let (pairing_id, token) = claimed(&app, &desktop, &phone).await;
    let app = app.restart().await;
    let sealed = phone.secret.public_key().seal(&mut OsRng, b"user key").unwrap();
    assert_eq!(approve(&app, &desktop, &pairing_id, &sealed).await.status(), StatusCode::OK);
    let app = app.restart().await;
    let resp = result(&app, &pairing_id, &token, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let envelope = STANDARD.decode(body["key_envelope"].as_str().unwrap()).unwrap();
    assert_eq!(phone.secret.unseal(&envelope).unwrap(), b"user key");
    assert_eq!(app.get("/auth/devices", body["access_token"].as_str().unwrap()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_collected_result_is_not_stored_by_caches() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let (pairing_id, token) = claimed(&app, &desktop, &NewDevice::new()).await;
    assert_eq!(approve(&app, &desktop, &pairing_id, b"sealed").await.status(), StatusCode::OK);
    let resp = result(&app, &pairing_id, &token, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    crate::hardening::assert_not_cached(&resp);
}
