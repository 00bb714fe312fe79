//! Every bad input the foundation names: the right 4xx, the JSON error
//! shape, and nothing changed.

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, device_body, sign, spawn_app, user_db_files, TestApp};

async fn raw_register(app: &TestApp, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> reqwest::Response {
    let mut req = app.client.post(app.url("/auth/register")).body(body);
    if let Some(content_type) = content_type {
        req = req.header("content-type", content_type);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn malformed_register_bodies_are_rejected_and_create_nothing() {
    let app = spawn_app().await;

    let resp = raw_register(&app, Some("application/json"), "{\"device_name\": ").await;
    assert_error(resp, StatusCode::BAD_REQUEST, "malformed_json").await;
    let resp = raw_register(&app, Some("application/json"), "").await;
    assert_error(resp, StatusCode::BAD_REQUEST, "malformed_json").await;

    let resp = raw_register(&app, Some("text/plain"), device_body("A", "desktop").to_string()).await;
    assert_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    let resp = raw_register(&app, None, device_body("A", "desktop").to_string()).await;
    assert_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;

    let huge = json!({"device_name": "x".repeat(1024 * 1024 + 1)}).to_string();
    let resp = raw_register(&app, Some("application/json"), huge).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;

    for field in ["device_name", "device_type", "platform", "public_key"] {
        let mut body = device_body("A", "desktop");
        body.as_object_mut().unwrap().remove(field);
        let message = assert_error(
            app.post("/auth/register", None, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(message.contains(field), "{field}: {message}");
    }

    let wrongly_typed: [(&str, Value); 5] = [
        ("device_name", json!(42)),
        ("device_type", json!(["desktop"])),
        ("platform", json!(null)),
        ("public_key", json!({"pem": "x"})),
        ("capabilities", json!("all of them")),
    ];
    for (field, value) in wrongly_typed {
        let mut body = device_body("A", "desktop");
        body[field] = value;
        let message = assert_error(
            app.post("/auth/register", None, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(message.starts_with(field), "{field}: {message}");
    }

    let invalid: [(&str, Value); 6] = [
        ("device_type", json!("toaster")),
        ("public_key", json!("k".repeat(4 * 1024 + 1))),
        ("public_key", json!("   ")),
        ("device_name", json!("")),
        ("device_name", json!("n".repeat(101))),
        ("platform", json!("p".repeat(65))),
    ];
    for (field, value) in invalid {
        let mut body = device_body("A", "desktop");
        body[field] = value;
        let message = assert_error(
            app.post("/auth/register", None, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(message.starts_with(field), "{field}: {message}");
    }

    let at_limit = {
        let mut body = device_body("A", "desktop");
        body["public_key"] = json!("k".repeat(4 * 1024));
        body
    };
    let resp = app.post("/auth/register", None, &at_limit).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "exactly 4 KiB is allowed");
    assert_eq!(user_db_files(&app).len(), 1, "only the valid registration made a database");
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let app = spawn_app().await;
    let session = app.register().await;
    let now = chrono::Utc::now().timestamp();
    let claims = |typ: &str, exp: i64| json!({"sub": session.user_id, "did": session.device_id, "typ": typ, "iat": now, "exp": exp, "jti": uuid::Uuid::new_v4()});

    let resp = app.client.get(app.url("/auth/devices")).send().await.unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "missing_token").await;
    let resp = app.client.get(app.url("/auth/devices")).header("authorization", "Basic abc").send().await.unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_error(app.get("/auth/devices", "not.a.jwt").await, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let expired = sign(&claims("access", now - 120)); // beyond the 60 s clock skew
    assert_error(app.get("/auth/devices", &expired).await, StatusCode::UNAUTHORIZED, "token_expired").await;

    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims("access", now + 600),
        &jsonwebtoken::EncodingKey::from_secret(b"a-completely-different-secret-of-32-bytes"),
    )
    .unwrap();
    assert_error(app.get("/auth/devices", &other_key).await, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims("access", now + 600)));
    assert_error(app.get("/auth/devices", &unsigned).await, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // A refresh token is not an access token, and the reverse.
    assert_error(app.get("/auth/devices", &session.refresh_token).await, StatusCode::UNAUTHORIZED, "invalid_token")
        .await;
    assert_error(app.refresh(&session.access_token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // Well signed, but for a user or device that does not exist.
    let ghost_user = sign(
        &json!({"sub": uuid::Uuid::new_v4(), "did": session.device_id, "typ": "access", "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4()}),
    );
    assert_error(app.get("/auth/devices", &ghost_user).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let ghost_device = sign(
        &json!({"sub": session.user_id, "did": uuid::Uuid::new_v4(), "typ": "access", "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4()}),
    );
    assert_error(app.get("/auth/devices", &ghost_device).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // A well-signed refresh token that was never issued.
    let forged_refresh = sign(&claims("refresh", now + 600));
    assert_error(app.refresh(&forged_refresh).await, StatusCode::UNAUTHORIZED, "invalid_token").await;

    assert_eq!(user_db_files(&app).len(), 1, "no database was created for a ghost user");
    assert_eq!(app.get("/auth/devices", &session.access_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_ids_and_foreign_devices() {
    let app = spawn_app().await;
    let alice = app.register().await;
    let bob = app.register().await;

    let message = assert_error(
        app.delete("/auth/device/not-a-uuid", &alice.access_token).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
    assert!(message.contains("device_id"), "{message}");
    let resp = app.delete(&format!("/auth/device/{}", bob.device_id), &alice.access_token).await;
    assert_error(resp, StatusCode::NOT_FOUND, "device_not_found").await;
    let resp = app.delete(&format!("/auth/device/{}", uuid::Uuid::new_v4()), &alice.access_token).await;
    assert_error(resp, StatusCode::NOT_FOUND, "device_not_found").await;
    assert_eq!(app.get("/auth/devices", &bob.access_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_pairing_input_changes_nothing() {
    let app = spawn_app().await;
    let desktop = app.register().await;

    let mut body = device_body("Phone", "mobile");
    body["key_envelope"] = json!("not base64 at all!");
    let message = assert_error(
        app.post("/auth/pair-device", Some(&desktop.access_token), &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(message.starts_with("key_envelope"), "{message}");

    body["key_envelope"] = json!(base64::engine::general_purpose::STANDARD.encode(vec![7u8; 64 * 1024 + 1]));
    let resp = app.post("/auth/pair-device", Some(&desktop.access_token), &body).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "key_envelope_too_large").await;

    body["key_envelope"] = json!(null);
    body["device_type"] = json!("fridge");
    let resp = app.post("/auth/pair-device", Some(&desktop.access_token), &body).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    let resp = app.post("/auth/pair-device", None, &device_body("Phone", "mobile")).await;
    assert_error(resp, StatusCode::UNAUTHORIZED, "missing_token").await;

    assert_eq!(app.devices(&desktop).await.len(), 1);
    let conn = app.open_user_db(desktop.user_id).await;
    let mut rows = conn.query("SELECT count(*) FROM events", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap(), 1, "only the registration event");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/no/such/thing")).send().await.unwrap();
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app.client.get(app.url("/auth/register")).send().await.unwrap();
    assert_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let resp = app.client.post(app.url("/auth/refresh")).json(&json!({"refresh_token": 12})).send().await.unwrap();
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}
