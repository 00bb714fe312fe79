//! What is stored: the event log and its chain, the devices view, restarts,
//! the bounded set of open databases, health and docs.

use std::collections::HashSet;

use echolia::events::device::DeviceAction;
use echolia::events::hash::ChainVerifier;
use echolia::events::log::read_after;
use echolia::events::Kind;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{device_body, spawn_app, spawn_app_with, user_db_files};

#[tokio::test]
async fn device_actions_are_events_in_a_verified_chain() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let phone = app.pair(&desktop, "Phone").await;
    let resp = app.delete(&format!("/auth/device/{}", phone.device_id), &desktop.access_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let conn = app.open_user_db(desktop.user_id).await;
    let events = read_after(&conn, 0, 100).await.unwrap();
    let mut verifier = ChainVerifier::default();
    for event in &events {
        verifier.check(event).unwrap();
        assert_eq!(event.event.kind, Kind::Device);
    }
    assert_eq!(verifier.head().0, 3);
    let actions: Vec<(DeviceAction, _, _)> = events
        .iter()
        .map(|e| {
            let action = DeviceAction::from_payload(e.event.payload.as_deref().unwrap()).unwrap();
            (action, e.device_id, e.event.aggregate_id)
        })
        .collect();
    assert!(
        matches!(actions[0], (DeviceAction::Registered(_), actor, of) if actor == desktop.device_id && of == desktop.device_id)
    );
    assert!(
        matches!(actions[1], (DeviceAction::Paired(_), actor, of) if actor == desktop.device_id && of == phone.device_id)
    );
    assert!(
        matches!(actions[2], (DeviceAction::Revoked, actor, of) if actor == desktop.device_id && of == phone.device_id)
    );

    // The log is append-only, even for someone with a connection.
    assert!(conn.execute("DELETE FROM events", ()).await.is_err());
    assert!(conn.execute("UPDATE events SET payload = x'00'", ()).await.is_err());

    // The view equals a fresh fold of the log.
    let mut folded = std::collections::BTreeMap::new();
    for event in &events {
        let current = folded.remove(&event.event.aggregate_id);
        if let Some(row) = echolia::projection::devices::apply(current, event).unwrap() {
            folded.insert(event.event.aggregate_id, row);
        }
    }
    let stored = echolia::views::devices::list(&conn).await.unwrap();
    let mut stored_by_id: Vec<_> = stored.into_iter().map(|row| (row.device_id, row)).collect();
    stored_by_id.sort_by_key(|(id, _)| *id);
    assert_eq!(stored_by_id, folded.into_iter().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pairings_keep_seq_gapless_and_the_chain_linear() {
    let app = spawn_app().await;
    let desktop = app.register().await;
    let mut pairings = tokio::task::JoinSet::new();
    for i in 0..24 {
        let request = app
            .client
            .post(app.url("/auth/pair-device"))
            .bearer_auth(&desktop.access_token)
            .json(&device_body(&format!("Device {i}"), "mobile"));
        pairings.spawn(async move { request.send().await.unwrap().status() });
    }
    while let Some(status) = pairings.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }

    let conn = app.open_user_db(desktop.user_id).await;
    let events = read_after(&conn, 0, 1000).await.unwrap();
    assert_eq!(events.len(), 25);
    let mut verifier = ChainVerifier::default();
    events.iter().for_each(|e| verifier.check(e).unwrap());
    let devices = app.devices(&desktop).await;
    assert_eq!(devices.len(), 25);
    let ids: HashSet<&str> = devices.iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 25);
}

#[tokio::test]
async fn a_restart_keeps_users_devices_tokens_and_revocations() {
    // No JWT_SECRET: the development secret is generated into DATA_DIR and reused.
    let app = spawn_app_with(&[("JWT_SECRET", "")]).await;
    assert!(app.data_dir().join("jwt_secret").exists());
    let alice = app.register().await;
    let alice_phone = app.pair(&alice, "Phone").await;
    let alice_tablet = app.pair(&alice, "Tablet").await;
    let bob = app.register().await;
    let resp = app.delete(&format!("/auth/device/{}", alice_tablet.device_id), &alice.access_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let before: Vec<Value> = app.devices(&alice).await;

    let app = app.restart().await;

    assert_eq!(app.devices(&alice).await, before);
    assert_eq!(app.devices(&bob).await.len(), 1);
    assert_eq!(app.get("/auth/devices", &alice_phone.access_token).await.status(), StatusCode::OK);
    let resp = app.get("/auth/devices", &alice_tablet.access_token).await;
    crate::helpers::assert_error(resp, StatusCode::UNAUTHORIZED, "device_revoked").await;
    assert_eq!(app.refresh(&bob.refresh_token).await.status(), StatusCode::OK);
    assert_eq!(user_db_files(&app).len(), 2);

    let conn = app.state.control.conn().await.unwrap();
    let mut rows = conn.query("SELECT count(*) FROM users", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap(), 2);
}

#[tokio::test]
async fn open_databases_are_bounded_and_reopen_transparently() {
    let app = spawn_app_with(&[("MAX_OPEN_DATABASES", "2")]).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(app.register().await);
    }
    for _ in 0..2 {
        for session in &sessions {
            let devices = app.devices(session).await;
            assert_eq!(devices[0]["device_id"], session.device_id.to_string());
            assert!(app.state.users.open_count() <= 2);
        }
    }
}

#[tokio::test]
async fn health_checks_the_database() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn docs_are_served_in_development_only() {
    let app = spawn_app().await;
    let spec: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = [
        "/health",
        "/auth/register",
        "/auth/pair-device",
        "/auth/refresh",
        "/auth/devices",
        "/auth/devices/current",
        "/auth/device/{device_id}",
        "/auth/pairing",
        "/auth/pairing/claim",
        "/auth/pairing/{pairing_id}",
        "/auth/pairing/{pairing_id}/approve",
        "/auth/pairing/{pairing_id}/reject",
        "/auth/pairing/{pairing_id}/result",
        "/auth/keys",
        "/auth/keys/rotate",
        "/audit/devices/{device_id}/history",
        "/account",
        "/account/export",
        "/sync/push",
        "/sync/pull",
        "/sync/events",
        "/sync/status",
    ];
    for path in paths {
        assert!(spec["paths"].get(path).is_some(), "{path} is documented");
    }
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(!html.contains("https://"), "the docs page loads nothing from the network");
    let script = app.client.get(app.url("/docs/swagger-ui-bundle.js")).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK, "assets are vendored");

    let prod = spawn_app_with(&[("ENVIRONMENT", "production")]).await;
    let resp = prod.client.get(prod.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(prod.client.get(prod.url("/docs/")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
}
