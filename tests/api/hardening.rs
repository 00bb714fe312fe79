//! Issue 23's findings, each held by a test that failed before its fix.

use reqwest::{Response, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{device_body, spawn_app, spawn_app_with, Session};

#[tokio::test]
async fn request_id_from_the_client_is_echoed_only_when_short_and_visible_ascii() {
    let app = spawn_app().await;
    let echoed = |id: String| {
        let (client, url) = (app.client.clone(), app.url("/health"));
        async move {
            let resp = client.get(url).header("x-request-id", id).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    let good = "client-id_0123:abc".to_owned();
    assert_eq!(echoed(good.clone()).await, good);
    let longest = "~".repeat(64);
    assert_eq!(echoed(longest.clone()).await, longest);

    for bad in ["a".repeat(4 * 1024), "b".repeat(65), "has space".to_owned(), "tab\there".to_owned(), String::new()] {
        let got = echoed(bad.clone()).await;
        assert!(got != bad, "echoed a {}-byte id", bad.len());
        assert!(Uuid::parse_str(&got).is_ok(), "a generated id, not {:.80}", got);
    }
    // A head past the connection's 8 KiB read buffer is refused before any handler.
    let huge = app.client.get(app.url("/health")).header("x-request-id", "a".repeat(9 * 1024)).send().await.unwrap();
    assert_eq!(huge.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

/// A response carrying tokens must not be kept by any cache.
pub fn assert_not_cached(resp: &Response) {
    assert_eq!(resp.headers().get("cache-control").map(|v| v.to_str().unwrap()), Some("no-store"), "{}", resp.url());
    assert_eq!(resp.headers().get("pragma").map(|v| v.to_str().unwrap()), Some("no-cache"), "{}", resp.url());
}

#[tokio::test]
async fn token_responses_are_not_stored_by_caches() {
    let app = spawn_app().await;
    let resp = app.post("/auth/register", None, &device_body("Desktop", "desktop")).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_not_cached(&resp);
    let desktop = Session::from_json(&resp.json().await.unwrap());

    let resp = app.post("/auth/pair-device", Some(&desktop.access_token), &device_body("Phone", "mobile")).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_not_cached(&resp);

    let resp = app.refresh(&desktop.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_not_cached(&resp);
}

#[tokio::test]
async fn health_hides_the_version_in_production() {
    let app = spawn_app_with(&[("ENVIRONMENT", "production"), ("JWT_SECRET", crate::helpers::JWT_SECRET)]).await;
    let resp = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    assert!(body.get("version").is_none(), "version shown in production: {body}");

    let dev = spawn_app().await;
    let body: Value = dev.client.get(dev.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

/// Opens a pairing from `by` and claims it; its id and the claim token.
async fn claimed_pairing(app: &crate::helpers::TestApp, by: &Session) -> (String, String, String) {
    let resp = app.post("/auth/pairing", Some(&by.access_token), &serde_json::json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let started: Value = resp.json().await.unwrap();
    let code = started["code"].as_str().unwrap().to_owned();
    let mut claim = device_body("Phone", "mobile");
    claim["code"] = Value::String(code.clone());
    let resp = app.post("/auth/pairing/claim", None, &claim).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let claimed: Value = resp.json().await.unwrap();
    (started["pairing_id"].as_str().unwrap().to_owned(), claimed["claim_token"].as_str().unwrap().to_owned(), code)
}

#[tokio::test]
async fn the_document_says_a_missing_claim_token_answers_403() {
    let app = spawn_app().await;
    let a = app.register().await;
    let (pairing_id, _, _) = claimed_pairing(&app, &a).await;
    let resp = app.client.get(app.url(&format!("/auth/pairing/{pairing_id}/result"))).send().await.unwrap();
    crate::helpers::assert_error(resp, StatusCode::FORBIDDEN, "invalid_claim_token").await;

    let spec: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let operation = &spec["paths"]["/auth/pairing/{pairing_id}/result"]["get"];
    let forbidden = operation["responses"]["403"]["description"].as_str().unwrap();
    assert!(forbidden.contains("missing"), "403 must name a missing X-Claim-Token: {forbidden}");
    let bad_request = operation["responses"]["400"]["description"].as_str().unwrap();
    assert!(!bad_request.contains("X-Claim-Token"), "{bad_request}");
    let header = operation["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "X-Claim-Token").unwrap();
    assert!(header["description"].as_str().unwrap().contains("403"), "{header}");
}

#[tokio::test]
async fn pairing_codes_are_stored_keyed_with_a_server_secret_and_still_claim() {
    use sha2::{Digest, Sha256};
    let app = spawn_app().await;
    let a = app.register().await;
    let (pairing_id, claim_token, code) = claimed_pairing(&app, &a).await;
    let canonical = code.replace('-', "");

    let db = libsql::Builder::new_local(app.data_dir().join("control.db")).build().await.unwrap();
    let conn = db.connect().unwrap();
    let mut rows =
        conn.query("SELECT code_hash FROM pairings WHERE pairing_id = ?1", [pairing_id.clone()]).await.unwrap();
    let stored: Vec<u8> = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(stored.len(), 32);
    for plain in [canonical.as_str(), code.as_str()] {
        assert_ne!(stored, Sha256::digest(plain.as_bytes()).to_vec(), "an unkeyed SHA-256 of the code");
    }

    // The claim above found the pairing by its keyed hash; approval and collection follow.
    let approve = serde_json::json!({ "key_envelope": "c2VhbGVk" });
    let resp = app.post(&format!("/auth/pairing/{pairing_id}/approve"), Some(&a.access_token), &approve).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = crate::pairing::result(&app, &pairing_id.to_string(), &claim_token, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
}
