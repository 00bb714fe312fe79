//! The Play Store against a local fake of Google: the OAuth token endpoint,
//! the Play Developer API (`subscriptionsv2.get`, `acknowledge`) and the OIDC
//! keys; push requests carry a token signed here with the test key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use echolia::clock::Clock;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app_with, Session, TestApp};
use crate::payments_apple::{account_tier, bearer, entitlement};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/payments");
const PACKAGE: &str = "com.example.echolia";
const PRODUCT: &str = "pro_monthly";
const AUDIENCE: &str = "https://sync.example.com/webhooks/google";
const PUSH_ACCOUNT: &str = "pubsub-push@example.iam.gserviceaccount.com";
const ACCESS_TOKEN: &str = "fake-access-token";

#[derive(Default)]
struct Fake {
    subscriptions: HashMap<String, Value>,
    acknowledged: Vec<(String, String)>,
    token_requests: usize,
    api_calls: usize,
    token_uri: String,
    /// The access token the API accepts: the last one issued.
    valid_token: String,
    /// The API refuses every token.
    reject_all: bool,
}

type Shared = Arc<Mutex<Fake>>;

fn jwks() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/google_test_jwks.json")).unwrap()).unwrap()
}

fn private_key() -> String {
    std::fs::read_to_string(format!("{FIXTURES}/google_test_key.pem")).unwrap()
}

/// The token endpoint: checks the JWT-bearer grant as Google would.
async fn token(State(fake): State<Shared>, body: String) -> Result<Json<Value>, AxumStatus> {
    assert!(body.starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&"), "{body}");
    let assertion = body.split("assertion=").nth(1).ok_or(AxumStatus::BAD_REQUEST)?;
    let jwk = &jwks()["keys"][0];
    let key = DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
    let token_uri = fake.lock().unwrap().token_uri.clone();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation).map_err(|_| AxumStatus::UNAUTHORIZED)?;
    assert_eq!(claims.claims["scope"], "https://www.googleapis.com/auth/androidpublisher");
    assert_eq!(claims.claims["iss"], "play@example.iam.gserviceaccount.com");
    let mut fake = fake.lock().unwrap();
    fake.token_requests += 1;
    let issued = format!("{ACCESS_TOKEN}-{}", fake.token_requests);
    fake.valid_token = issued.clone();
    Ok(Json(json!({"access_token": issued, "expires_in": 3599, "token_type": "Bearer"})))
}

fn authorized(headers: &HeaderMap, fake: &Shared) -> bool {
    let fake = fake.lock().unwrap();
    let expected = format!("Bearer {}", fake.valid_token);
    !fake.reject_all && headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

async fn subscription(
    State(fake): State<Shared>,
    Path((package, token)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, AxumStatus> {
    if !authorized(&headers, &fake) {
        return Err(AxumStatus::UNAUTHORIZED);
    }
    let mut fake = fake.lock().unwrap();
    fake.api_calls += 1;
    if package != PACKAGE {
        return Err(AxumStatus::NOT_FOUND);
    }
    fake.subscriptions.get(&token).cloned().map(Json).ok_or(AxumStatus::NOT_FOUND)
}

async fn acknowledge(
    State(fake): State<Shared>,
    Path((_package, product, token)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> AxumStatus {
    if !authorized(&headers, &fake) {
        return AxumStatus::UNAUTHORIZED;
    }
    let Some(token) = token.strip_suffix(":acknowledge") else { return AxumStatus::NOT_FOUND };
    let mut fake = fake.lock().unwrap();
    if let Some(sub) = fake.subscriptions.get_mut(token) {
        sub["acknowledgementState"] = json!("ACKNOWLEDGEMENT_STATE_ACKNOWLEDGED");
    }
    fake.acknowledged.push((product, token.to_owned()));
    AxumStatus::OK
}

/// Starts the fake Google on 127.0.0.1.
async fn fake_google() -> (SocketAddr, Shared) {
    let fake: Shared = Arc::default();
    let app = Router::new()
        .route("/token", post(token))
        .route("/certs", get(|| async { Json(jwks()) }))
        .route(
            "/androidpublisher/v3/applications/{package}/purchases/subscriptionsv2/tokens/{token}",
            get(subscription),
        )
        .route(
            "/androidpublisher/v3/applications/{package}/purchases/subscriptions/{product}/tokens/{token}",
            post(acknowledge),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    fake.lock().unwrap().token_uri = format!("http://{addr}/token");
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, fake)
}

async fn google_app(fake: SocketAddr, environment: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("service-account.json");
    let account = json!({
        "type": "service_account",
        "client_email": "play@example.iam.gserviceaccount.com",
        "private_key": private_key(),
        "token_uri": format!("http://{fake}/token"),
    });
    std::fs::write(&key_file, account.to_string()).unwrap();
    let app = spawn_app_with(&[
        ("GOOGLE_PACKAGE_NAME", PACKAGE),
        ("GOOGLE_SERVICE_ACCOUNT_FILE", key_file.to_str().unwrap()),
        ("GOOGLE_API_BASE_URL", &format!("http://{fake}")),
        ("GOOGLE_ENVIRONMENT", environment),
        ("GOOGLE_PUBSUB_AUDIENCE", AUDIENCE),
        ("GOOGLE_PUBSUB_SERVICE_ACCOUNT", PUSH_ACCOUNT),
        ("GOOGLE_OIDC_JWKS_URL", &format!("http://{fake}/certs")),
    ])
    .await;
    // The key file was read at start.
    drop(dir);
    app
}

fn purchase(state: &str, expiry: DateTime<Utc>, account: Option<Uuid>) -> Value {
    json!({
        "kind": "androidpublisher#subscriptionPurchaseV2",
        "startTime": "2026-01-01T00:00:00Z",
        "regionCode": "US",
        "subscriptionState": state,
        "latestOrderId": "GPA.0000-0000-0000-00000",
        "acknowledgementState": "ACKNOWLEDGEMENT_STATE_PENDING",
        "externalAccountIdentifiers": account.map(|id| json!({"obfuscatedExternalAccountId": id.to_string()})),
        "lineItems": [{"productId": PRODUCT, "expiryTime": expiry.to_rfc3339(), "autoRenewingPlan": {"autoRenewEnabled": true}}],
        "testPurchase": {},
    })
}

/// A push token as Google signs it for the push subscription.
fn oidc_token(audience: &str, email: &str, expires: DateTime<Utc>) -> String {
    sign_claims(&push_claims(audience, email, expires), &private_key())
}

fn push_claims(audience: &str, email: &str, expires: DateTime<Utc>) -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": audience,
        "email": email,
        "email_verified": true,
        "iat": (expires - Duration::hours(1)).timestamp(),
        "exp": expires.timestamp(),
        "sub": "1234567890",
    })
}

/// RS256 under Google's published key id `test-key-1`, with the key `pem`.
fn sign_claims(claims: &Value, pem: &str) -> String {
    let header = Header { kid: Some("test-key-1".into()), ..Header::new(Algorithm::RS256) };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn push_body(message_id: &str, notification: &Value) -> Value {
    json!({
        "message": {
            "data": STANDARD.encode(notification.to_string()),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": "2026-01-01T00:00:00Z",
        },
        "subscription": "projects/echolia/subscriptions/play-rtdn",
    })
}

fn subscription_notification(kind: i64, token: &str) -> Value {
    json!({
        "version": "1.0",
        "packageName": PACKAGE,
        "eventTimeMillis": "1767225600000",
        "subscriptionNotification": {"version": "1.0", "notificationType": kind, "purchaseToken": token, "subscriptionId": PRODUCT},
    })
}

async fn push(app: &TestApp, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = app.client.post(app.url("/webhooks/google")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn push_ok(app: &TestApp, message_id: &str, notification: &Value) -> String {
    let token = oidc_token(AUDIENCE, PUSH_ACCOUNT, app.clock.now() + Duration::hours(1));
    let resp = push(app, Some(&token), &push_body(message_id, notification)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.unwrap()["outcome"].as_str().unwrap().to_owned()
}

async fn post_subscription(app: &TestApp, session: &Session, token: &str) -> reqwest::Response {
    app.post(
        "/payments/google/subscriptions",
        Some(&bearer(app, session)),
        &json!({"product_id": PRODUCT, "purchase_token": token}),
    )
    .await
}

#[tokio::test]
async fn a_play_purchase_is_read_acknowledged_and_linked() {
    let (addr, fake) = fake_google().await;
    let app = google_app(addr, "Sandbox").await;
    let (alice, bob) = (app.register().await, app.register().await);
    let expiry = app.clock.now() + Duration::days(30);
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_ACTIVE", expiry, Some(alice.user_id)));

    let resp = post_subscription(&app, &alice, "tok-1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["entitlement"]["tier"], "pro");
    assert_eq!(body["entitlement"]["source"], "google");
    assert_eq!(body["entitlement"]["product_id"], PRODUCT);
    assert_eq!(fake.lock().unwrap().acknowledged, vec![(PRODUCT.to_owned(), "tok-1".to_owned())]);
    assert_eq!(account_tier(&app, &alice).await, "pro");

    // Again: read again, already acknowledged, the OAuth token reused.
    assert_eq!(post_subscription(&app, &alice, "tok-1").await.status(), StatusCode::OK);
    let counts = {
        let fake = fake.lock().unwrap();
        (fake.token_requests, fake.api_calls, fake.acknowledged.len())
    };
    assert_eq!(counts, (1, 2, 1));

    // Bob cannot claim Alice's purchase; an unknown token is refused.
    let resp = post_subscription(&app, &bob, "tok-1").await;
    assert_error(resp, StatusCode::FORBIDDEN, "account_mismatch").await;
    let resp = post_subscription(&app, &bob, "tok-unknown").await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "unknown_purchase").await;
    for bad in ["", "../../x", "tok 1", "tok/1"] {
        let resp = post_subscription(&app, &bob, bad).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    assert_eq!(entitlement(&app, &bob).await["tier"], "free");

    // The OAuth token expires: a new one is fetched.
    app.clock.advance(Duration::hours(2));
    fake.lock().unwrap().subscriptions.insert("tok-2".into(), purchase("SUBSCRIPTION_STATE_ACTIVE", expiry, None));
    assert_eq!(post_subscription(&app, &bob, "tok-2").await.status(), StatusCode::OK);
    assert_eq!(fake.lock().unwrap().token_requests, 2);
    assert_eq!(entitlement(&app, &bob).await["tier"], "pro", "no account id: linked to the caller");
}

#[tokio::test]
async fn sandbox_and_production_purchases_never_mix() {
    let (addr, fake) = fake_google().await;
    let app = google_app(addr, "Production").await;
    let user = app.register().await;
    let expiry = app.clock.now() + Duration::days(30);
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-test".into(), purchase("SUBSCRIPTION_STATE_ACTIVE", expiry, Some(user.user_id)));
    let resp = post_subscription(&app, &user, "tok-test").await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "wrong_environment").await;
    let outcome = push_ok(&app, "m-1", &subscription_notification(4, "tok-test")).await;
    assert_eq!(outcome, "ignored");
    assert_eq!(entitlement(&app, &user).await["tier"], "free");
    assert!(fake.lock().unwrap().acknowledged.is_empty());

    let mut real = purchase("SUBSCRIPTION_STATE_ACTIVE", expiry, Some(user.user_id));
    real.as_object_mut().unwrap().remove("testPurchase");
    fake.lock().unwrap().subscriptions.insert("tok-real".into(), real);
    assert_eq!(post_subscription(&app, &user, "tok-real").await.status(), StatusCode::OK);
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");
}

#[tokio::test]
async fn push_notifications_need_googles_token_for_our_audience() {
    let (addr, fake) = fake_google().await;
    let app = google_app(addr, "Sandbox").await;
    let now = app.clock.now();
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_ACTIVE", now + Duration::days(30), None));
    let body = push_body("m-auth", &subscription_notification(4, "tok-1"));
    let other_key = {
        // Same claims, signed with a key Google never published.
        let header = Header { kid: Some("test-key-1".into()), ..Header::new(Algorithm::HS256) };
        jsonwebtoken::encode(&header, &json!({"aud": AUDIENCE, "iss": "https://accounts.google.com", "exp": (now + Duration::hours(1)).timestamp()}), &EncodingKey::from_secret(b"secret")).unwrap()
    };
    let hour = now + Duration::hours(1);
    let claims = |change: &dyn Fn(&mut Value)| {
        let mut claims = push_claims(AUDIENCE, PUSH_ACCOUNT, hour);
        change(&mut claims);
        sign_claims(&claims, &private_key())
    };
    let other_rsa_key = std::fs::read_to_string(format!("{FIXTURES}/google_other_key.pem")).unwrap();
    for (name, token) in [
        ("none", None),
        ("garbage", Some("garbage".to_owned())),
        ("another audience", Some(oidc_token("https://attacker.example/", PUSH_ACCOUNT, hour))),
        ("another account", Some(oidc_token(AUDIENCE, "someone@example.com", hour))),
        ("expired", Some(oidc_token(AUDIENCE, PUSH_ACCOUNT, now - Duration::hours(1)))),
        ("HS256", Some(other_key)),
        // RS256 under Google's key id, signed with a key Google never published.
        ("another RSA key", Some(sign_claims(&push_claims(AUDIENCE, PUSH_ACCOUNT, hour), &other_rsa_key))),
        ("another issuer", Some(claims(&|c| c["iss"] = json!("https://attacker.example")))),
        ("no email", Some(claims(&|c| drop(c.as_object_mut().unwrap().remove("email"))))),
        ("unverified email", Some(claims(&|c| c["email_verified"] = json!(false)))),
    ] {
        let resp = push(&app, token.as_deref(), &body).await;
        assert_error(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
        assert_eq!(fake.lock().unwrap().api_calls, 0, "{name}: nothing read for a refused push");
    }
    // The same claims, signed by the published key, pass: the refusals above are the checks'.
    assert_eq!(push(&app, Some(&claims(&|_| {})), &body).await.status(), StatusCode::OK);
    // Without `email_verified`, the email alone is checked; the account's case does not matter.
    let body = push_body("m-auth-2", &subscription_notification(4, "tok-1"));
    let token = claims(&|c| {
        c.as_object_mut().unwrap().remove("email_verified");
        c["email"] = json!(PUSH_ACCOUNT.to_uppercase());
    });
    assert_eq!(push(&app, Some(&token), &body).await.status(), StatusCode::OK);
    // Undecodable data, with a good token: recorded and ignored (an error would make Pub/Sub retry it for days).
    let token = oidc_token(AUDIENCE, PUSH_ACCOUNT, hour);
    for data in [json!("not base64!"), json!(STANDARD.encode("{\"not\": \"a notification\"}")), Value::Null] {
        let message_id = format!("m-bad-{data}");
        let resp = push(&app, Some(&token), &json!({"message": {"messageId": message_id, "data": data}})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.json::<Value>().await.unwrap()["outcome"], "ignored");
        let resp = push(&app, Some(&token), &json!({"message": {"messageId": message_id, "data": data}})).await;
        assert_eq!(resp.json::<Value>().await.unwrap()["outcome"], "duplicate");
    }
    // No messageId is not a Pub/Sub push.
    let resp = push(&app, Some(&token), &json!({"message": {"data": "e30="}})).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    // Test notifications and other apps' are recorded and ignored.
    let test = json!({"version": "1.0", "packageName": PACKAGE, "eventTimeMillis": "1", "testNotification": {"version": "1.0"}});
    assert_eq!(push_ok(&app, "m-test", &test).await, "ignored");
    assert_eq!(push_ok(&app, "m-test", &test).await, "duplicate");
    let other = json!({"packageName": "com.other", "subscriptionNotification": {"notificationType": 4, "purchaseToken": "tok-1"}});
    assert_eq!(push_ok(&app, "m-other", &other).await, "ignored");

    // A purchase no user is known for: recorded, answered 200; the app's post links it.
    assert_eq!(push_ok(&app, "m-orphan", &subscription_notification(4, "tok-1")).await, "unlinked");
    let user = app.register().await;
    assert_eq!(post_subscription(&app, &user, "tok-1").await.status(), StatusCode::OK);
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");
    // A refund (voided purchase) takes access away at once.
    let voided = json!({
        "version": "1.0",
        "packageName": PACKAGE,
        "eventTimeMillis": "1767225600000",
        "voidedPurchaseNotification": {"purchaseToken": "tok-1", "orderId": "GPA.1", "productType": 1, "refundType": 1},
    });
    assert_eq!(push_ok(&app, "m-voided", &voided).await, "applied");
    let refunded = entitlement(&app, &user).await;
    assert_eq!((refunded["tier"].as_str(), refunded["status"].as_str()), (Some("free"), Some("revoked")));
}

#[tokio::test]
async fn notifications_reread_the_subscription_dedupe_and_retire_linked_tokens() {
    let (addr, fake) = fake_google().await;
    let app = google_app(addr, "Sandbox").await;
    let user = app.register().await;
    let now = app.clock.now();
    let month = Duration::days(30);

    // A purchase the app never posted: linked by obfuscatedExternalAccountId, acknowledged.
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_ACTIVE", now + month, Some(user.user_id)));
    assert_eq!(push_ok(&app, "m-1", &subscription_notification(4, "tok-1")).await, "applied");
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");
    assert_eq!(fake.lock().unwrap().acknowledged.len(), 1);
    assert_eq!(push_ok(&app, "m-1", &subscription_notification(4, "tok-1")).await, "duplicate");
    assert_eq!(fake.lock().unwrap().api_calls, 1, "a redelivery reads nothing");

    // Grace period: access until the grace end.
    app.clock.advance(month + Duration::hours(1));
    let grace_end = app.clock.now() + Duration::days(7);
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_IN_GRACE_PERIOD", grace_end, Some(user.user_id)));
    assert_eq!(push_ok(&app, "m-2", &subscription_notification(6, "tok-1")).await, "applied");
    let grace = entitlement(&app, &user).await;
    assert_eq!((grace["tier"].as_str(), grace["status"].as_str()), (Some("pro"), Some("grace")));

    // On hold: billing retry, no access.
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_ON_HOLD", grace_end, Some(user.user_id)));
    assert_eq!(push_ok(&app, "m-3", &subscription_notification(5, "tok-1")).await, "applied");
    assert_eq!(entitlement(&app, &user).await["status"], "billing_retry");
    // An older notification delivered late reads today's state: still on hold.
    assert_eq!(push_ok(&app, "m-0", &subscription_notification(4, "tok-1")).await, "applied");
    assert_eq!(entitlement(&app, &user).await["status"], "billing_retry");

    // Recovered, then upgraded: the new token replaces the old one.
    let renewed = app.clock.now() + month;
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_ACTIVE", renewed, Some(user.user_id)));
    assert_eq!(push_ok(&app, "m-4", &subscription_notification(1, "tok-1")).await, "applied");
    let mut upgraded = purchase("SUBSCRIPTION_STATE_ACTIVE", renewed + month, None);
    upgraded["linkedPurchaseToken"] = json!("tok-1");
    fake.lock().unwrap().subscriptions.insert("tok-2".into(), upgraded);
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_EXPIRED", renewed, Some(user.user_id)));
    assert_eq!(push_ok(&app, "m-5", &subscription_notification(4, "tok-2")).await, "applied");
    let after = entitlement(&app, &user).await;
    assert_eq!(after["tier"], "pro", "the new token is linked to the old one's user");
    let expires = DateTime::parse_from_rfc3339(after["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.timestamp(), (renewed + month).timestamp());
    let control = app.state.control.conn().await.unwrap();
    let mut rows = control.query("SELECT retired FROM store_subscriptions WHERE store_id = 'tok-1'", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(), 1);
    assert!(fake.lock().unwrap().acknowledged.iter().any(|(_, token)| token == "tok-2"));

    // Revoked: access ends at once.
    assert_eq!(push_ok(&app, "m-6", &subscription_notification(12, "tok-2")).await, "applied");
    let revoked = entitlement(&app, &user).await;
    assert_eq!((revoked["tier"].as_str(), revoked["status"].as_str()), (Some("free"), Some("revoked")));
    assert_eq!(account_tier(&app, &user).await, "free");
}

#[tokio::test]
async fn a_push_subscription_without_its_service_account_is_not_configured() {
    let (addr, _fake) = fake_google().await;
    let app = spawn_app_with(&[
        ("GOOGLE_PUBSUB_AUDIENCE", AUDIENCE),
        ("GOOGLE_OIDC_JWKS_URL", &format!("http://{addr}/certs")),
    ])
    .await;
    // A token any Google Cloud user could get for our audience.
    let token = oidc_token(AUDIENCE, "anyone@example.com", app.clock.now() + Duration::hours(1));
    let resp = push(&app, Some(&token), &push_body("m-1", &subscription_notification(4, "tok-1"))).await;
    let message = assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
    assert!(
        message.contains("GOOGLE_PUBSUB_SERVICE_ACCOUNT") && !message.contains("GOOGLE_PUBSUB_AUDIENCE"),
        "{message}"
    );
}

#[tokio::test]
async fn a_revoked_oauth_token_is_dropped_and_the_call_retried_once() {
    let (addr, fake) = fake_google().await;
    let app = google_app(addr, "Sandbox").await;
    let user = app.register().await;
    let expiry = app.clock.now() + Duration::days(30);
    fake.lock()
        .unwrap()
        .subscriptions
        .insert("tok-1".into(), purchase("SUBSCRIPTION_STATE_ACTIVE", expiry, Some(user.user_id)));
    assert_eq!(post_subscription(&app, &user, "tok-1").await.status(), StatusCode::OK);
    assert_eq!(fake.lock().unwrap().token_requests, 1);
    // Google stops accepting the cached token well before its expiry.
    fake.lock().unwrap().valid_token = "rotated".into();
    assert_eq!(post_subscription(&app, &user, "tok-1").await.status(), StatusCode::OK);
    assert_eq!(fake.lock().unwrap().token_requests, 2, "a new token after the 401");
    // The new one is cached.
    assert_eq!(post_subscription(&app, &user, "tok-1").await.status(), StatusCode::OK);
    assert_eq!(fake.lock().unwrap().token_requests, 2);
    // Once only: when no token works, it is an upstream error, not a loop.
    fake.lock().unwrap().reject_all = true;
    let resp = post_subscription(&app, &user, "tok-1").await;
    assert_error(resp, StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert_eq!(fake.lock().unwrap().token_requests, 3, "one new token, one retry");
}
