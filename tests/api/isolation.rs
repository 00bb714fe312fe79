//! User isolation, for every route: user B's token on user A's ids gets 404
//! (or the documented status) and changes nothing of A's; routes that take no
//! id answer B with B's data only.
//!
//! The routes come from the OpenAPI document of the real app (every route is
//! registered through it, see `openapi.rs`), so a new route fails this test
//! until it is classified below.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{device_body, event, spawn_app, Session, TestApp};

/// How a route relates to users.
enum Scope {
    /// Takes an id of A's in its path: B gets exactly this status.
    Id(StatusCode),
    /// Takes no id: acts on and answers the caller's own data.
    Caller,
    /// Not user-scoped, and why.
    NotUserScoped(&'static str),
}

/// Every operation of the document, classified. A missing or extra entry fails the test.
fn scope(method: &str, path: &str) -> Option<Scope> {
    use Scope::*;
    Some(match (method, path) {
        ("GET", "/health") => NotUserScoped("service status, no user data"),
        ("POST", "/auth/register") => NotUserScoped("anonymous: creates a new user"),
        ("POST", "/auth/refresh") => {
            NotUserScoped("the refresh token itself names its user and device; no id is taken")
        }
        ("POST", "/auth/pairing/claim") => NotUserScoped("anonymous, by code; the code's owner approves or rejects"),
        ("POST", "/webhooks/apple") | ("POST", "/webhooks/google") => {
            NotUserScoped("store notifications, authenticated by the store's signature")
        }
        ("GET", "/llm/ohttp-keys") => NotUserScoped("the gateway's public key configuration"),
        ("POST", "/llm/ohttp") => {
            NotUserScoped("the encapsulated request carries its own bearer token and is served by the routes here")
        }
        ("DELETE", "/auth/device/{device_id}") => Id(StatusCode::NOT_FOUND),
        ("GET", "/auth/pairing/{pairing_id}") => Id(StatusCode::NOT_FOUND),
        ("POST", "/auth/pairing/{pairing_id}/approve") => Id(StatusCode::NOT_FOUND),
        ("POST", "/auth/pairing/{pairing_id}/reject") => Id(StatusCode::NOT_FOUND),
        // Authenticated by the claim token, not a bearer: B's claim token on A's pairing.
        ("GET", "/auth/pairing/{pairing_id}/result") => Id(StatusCode::FORBIDDEN),
        ("GET", "/audit/devices/{device_id}/history") => Id(StatusCode::NOT_FOUND),
        ("POST", "/auth/pair-device")
        | ("GET", "/auth/devices")
        | ("PATCH", "/auth/devices/current")
        | ("POST", "/auth/pairing")
        | ("GET", "/auth/keys")
        | ("POST", "/auth/keys/rotate")
        | ("GET", "/account")
        | ("DELETE", "/account")
        | ("GET", "/account/export")
        | ("GET", "/account/entitlement")
        | ("POST", "/payments/apple/transactions")
        | ("POST", "/payments/google/subscriptions")
        | ("POST", "/sync/push")
        | ("GET", "/sync/pull")
        | ("GET", "/sync/events")
        | ("GET", "/sync/status")
        | ("POST", "/llm/v1/chat/completions")
        | ("POST", "/llm/v1/embeddings")
        | ("GET", "/llm/v1/models")
        | ("GET", "/llm/usage")
        | ("GET", "/embeddings/capability")
        | ("POST", "/embeddings") => Caller,
        _ => return None,
    })
}

/// What B sends: a body naming A's things wherever a body takes ids.
fn body(method: &str, path: &str, a: &World, b: &Session) -> Option<Value> {
    Some(match (method, path) {
        ("POST", "/auth/pair-device") => device_body("B's new phone", "mobile"),
        ("PATCH", "/auth/devices/current") => json!({"device_name": "B renamed"}),
        ("POST", "/auth/pairing") => json!({}),
        ("POST", "/auth/pairing/{pairing_id}/approve") => json!({"key_envelope": STANDARD.encode([1u8; 48])}),
        ("POST", "/auth/keys/rotate") => json!({"key_epoch": 1, "envelopes": [
            {"device_id": a.session.device_id, "key_envelope": STANDARD.encode([2u8; 48])},
            {"device_id": a.second.device_id, "key_envelope": STANDARD.encode([2u8; 48])},
            {"device_id": b.device_id, "key_envelope": STANDARD.encode([2u8; 48])}]}),
        // B writes to an aggregate id of A's: it lands in B's log, not A's.
        ("POST", "/sync/push") => {
            json!({"events": [event("entry", a.aggregate, "put", &[(b.device_id, 1)], Some(b"B's"))]})
        }
        ("POST", "/payments/apple/transactions") => json!({"signed_transaction": "e30.e30.sig"}),
        ("POST", "/payments/google/subscriptions") => json!({"product_id": "pro", "purchase_token": "token"}),
        ("POST", "/llm/v1/chat/completions") => json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/llm/v1/embeddings") => json!({"model": "m", "input": "hi"}),
        (_, _) if method == "POST" => json!({}),
        _ => return None,
    })
}

/// A's account: two devices, events, an open claimed pairing.
struct World {
    session: Session,
    second: Session,
    aggregate: Uuid,
    pairing_id: String,
    /// Strings that only A's data contains.
    markers: Vec<String>,
}

async fn build_a(app: &TestApp) -> World {
    let name = format!("Alice laptop {}", Uuid::new_v4());
    let session = app.register_body(&device_body(&name, "desktop")).await;
    let second = app.pair(&session, "Alice phone").await;
    let aggregate = Uuid::new_v4();
    let payload = b"alice's ciphertext, never B's".to_vec();
    let events = vec![
        event("entry", aggregate, "put", &[(session.device_id, 1)], Some(&payload)),
        event("memory", Uuid::new_v4(), "put", &[(session.device_id, 1), (second.device_id, 1)], Some(&payload)),
    ];
    let mut markers = vec![
        session.user_id.to_string(),
        session.device_id.to_string(),
        second.device_id.to_string(),
        name,
        STANDARD.encode(&payload),
    ];
    markers.extend(events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()));
    app.push_ok(&session, &events).await;
    let resp = app.post("/auth/pairing", Some(&session.access_token), &json!({})).await;
    let started: Value = resp.json().await.unwrap();
    let claim = json!({"code": started["code"], "device_name": "A's third", "device_type": "mobile",
                       "platform": "ios", "public_key": STANDARD.encode([3u8; 32])});
    assert_eq!(app.post("/auth/pairing/claim", None, &claim).await.status(), StatusCode::ACCEPTED);
    let pairing_id = started["pairing_id"].as_str().unwrap().to_owned();
    markers.push(pairing_id.clone());
    World { session, second, aggregate, pairing_id, markers }
}

/// Everything A can read of its own account; last-seen times aside.
async fn snapshot(app: &TestApp, a: &World) -> BTreeMap<String, Value> {
    let token = &a.session.access_token;
    let mut out = BTreeMap::new();
    for path in [
        "/sync/status".to_owned(),
        "/sync/events?since=0".to_owned(),
        "/sync/pull?since=0".to_owned(),
        "/auth/devices".to_owned(),
        "/auth/keys".to_owned(),
        "/account".to_owned(),
        format!("/audit/devices/{}/history", a.second.device_id),
        format!("/auth/pairing/{}", a.pairing_id),
    ] {
        let resp = app.get(&path, token).await;
        assert_eq!(resp.status(), StatusCode::OK, "A reads {path}");
        let mut body: Value = resp.json().await.unwrap();
        if let Some(devices) = body["devices"].as_array_mut() {
            for device in devices {
                device.as_object_mut().unwrap().remove("last_seen_at");
            }
        }
        out.insert(path, body);
    }
    out
}

#[tokio::test]
async fn another_users_token_reaches_none_of_a_users_data_on_any_route() {
    let app = spawn_app().await;
    let a = build_a(&app).await;
    let b = app.register().await;
    // B's own claimed pairing, for its claim token.
    let resp = app.post("/auth/pairing", Some(&b.access_token), &json!({})).await;
    let started: Value = resp.json().await.unwrap();
    let claim = json!({"code": started["code"], "device_name": "B's other", "device_type": "mobile",
                       "platform": "ios", "public_key": STANDARD.encode([4u8; 32])});
    let claimed: Value = app.post("/auth/pairing/claim", None, &claim).await.json().await.unwrap();
    let b_claim_token = claimed["claim_token"].as_str().unwrap().to_owned();
    let before = snapshot(&app, &a).await;

    let spec: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut operations = Vec::new();
    let mut unclassified = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_none() {
                continue;
            }
            let method = method.to_uppercase();
            match scope(&method, path) {
                Some(scope) => operations.push((method, path.clone(), scope)),
                None => unclassified.push(format!("{method} {path}")),
            }
        }
    }
    assert!(
        unclassified.is_empty(),
        "classify these routes in tests/api/isolation.rs (user-scoped by id, by caller, or not user-scoped): {unclassified:?}"
    );
    // B deletes its own account last.
    operations.sort_by_key(|(method, path, _)| (method == "DELETE" && path == "/account", path.clone()));

    let mut covered = 0;
    for (method, path, scope) in &operations {
        if let Scope::NotUserScoped(why) = scope {
            println!("{method} {path}: not user-scoped ({why})");
            continue;
        }
        covered += 1;
        let url = path.replace("{device_id}", &a.second.device_id.to_string()).replace("{pairing_id}", &a.pairing_id);
        let url = match path.as_str() {
            "/sync/pull" | "/sync/events" => format!("{url}?since=0"),
            _ => url,
        };
        let mut req = app.client.request(Method::from_bytes(method.as_bytes()).unwrap(), app.url(&url));
        req = if path.ends_with("/result") {
            req.header("x-claim-token", &b_claim_token)
        } else {
            req.bearer_auth(&b.access_token)
        };
        let sent = body(method, path, &a, &b);
        if let Some(body) = &sent {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        if let Scope::Id(expected) = scope {
            assert_eq!(status, *expected, "{method} {path} with B's credentials on A's id: {text}");
        }
        assert!(
            !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {status} {text}"
        );
        let asked = format!("{url} {}", sent.map(|b| b.to_string()).unwrap_or_default());
        for marker in a.markers.iter().filter(|marker| !asked.contains(marker.as_str())) {
            assert!(!text.contains(marker.as_str()), "{method} {path} showed B some of A's data ({marker}): {text}");
        }
    }
    assert!(covered >= 25, "only {covered} user-scoped operations were driven");

    assert_eq!(snapshot(&app, &a).await, before, "B's requests changed A's account");
    // A's pairing is still A's to approve.
    let resp = app
        .post(
            &format!("/auth/pairing/{}/approve", a.pairing_id),
            Some(&a.session.access_token),
            &json!({"key_envelope": STANDARD.encode([1u8; 48])}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}
