//! The App Store: Apple's own test vectors (../shared/vectors/apple, judged
//! as their README says) through the verifier and the routes; notifications
//! signed here with Apple's test leaf key; forged ones; the entitlement they
//! give through `GET /account/entitlement` and `GET /account`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::{Duration, Utc};
use echolia::clock::Clock;
use echolia::config::StoreEnvironment;
use echolia::entitlements::apple::{AppleError, AppleVerifier, Jws, Notification, RenewalInfo, Transaction};
use echolia::identity::tokens::TokenType;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, spawn_app_with, Session, TestApp};

pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/apple");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/payments");
const PRODUCT: &str = "com.example.pro.monthly";

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|err| panic!("{VECTORS}/{path}: {err}"))
}

fn vector_text(path: &str) -> String {
    String::from_utf8(vector(path)).unwrap().trim().to_owned()
}

pub fn test_root_path() -> String {
    format!("{VECTORS}/certs/testCA.der")
}

/// The test server: Apple's test root trusted, sandbox, bundle com.example.
pub async fn apple_app() -> TestApp {
    spawn_app_with(&[
        ("APPLE_ROOT_CERTS", &test_root_path()),
        ("APPLE_ENVIRONMENT", "Sandbox"),
        ("APPLE_BUNDLE_ID", "com.example"),
    ])
    .await
}

fn sandbox_verifier(bundle: &str) -> AppleVerifier {
    AppleVerifier::new(vec![vector("certs/testCA.der")], bundle.into(), StoreEnvironment::Sandbox, None)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Apple's test leaf key (SEC1 PEM).
fn leaf_key() -> SigningKey {
    let pem = vector_text("certs/testLeaf.key");
    let secret = p256::SecretKey::from_sec1_pem(&pem).unwrap();
    SigningKey::from(secret)
}

fn b64(der: &[u8]) -> String {
    STANDARD.encode(der)
}

/// The test chain as Apple sends it: leaf, intermediate, root.
fn test_x5c() -> Vec<String> {
    vec![
        b64(&vector("chain/test_leaf.der")),
        b64(&vector("chain/test_intermediate.der")),
        b64(&vector("chain/test_root_ca.der")),
    ]
}

/// A compact JWS of `payload` with `header`, signed ES256 by `key`.
fn sign_with(header: &Value, payload: &Value, key: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap())
    );
    let signature: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Signed by Apple's test chain, as the App Store would sign it.
pub fn sign(payload: &Value) -> String {
    sign_with(&json!({"alg": "ES256", "x5c": test_x5c()}), payload, &leaf_key())
}

/// A transaction payload.
pub fn transaction(original: &str, expires_ms: i64, signed_ms: i64, token: Option<Uuid>) -> Value {
    json!({
        "originalTransactionId": original,
        "transactionId": format!("{original}-{signed_ms}"),
        "bundleId": "com.example",
        "productId": PRODUCT,
        "type": "Auto-Renewable Subscription",
        "purchaseDate": signed_ms,
        "expiresDate": expires_ms,
        "signedDate": signed_ms,
        "environment": "Sandbox",
        "inAppOwnershipType": "PURCHASED",
        "appAccountToken": token,
    })
}

/// A notification signed like the App Store's: (notificationUUID, signedPayload).
pub fn notification(
    kind: &str,
    subtype: Option<&str>,
    signed_ms: i64,
    transaction: &Value,
    renewal: Option<&Value>,
) -> (String, String) {
    let uuid = Uuid::new_v4().to_string();
    let payload = json!({
        "notificationType": kind,
        "subtype": subtype,
        "notificationUUID": uuid,
        "version": "2.0",
        "signedDate": signed_ms,
        "data": {
            "appAppleId": 1234,
            "bundleId": "com.example",
            "environment": "Sandbox",
            "status": 1,
            "signedTransactionInfo": sign(transaction),
            "signedRenewalInfo": renewal.map(sign),
        },
    });
    (uuid, sign(&payload))
}

fn renewal(original: &str, signed_ms: i64, grace_end: Option<i64>) -> Value {
    json!({
        "originalTransactionId": original,
        "autoRenewStatus": 1,
        "autoRenewProductId": PRODUCT,
        "productId": PRODUCT,
        "gracePeriodExpiresDate": grace_end,
        "environment": "Sandbox",
        "signedDate": signed_ms,
    })
}

async fn post_notification(app: &TestApp, signed_payload: &str) -> reqwest::Response {
    app.post("/webhooks/apple", None, &json!({"signedPayload": signed_payload})).await
}

pub async fn notify(app: &TestApp, signed_payload: &str) -> String {
    let resp = post_notification(app, signed_payload).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["outcome"].as_str().unwrap().to_owned()
}

/// The outcome a notification was recorded with, if it was.
async fn recorded_outcome(app: &TestApp, notification_id: &str) -> Option<String> {
    let control = app.state.control.conn().await.unwrap();
    let mut rows = control
        .query("SELECT outcome FROM store_notifications WHERE notification_id = ?1", [notification_id])
        .await
        .unwrap();
    rows.next().await.unwrap().map(|row| row.get::<String>(0).unwrap())
}

pub async fn post_transaction(app: &TestApp, session: &Session, jws: &str) -> reqwest::Response {
    app.post("/payments/apple/transactions", Some(&bearer(app, session)), &json!({"signed_transaction": jws})).await
}

/// An access token of `session`'s device valid at the server's clock (the
/// tests move it by weeks; access tokens live an hour).
pub fn bearer(app: &TestApp, session: &Session) -> String {
    app.state.auth.keys().issue(TokenType::Access, session.user_id, session.device_id, app.clock.now()).unwrap().0
}

pub async fn entitlement(app: &TestApp, session: &Session) -> Value {
    let resp = app.get("/account/entitlement", &bearer(app, session)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

pub async fn account_tier(app: &TestApp, session: &Session) -> String {
    let resp = app.get("/account", &bearer(app, session)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["tier"].as_str().unwrap().to_owned()
}

pub fn ms(time: chrono::DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

#[test]
fn every_signed_vector_is_judged_as_apples_readme_says_by_the_verifier() {
    let now = now_ms();
    let sandbox = sandbox_verifier("com.example");
    let production = |app_id| {
        AppleVerifier::new(
            vec![vector("certs/testCA.der")],
            "com.example".into(),
            StoreEnvironment::Production,
            Some(app_id),
        )
    };

    // testNotification: its x5c[2] is another self-signed root; x5c[2] is ignored.
    let test_notification = vector_text("mock_signed_data/testNotification");
    let decoded = sandbox.notification(&test_notification, now).unwrap();
    assert_eq!(decoded.notification_type, "TEST");
    assert_eq!(decoded.notification_uuid, "9ad56bd2-0bc6-42e0-af24-fd996d87a1e6");
    assert_eq!(decoded.signed_date, Some(1_681_314_324_000));
    assert_eq!(production(1234).notification(&test_notification, now).unwrap_err(), AppleError::Environment);
    assert_eq!(production(1235).notification(&test_notification, now).unwrap_err(), AppleError::AppIdentifier);

    let transaction_info = vector_text("mock_signed_data/transactionInfo");
    let decoded = sandbox.transaction(&transaction_info, now).unwrap();
    assert_eq!((decoded.bundle_id.as_deref(), decoded.signed_date), (Some("com.example"), Some(1_672_956_154_000)));
    assert_eq!(
        sandbox_verifier("com.example.x").transaction(&transaction_info, now).unwrap_err(),
        AppleError::AppIdentifier
    );

    let renewal_info = vector_text("mock_signed_data/renewalInfo");
    assert_eq!(sandbox.renewal_info(&renewal_info, now).unwrap().signed_date, Some(1_672_956_154_000));
    // Renewal info names no bundle: any app's verifier of the environment accepts it.
    assert!(sandbox_verifier("com.examplex").renewal_info(&renewal_info, now).is_ok());

    let wrong_bundle = vector_text("mock_signed_data/wrongBundleId");
    assert_eq!(
        sandbox_verifier("com.examplex").notification(&wrong_bundle, now).unwrap_err(),
        AppleError::AppIdentifier
    );
    assert_eq!(sandbox.notification(&wrong_bundle, now).unwrap_err(), AppleError::AppIdentifier);

    let missing_x5c = vector_text("mock_signed_data/missingX5CHeaderClaim");
    assert_eq!(sandbox.notification(&missing_x5c, now).unwrap_err(), AppleError::Malformed("the header has no x5c"));

    for not_a_jws in [vector_text("mock_signed_data/legacyTransaction"), "a.b.c.d".into(), "a.b.c".into()] {
        assert!(matches!(sandbox.transaction(&not_a_jws, now), Err(AppleError::Malformed(_))), "{not_a_jws}");
    }
}

#[test]
fn xcode_vectors_decode_as_data_but_are_never_trusted() {
    let now = now_ms();
    let xcode_bundle = "com.example.naturelab.backyardbirds.example";
    for root in [None, Some(vector("certs/testCA.der"))] {
        for environment in [StoreEnvironment::Production, StoreEnvironment::Sandbox] {
            let verifier =
                AppleVerifier::new(root.clone().into_iter().collect(), xcode_bundle.into(), environment, Some(1));
            let transaction = vector_text("xcode/xcode-signed-transaction");
            // One self-signed certificate in x5c: not a chain to any root.
            assert_eq!(verifier.transaction(&transaction, now).unwrap_err(), AppleError::ChainLength);
            let renewal = vector_text("xcode/xcode-signed-renewal-info");
            assert_eq!(verifier.renewal_info(&renewal, now).unwrap_err(), AppleError::ChainLength);
            let app_transaction = vector_text("xcode/xcode-signed-app-transaction");
            assert_eq!(verifier.verified::<Value>(&app_transaction, now).unwrap_err(), AppleError::ChainLength);
            for receipt in ["xcode/xcode-app-receipt-empty", "xcode/xcode-app-receipt-with-transaction"] {
                assert!(matches!(verifier.transaction(&vector_text(receipt), now), Err(AppleError::Malformed(_))));
            }
        }
    }
    // What the README says they hold, read without trusting them.
    let transaction: Value = Jws::parse(&vector_text("xcode/xcode-signed-transaction")).unwrap().payload_as().unwrap();
    assert_eq!(transaction["transactionId"], "0");
    assert_eq!(transaction["productId"], "pass.premium");
    assert_eq!(transaction["type"], "Auto-Renewable Subscription");
    // Xcode writes dates with a fraction (1700358336049.7295); Apple's libraries keep the milliseconds.
    assert_eq!(transaction["expiresDate"].as_f64().map(|ms| ms as i64), Some(1_700_358_336_049));
    assert_eq!(transaction["offerType"], 1);
    assert!(transaction["appAccountToken"].is_null());
    assert!(transaction.get("deviceVerificationNonce").is_some());
    let renewal: Value = Jws::parse(&vector_text("xcode/xcode-signed-renewal-info")).unwrap().payload_as().unwrap();
    let renewal_date = renewal["renewalDate"].as_f64().map(|ms| ms as i64);
    assert_eq!((renewal["autoRenewStatus"].as_i64(), renewal_date), (Some(1), Some(1_700_358_336_049)));
    assert_eq!(renewal["signedDate"].as_f64().map(|ms| ms as i64), Some(1_697_679_936_711));
    let app: Value = Jws::parse(&vector_text("xcode/xcode-signed-app-transaction")).unwrap().payload_as().unwrap();
    assert_eq!(app["receiptType"], "Xcode");
    assert!(app["appAppleId"].is_null());
    assert_eq!(app["originalPurchaseDate"].as_f64().map(|ms| ms as i64), Some(-62_135_769_600_000));
    // Typed, the fractional dates read as milliseconds.
    let typed: Transaction = Jws::parse(&vector_text("xcode/xcode-signed-transaction")).unwrap().payload_as().unwrap();
    assert_eq!((typed.transaction_id.as_deref(), typed.expires_date), (Some("0"), Some(1_700_358_336_049)));
}

#[test]
fn apples_model_fixtures_map_onto_the_payload_types() {
    let transaction: Transaction = serde_json::from_slice(&vector("models/signedTransaction.json")).unwrap();
    assert_eq!(transaction.original_transaction_id.as_deref(), Some("12345"));
    assert_eq!(transaction.product_id.as_deref(), Some("com.example.product"));
    assert_eq!(transaction.expires_date, Some(1_698_149_000_000));
    assert_eq!(transaction.revocation_date, Some(1_698_148_950_000));
    assert_eq!(transaction.app_account_token.as_deref(), Some("7e3fb20b-4cdb-47cc-936d-99d65f608138"));
    assert_eq!(transaction.in_app_ownership_type.as_deref(), Some("PURCHASED"));
    let renewal: RenewalInfo = serde_json::from_slice(&vector("models/signedRenewalInfo.json")).unwrap();
    assert!(renewal.original_transaction_id.is_some());
    let notification: Notification = serde_json::from_slice(&vector("models/signedNotification.json")).unwrap();
    assert_eq!(notification.notification_type, "SUBSCRIBED");
    assert_eq!(notification.subtype.as_deref(), Some("INITIAL_BUY"));
    assert!(notification.data.unwrap().signed_transaction_info.is_some());
    let summary: Notification = serde_json::from_slice(&vector("models/signedSummaryNotification.json")).unwrap();
    assert!(summary.summary.is_some());
}

#[tokio::test]
async fn apples_vectors_through_the_routes() {
    let app = apple_app().await;
    let user = app.register().await;

    // The TEST notification: accepted, recorded, changes nothing; once.
    let test_notification = vector_text("mock_signed_data/testNotification");
    assert_eq!(notify(&app, &test_notification).await, "ignored");
    assert_eq!(notify(&app, &test_notification).await, "duplicate");

    // Signed by Apple for another app: recorded and answered 200 (Apple retries anything else).
    // It shares the TEST notification's notificationUUID: a server of its own.
    let other = apple_app().await;
    let wrong_bundle = vector_text("mock_signed_data/wrongBundleId");
    assert_eq!(notify(&other, &wrong_bundle).await, "ignored");
    assert_eq!(notify(&other, &wrong_bundle).await, "duplicate");
    let uuid = Jws::parse(&wrong_bundle).unwrap().payload_as::<Value>().unwrap()["notificationUUID"].clone();
    assert_eq!(recorded_outcome(&other, uuid.as_str().unwrap()).await.as_deref(), Some("ignored"));
    let resp = post_notification(&app, &vector_text("mock_signed_data/missingX5CHeaderClaim")).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;

    // transactionInfo: Apple's signature holds, but it names no transaction to record.
    let resp = post_transaction(&app, &user, &vector_text("mock_signed_data/transactionInfo")).await;
    let message = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(message.contains("originalTransactionId"), "{message}");
    // Renewal info is not a transaction: it names no bundle.
    let resp = post_transaction(&app, &user, &vector_text("mock_signed_data/renewalInfo")).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "wrong_app").await;
    for file in [
        "mock_signed_data/legacyTransaction",
        "xcode/xcode-signed-transaction",
        "xcode/xcode-signed-app-transaction",
        "xcode/xcode-app-receipt-with-transaction",
    ] {
        let resp = post_transaction(&app, &user, &vector_text(file)).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
    }
    for signed in ["a.b.c.d", "a.b.c"] {
        let resp = post_notification(&app, signed).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
    }

    // The chain vectors, as the x5c of a transaction signed with the test leaf key.
    let now = ms(Utc::now());
    let payload = transaction("chain-1", now + 86_400_000, now, None);
    let der = |path: &str| b64(&vector(path));
    let chains = [
        vec![
            der("chain/test_leaf_for_invalid_oid_intermediate.der"),
            der("chain/test_intermediate_invalid_oid.der"),
            der("chain/test_root_ca.der"),
        ],
        vec![der("chain/test_leaf_invalid_oid.der"), der("chain/test_intermediate.der"), der("chain/test_root_ca.der")],
        vec![
            der("chain/apple_prod_signing_leaf.der"),
            der("chain/apple_wwdr_g6_intermediate.der"),
            der("chain/apple_root_ca_g3.der"),
        ],
        vec![der("chain/test_intermediate.der"), der("chain/test_root_ca.der")],
        vec!["abc".into(), der("chain/test_intermediate.der"), der("chain/test_root_ca.der")],
        vec![STANDARD.encode("abc"), der("chain/test_intermediate.der"), der("chain/test_root_ca.der")],
    ];
    for x5c in chains {
        let jws = sign_with(&json!({"alg": "ES256", "x5c": x5c}), &payload, &leaf_key());
        let resp = post_transaction(&app, &user, &jws).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
    }
    // Signed "in 2042", after the test leaf expired.
    let late = transaction("chain-2", 2_280_946_846_000 + 86_400_000, 2_280_946_846_000, None);
    let resp = post_transaction(&app, &user, &sign(&late)).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
    // And the same transaction signed now is accepted: the test is not vacuous.
    let resp = post_transaction(&app, &user, &sign(&payload)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");
}

#[tokio::test]
async fn production_servers_trust_only_apples_root_and_production_payloads() {
    // The bundled root: Apple's test chain is not Apple's.
    let app = spawn_app_with(&[("APPLE_BUNDLE_ID", "com.example"), ("APPLE_APP_APPLE_ID", "1234")]).await;
    let user = app.register().await;
    let now = ms(Utc::now());
    let resp = post_transaction(&app, &user, &sign(&transaction("p-1", now + 1000, now, None))).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
    let resp = post_notification(&app, &vector_text("mock_signed_data/testNotification")).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;

    // The test root configured, production: sandbox payloads never count.
    for (app_id, code) in [("1234", "wrong_environment"), ("1235", "wrong_app")] {
        let app = spawn_app_with(&[
            ("APPLE_ROOT_CERTS", &test_root_path()),
            ("APPLE_ENVIRONMENT", "Production"),
            ("APPLE_BUNDLE_ID", "com.example"),
            ("APPLE_APP_APPLE_ID", app_id),
        ])
        .await;
        let user = app.register().await;
        // Apple signed it, for the other environment or app: 200 `ignored`, so Apple stops sending it.
        let test_notification = vector_text("mock_signed_data/testNotification");
        assert_eq!(notify(&app, &test_notification).await, "ignored", "{code}");
        assert_eq!(recorded_outcome(&app, "9ad56bd2-0bc6-42e0-af24-fd996d87a1e6").await.as_deref(), Some("ignored"));
        // A transaction the app posts is still refused, naming why.
        let resp = post_transaction(&app, &user, &sign(&transaction("p-2", now + 86_400_000, now, None))).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "wrong_environment").await;
        assert_eq!(entitlement(&app, &user).await["tier"], "free");
    }
}

#[tokio::test]
async fn forged_signed_data_is_rejected() {
    let app = apple_app().await;
    let user = app.register().await;
    let now = ms(Utc::now());
    let payload = transaction("forged-1", now + 86_400_000, now, Some(user.user_id));
    let genuine = sign(&payload);
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap());

    // alg none, no signature.
    let none = format!("{}.{}.", encode(&json!({"alg": "none", "x5c": test_x5c()})), encode(&payload));
    // HS256 keyed with the leaf's key (its PEM and its raw scalar).
    let hs256 = |secret: &[u8]| {
        let header =
            jsonwebtoken::Header { x5c: Some(test_x5c()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256) };
        jsonwebtoken::encode(&header, &payload, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    };
    let pem_secret = hs256(vector_text("certs/testLeaf.key").as_bytes());
    let scalar_secret = hs256(&leaf_key().to_bytes());
    // A chain of two.
    let two = sign_with(&json!({"alg": "ES256", "x5c": test_x5c()[..2]}), &payload, &leaf_key());
    // A self-made chain with Apple's names and OIDs.
    let forged_x5c: Vec<String> = ["forged_leaf.der", "forged_intermediate.der", "forged_root.der"]
        .iter()
        .map(|file| b64(&std::fs::read(format!("{FIXTURES}/{file}")).unwrap()))
        .collect();
    let forged_key = SigningKey::from(
        p256::SecretKey::from_sec1_pem(&std::fs::read_to_string(format!("{FIXTURES}/forged_leaf.key")).unwrap())
            .unwrap(),
    );
    let self_made = sign_with(&json!({"alg": "ES256", "x5c": forged_x5c}), &payload, &forged_key);
    // A tampered payload under a genuine signature.
    let parts: Vec<&str> = genuine.split('.').collect();
    let mut richer = payload.clone();
    richer["expiresDate"] = json!(now + 10 * 365 * 86_400_000);
    let tampered = format!("{}.{}.{}", parts[0], encode(&richer), parts[2]);
    // Another key, the test chain's header.
    let other_key = SigningKey::from_slice(&[7u8; 32]).unwrap();
    let wrong_key = sign_with(&json!({"alg": "ES256", "x5c": test_x5c()}), &payload, &other_key);
    // A leaf with Apple's leaf OID issued by the trusted root itself, sent
    // with the genuine intermediate: a valid path, but not leaf → intermediate → root.
    let direct_key = SigningKey::from(
        p256::SecretKey::from_sec1_pem(&std::fs::read_to_string(format!("{FIXTURES}/direct_leaf.key")).unwrap())
            .unwrap(),
    );
    let direct_x5c = vec![
        b64(&std::fs::read(format!("{FIXTURES}/direct_leaf.der")).unwrap()),
        b64(&vector("chain/test_intermediate.der")),
        b64(&vector("chain/test_root_ca.der")),
    ];
    let direct = sign_with(&json!({"alg": "ES256", "x5c": direct_x5c}), &payload, &direct_key);

    // Each is refused by the check meant for it.
    let verifier = sandbox_verifier("com.example");
    let one_intermediate = AppleError::Chain("the leaf must be issued by the intermediate".into());
    type Expected = fn(&AppleError) -> bool;
    let cases: [(&str, &String, Expected); 8] = [
        ("alg none", &none, |err| *err == AppleError::Algorithm),
        ("HS256, PEM secret", &pem_secret, |err| *err == AppleError::Algorithm),
        ("HS256, scalar secret", &scalar_secret, |err| *err == AppleError::Algorithm),
        ("chain of two", &two, |err| *err == AppleError::ChainLength),
        // Not a path to the configured root at all (webpki's own words).
        (
            "self-made chain",
            &self_made,
            |err| matches!(err, AppleError::Chain(why) if why != "the leaf must be issued by the intermediate"),
        ),
        ("tampered payload", &tampered, |err| *err == AppleError::Signature),
        ("another key", &wrong_key, |err| *err == AppleError::Signature),
        ("leaf issued by the root", &direct, |err| {
            *err == AppleError::Chain("the leaf must be issued by the intermediate".into())
        }),
    ];
    for (name, jws, expected) in cases {
        let err = verifier.transaction(jws, now).unwrap_err();
        assert!(expected(&err), "{name}: {err:?}");
        let resp = post_transaction(&app, &user, jws).await;
        let message = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
        assert!(!message.contains(&user.user_id.to_string()), "{name}: {message}");
    }
    // The directly issued leaf is otherwise sound: only the one-intermediate check refuses it.
    let direct_der = std::fs::read(format!("{FIXTURES}/direct_leaf.der")).unwrap();
    let err = verifier.leaf_key(&direct_der, &vector("chain/test_intermediate.der"), now).unwrap_err();
    assert_eq!(err, one_intermediate);
    // The self-made chain also fails against the bundled Apple root.
    let bundled = AppleVerifier::new(Vec::new(), "com.example".into(), StoreEnvironment::Sandbox, None);
    assert!(matches!(bundled.transaction(&self_made, now), Err(AppleError::Chain(_))));
    assert_eq!(entitlement(&app, &user).await["tier"], "free", "nothing forged counted");
    // The genuine one does.
    assert_eq!(post_transaction(&app, &user, &genuine).await.status(), StatusCode::OK);
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");
}

#[tokio::test]
async fn renewal_grace_refund_and_replays_move_the_entitlement() {
    let app = apple_app().await;
    let user = app.register().await;
    let original = "1000000001";
    let free = entitlement(&app, &user).await;
    assert_eq!(
        free,
        json!({"tier": "free", "status": "expired", "expires_at": null, "source": null, "product_id": null})
    );
    assert_eq!(account_tier(&app, &user).await, "free");

    // The purchase, posted by the app.
    let t0 = app.clock.now();
    let month = Duration::days(30);
    let bought = transaction(original, ms(t0 + month), ms(t0), Some(user.user_id));
    let resp = post_transaction(&app, &user, &sign(&bought)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["entitlement"]["tier"], "pro");
    assert_eq!(body["entitlement"]["status"], "active");
    assert_eq!(body["entitlement"]["source"], "apple");
    assert_eq!(body["entitlement"]["product_id"], PRODUCT);
    assert_eq!(account_tier(&app, &user).await, "pro");

    // A renewal: a month more.
    app.clock.advance(month - Duration::hours(1));
    let t1 = app.clock.now();
    let renewed = transaction(original, ms(t0 + month * 2), ms(t1), Some(user.user_id));
    let (renew_uuid, renew) = notification("DID_RENEW", None, ms(t1), &renewed, None);
    assert_eq!(notify(&app, &renew).await, "applied");
    let after = entitlement(&app, &user).await;
    assert_eq!(after["status"], "active");
    let expires = chrono::DateTime::parse_from_rfc3339(after["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.timestamp_millis(), ms(t0 + month * 2));

    // The period ends, billing fails: the grace period keeps access.
    app.clock.advance(month + Duration::hours(2));
    assert_eq!(entitlement(&app, &user).await["tier"], "free", "lapsed until the store says more");
    let t2 = app.clock.now();
    let grace_end = t2 + Duration::days(16);
    let (_, grace) = notification(
        "DID_FAIL_TO_RENEW",
        Some("GRACE_PERIOD"),
        ms(t2),
        &transaction(original, ms(t0 + month * 2), ms(t2), Some(user.user_id)),
        Some(&renewal(original, ms(t2), Some(ms(grace_end)))),
    );
    assert_eq!(notify(&app, &grace).await, "applied");
    let in_grace = entitlement(&app, &user).await;
    assert_eq!((in_grace["tier"].as_str(), in_grace["status"].as_str()), (Some("pro"), Some("grace")));
    let until = chrono::DateTime::parse_from_rfc3339(in_grace["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(until.timestamp_millis(), ms(grace_end));
    assert_eq!(account_tier(&app, &user).await, "pro");

    // The grace period runs out: billing retry, no access.
    app.clock.advance(Duration::days(17));
    let lapsed = entitlement(&app, &user).await;
    assert_eq!((lapsed["tier"].as_str(), lapsed["status"].as_str()), (Some("free"), Some("billing_retry")));
    let t3 = app.clock.now();
    let (_, expired_grace) = notification(
        "GRACE_PERIOD_EXPIRED",
        None,
        ms(t3),
        &transaction(original, ms(t0 + month * 2), ms(t3), Some(user.user_id)),
        None,
    );
    assert_eq!(notify(&app, &expired_grace).await, "applied");
    assert_eq!(entitlement(&app, &user).await["status"], "billing_retry");

    // Billing recovers.
    app.clock.advance(Duration::days(1));
    let t4 = app.clock.now();
    let recovered = transaction(original, ms(t4 + month), ms(t4), Some(user.user_id));
    let (_, recovery) = notification("DID_RENEW", Some("BILLING_RECOVERY"), ms(t4), &recovered, None);
    assert_eq!(notify(&app, &recovery).await, "applied");
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");

    // A refund removes access at once.
    app.clock.advance(Duration::days(2));
    let t5 = app.clock.now();
    let mut refunded = transaction(original, ms(t4 + month), ms(t5), Some(user.user_id));
    refunded["revocationDate"] = json!(ms(t5));
    refunded["revocationReason"] = json!(0);
    let (refund_uuid, refund) = notification("REFUND", None, ms(t5), &refunded, None);
    assert_eq!(notify(&app, &refund).await, "applied");
    let revoked = entitlement(&app, &user).await;
    assert_eq!((revoked["tier"].as_str(), revoked["status"].as_str()), (Some("free"), Some("revoked")));
    assert_eq!(account_tier(&app, &user).await, "free");

    // Replays change nothing; news older than the refund changes nothing.
    assert_eq!(notify(&app, &refund).await, "duplicate");
    assert_eq!(notify(&app, &renew).await, "duplicate");
    let (_, late_renewal) = notification("DID_RENEW", None, ms(t4) + 1, &recovered, None);
    assert_eq!(notify(&app, &late_renewal).await, "stale");
    let resp = post_transaction(&app, &user, &sign(&recovered)).await;
    assert_eq!(resp.status(), StatusCode::OK, "an old transaction from the app is accepted, and stale");
    assert_eq!(entitlement(&app, &user).await["status"], "revoked");

    // The refund is reversed.
    app.clock.advance(Duration::hours(1));
    let t6 = app.clock.now();
    let (_, reversed) = notification(
        "REFUND_REVERSED",
        None,
        ms(t6),
        &transaction(original, ms(t4 + month), ms(t6), Some(user.user_id)),
        None,
    );
    assert_eq!(notify(&app, &reversed).await, "applied");
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");

    // Recorded once each, by notificationUUID.
    let control = app.state.control.conn().await.unwrap();
    for uuid in [&renew_uuid, &refund_uuid] {
        let mut rows = control
            .query("SELECT count(*) FROM store_notifications WHERE notification_id = ?1", [uuid.as_str()])
            .await
            .unwrap();
        assert_eq!(rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(), 1);
    }

    // Expiry: a voluntary end.
    let t7 = app.clock.now();
    let (_, expired) = notification(
        "EXPIRED",
        Some("VOLUNTARY"),
        ms(t7),
        &transaction(original, ms(t4 + month), ms(t7), Some(user.user_id)),
        None,
    );
    assert_eq!(notify(&app, &expired).await, "applied");
    let done = entitlement(&app, &user).await;
    assert_eq!((done["tier"].as_str(), done["status"].as_str()), (Some("free"), Some("expired")));
}

#[tokio::test]
async fn out_of_order_notifications_end_in_the_latest_state() {
    let app = apple_app().await;
    let user = app.register().await;
    let t0 = app.clock.now();
    let original = "2000000002";
    let month = Duration::days(30);
    let (_, subscribed) = notification(
        "SUBSCRIBED",
        Some("INITIAL_BUY"),
        ms(t0),
        &transaction(original, ms(t0 + month), ms(t0), Some(user.user_id)),
        None,
    );
    let t1 = t0 + Duration::minutes(5);
    let mut refunded = transaction(original, ms(t0 + month), ms(t1), Some(user.user_id));
    refunded["revocationDate"] = json!(ms(t1));
    let (_, refund) = notification("REFUND", None, ms(t1), &refunded, None);
    // The refund arrives first, then the purchase it refunds.
    assert_eq!(notify(&app, &refund).await, "applied");
    assert_eq!(notify(&app, &subscribed).await, "stale");
    assert_eq!(entitlement(&app, &user).await["status"], "revoked");
    assert_eq!(notify(&app, &subscribed).await, "duplicate");
    assert_eq!(notify(&app, &refund).await, "duplicate");
    assert_eq!(entitlement(&app, &user).await["status"], "revoked");
}

#[tokio::test]
async fn notifications_link_by_app_account_token_or_wait_for_the_app() {
    let app = apple_app().await;
    let (alice, bob) = (app.register().await, app.register().await);
    let now = app.clock.now();
    let month = Duration::days(30);

    // An appAccountToken naming a real user links the subscription to it.
    let (_, for_alice) = notification(
        "SUBSCRIBED",
        Some("INITIAL_BUY"),
        ms(now),
        &transaction("3000000003", ms(now + month), ms(now), Some(alice.user_id)),
        None,
    );
    assert_eq!(notify(&app, &for_alice).await, "applied");
    assert_eq!(entitlement(&app, &alice).await["tier"], "pro");
    assert_eq!(account_tier(&app, &alice).await, "pro");

    // No token: recorded, unlinked, answered 200; the app's post links it.
    let orphan = transaction("4000000004", ms(now + month), ms(now), None);
    let (_, unlinked) = notification("SUBSCRIBED", Some("INITIAL_BUY"), ms(now) + 10, &orphan, None);
    assert_eq!(notify(&app, &unlinked).await, "unlinked");
    assert_eq!(entitlement(&app, &bob).await["tier"], "free");
    let resp = post_transaction(&app, &bob, &sign(&orphan)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["entitlement"]["tier"], "pro");

    // An unknown user's token: recorded, unlinked.
    let (_, stranger) = notification(
        "SUBSCRIBED",
        None,
        ms(now),
        &transaction("5000000005", ms(now + month), ms(now), Some(Uuid::new_v4())),
        None,
    );
    assert_eq!(notify(&app, &stranger).await, "unlinked");

    // Bob cannot claim a purchase made for Alice.
    let alices = transaction("6000000006", ms(now + month), ms(now), Some(alice.user_id));
    let resp = post_transaction(&app, &bob, &sign(&alices)).await;
    assert_error(resp, StatusCode::FORBIDDEN, "app_account_token_mismatch").await;

    // Family sharing: Bob's shared copy gives access, REVOKE takes it away.
    let mut shared = transaction("7000000007", ms(now + month), ms(now), None);
    shared["inAppOwnershipType"] = json!("FAMILY_SHARED");
    let bob_fresh = app.register().await;
    assert_eq!(post_transaction(&app, &bob_fresh, &sign(&shared)).await.status(), StatusCode::OK);
    assert_eq!(entitlement(&app, &bob_fresh).await["tier"], "pro");
    let later = ms(now) + 60_000;
    let mut withdrawn = shared.clone();
    withdrawn["revocationDate"] = json!(later);
    withdrawn["signedDate"] = json!(later);
    let (_, revoke) = notification("REVOKE", None, later, &withdrawn, None);
    assert_eq!(notify(&app, &revoke).await, "applied");
    let revoked = entitlement(&app, &bob_fresh).await;
    assert_eq!((revoked["tier"].as_str(), revoked["status"].as_str()), (Some("free"), Some("revoked")));

    // A type that changes no access: recorded, ignored.
    let (_, renewal_status) = notification(
        "DID_CHANGE_RENEWAL_STATUS",
        Some("AUTO_RENEW_DISABLED"),
        ms(now) + 120_000,
        &transaction("3000000003", ms(now + month), ms(now), Some(alice.user_id)),
        None,
    );
    assert_eq!(notify(&app, &renewal_status).await, "ignored");
    assert_eq!(entitlement(&app, &alice).await["tier"], "pro");
}

#[tokio::test]
async fn missing_store_settings_answer_503_naming_them() {
    let app = spawn_app_with(&[]).await;
    let user = app.register().await;
    let resp = post_transaction(&app, &user, "a.b.c").await;
    let message = assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
    assert!(message.contains("APPLE_BUNDLE_ID") && message.contains("APPLE_APP_APPLE_ID"), "{message}");
    let resp = post_notification(&app, "a.b.c").await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
    let resp = app
        .post(
            "/payments/google/subscriptions",
            Some(&user.access_token),
            &json!({"product_id": "p", "purchase_token": "t"}),
        )
        .await;
    let message = assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
    assert!(message.contains("GOOGLE_PACKAGE_NAME") && message.contains("GOOGLE_SERVICE_ACCOUNT_FILE"), "{message}");
    let resp = app.post("/webhooks/google", None, &json!({"message": {"messageId": "1", "data": ""}})).await;
    let message = assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "not_configured").await;
    assert!(
        message.contains("GOOGLE_PUBSUB_AUDIENCE") && message.contains("GOOGLE_PUBSUB_SERVICE_ACCOUNT"),
        "{message}"
    );
    // GET /account/entitlement works without any store.
    assert_eq!(entitlement(&app, &user).await["tier"], "free");

    // Sandbox needs no app Apple id; production does.
    let app = spawn_app_with(&[("APPLE_BUNDLE_ID", "com.example"), ("APPLE_ENVIRONMENT", "Production")]).await;
    let user = app.register().await;
    let message =
        assert_error(post_transaction(&app, &user, "a.b.c").await, StatusCode::SERVICE_UNAVAILABLE, "not_configured")
            .await;
    assert!(message.contains("APPLE_APP_APPLE_ID") && !message.contains("APPLE_BUNDLE_ID"), "{message}");
}

#[tokio::test]
async fn bad_bodies_get_clear_errors() {
    let app = apple_app().await;
    let user = app.register().await;
    let resp = app.post("/payments/apple/transactions", Some(&user.access_token), &json!({"signed": "x"})).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app.post("/payments/apple/transactions", None, &json!({"signed_transaction": "x"})).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app.post("/webhooks/apple", None, &json!({"signedPayload": 5})).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .client
        .post(app.url("/webhooks/apple"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Garbage in every part of a JWS.
    for jws in ["", "...", "!!.!!.!!", "eyJhbGciOiJFUzI1NiJ9.e30.AAAA", &"A".repeat(200_000)] {
        let resp = post_notification(&app, jws).await;
        assert!(resp.status() == StatusCode::UNPROCESSABLE_ENTITY || resp.status() == StatusCode::PAYLOAD_TOO_LARGE);
    }
}

#[tokio::test]
async fn only_auto_renewable_subscriptions_give_an_entitlement() {
    let app = apple_app().await;
    let user = app.register().await;
    let now = app.clock.now();
    for (i, kind) in ["Non-Consumable", "Non-Renewing Subscription", "Consumable"].into_iter().enumerate() {
        // As Apple signs them: no expiresDate (a non-renewing subscription's end is the app's business).
        let mut purchase = transaction(&format!("800000000{i}"), 0, ms(now), Some(user.user_id));
        purchase["type"] = json!(kind);
        purchase.as_object_mut().unwrap().remove("expiresDate");
        let resp = post_transaction(&app, &user, &sign(&purchase)).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_product").await;
        // Its notification (a refund, say, or ONE_TIME_CHARGE) is recorded and ignored.
        for kind in ["ONE_TIME_CHARGE", "SUBSCRIBED"] {
            let (uuid, signed) = notification(kind, None, ms(now), &purchase, None);
            assert_eq!(notify(&app, &signed).await, "ignored", "{kind}");
            assert_eq!(recorded_outcome(&app, &uuid).await.as_deref(), Some("ignored"));
        }
        assert_eq!(entitlement(&app, &user).await["tier"], "free", "{kind}");
    }
    // An auto-renewable subscription without an end is refused as well.
    let mut endless = transaction("8000000009", 0, ms(now), Some(user.user_id));
    endless.as_object_mut().unwrap().remove("expiresDate");
    let resp = post_transaction(&app, &user, &sign(&endless)).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "unsupported_product").await;
    // The same purchase as a subscription is what counts.
    let subscription = transaction("8000000010", ms(now + Duration::days(30)), ms(now), Some(user.user_id));
    assert_eq!(post_transaction(&app, &user, &sign(&subscription)).await.status(), StatusCode::OK);
    assert_eq!(entitlement(&app, &user).await["tier"], "pro");
}

#[tokio::test]
async fn a_signed_date_ahead_of_the_clock_is_refused_and_pins_nothing() {
    let app = apple_app().await;
    let user = app.register().await;
    let now = app.clock.now();
    let month = Duration::days(30);
    let original = "9000000001";
    let ahead = now + Duration::days(365);
    let future = transaction(original, ms(ahead + month), ms(ahead), Some(user.user_id));
    assert_eq!(
        sandbox_verifier("com.example").transaction(&sign(&future), ms(now)).unwrap_err(),
        AppleError::FutureDate
    );
    let message = assert_error(
        post_transaction(&app, &user, &sign(&future)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_signature",
    )
    .await;
    assert!(message.contains("signedDate"), "{message}");
    // A notification signed "next year", around a transaction signed now.
    let current = transaction(original, ms(now + month), ms(now), Some(user.user_id));
    let (uuid, pinned) = notification("DID_RENEW", None, ms(ahead), &current, None);
    let resp = post_notification(&app, &pinned).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
    assert_eq!(recorded_outcome(&app, &uuid).await, None, "not recorded: Apple's real one may follow");
    // A few minutes of clock skew are fine.
    let (_, skewed) = notification("SUBSCRIBED", None, ms(now + Duration::minutes(4)), &current, None);
    assert_eq!(notify(&app, &skewed).await, "applied");
    // And the news that follows still applies: nothing was pinned in the future.
    app.clock.advance(Duration::minutes(10));
    let t1 = app.clock.now();
    let mut refunded = transaction(original, ms(now + month), ms(t1), Some(user.user_id));
    refunded["revocationDate"] = json!(ms(t1));
    let (_, refund) = notification("REFUND", None, ms(t1), &refunded, None);
    assert_eq!(notify(&app, &refund).await, "applied");
    assert_eq!(entitlement(&app, &user).await["status"], "revoked");
}

#[tokio::test]
async fn an_old_transaction_signed_again_never_shortens_the_subscription() {
    let app = apple_app().await;
    let user = app.register().await;
    let original = "9100000001";
    let month = Duration::days(30);
    let t0 = app.clock.now();
    let first = transaction(original, ms(t0 + month), ms(t0), Some(user.user_id));
    assert_eq!(post_transaction(&app, &user, &sign(&first)).await.status(), StatusCode::OK);
    // Renewed: the store says the second period runs to t0 + 2 months.
    app.clock.advance(month - Duration::hours(1));
    let t1 = app.clock.now();
    let second = transaction(original, ms(t0 + month * 2), ms(t1), Some(user.user_id));
    let (_, renew) = notification("DID_RENEW", None, ms(t1), &second, None);
    assert_eq!(notify(&app, &renew).await, "applied");
    // The app posts the first period's transaction, which Apple signed again just now.
    app.clock.advance(Duration::hours(2));
    let resigned = transaction(original, ms(t0 + month), ms(app.clock.now()), Some(user.user_id));
    let resp = post_transaction(&app, &user, &sign(&resigned)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let shown: Value = resp.json().await.unwrap();
    assert_eq!(shown["entitlement"]["tier"], "pro", "the first period ended, the second did not");
    let expires = chrono::DateTime::parse_from_rfc3339(shown["entitlement"]["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.timestamp_millis(), ms(t0 + month * 2));

    // In a grace period, the same period's transaction signed again keeps the grace.
    app.clock.advance(month);
    let t2 = app.clock.now();
    let grace_end = t2 + Duration::days(16);
    let (_, grace) = notification(
        "DID_FAIL_TO_RENEW",
        Some("GRACE_PERIOD"),
        ms(t2),
        &transaction(original, ms(t0 + month * 2), ms(t2), Some(user.user_id)),
        Some(&renewal(original, ms(t2), Some(ms(grace_end)))),
    );
    assert_eq!(notify(&app, &grace).await, "applied");
    app.clock.advance(Duration::minutes(1));
    let same_period = transaction(original, ms(t0 + month * 2), ms(app.clock.now()), Some(user.user_id));
    assert_eq!(post_transaction(&app, &user, &sign(&same_period)).await.status(), StatusCode::OK);
    let in_grace = entitlement(&app, &user).await;
    assert_eq!((in_grace["tier"].as_str(), in_grace["status"].as_str()), (Some("pro"), Some("grace")));
    // A renewal the app sees first (billing recovered) moves it on.
    let t3 = app.clock.now();
    let third = transaction(original, ms(t3 + month), ms(t3), Some(user.user_id));
    assert_eq!(post_transaction(&app, &user, &sign(&third)).await.status(), StatusCode::OK);
    assert_eq!(entitlement(&app, &user).await["status"], "active");
}

#[tokio::test]
async fn bodies_over_256_kib_are_413() {
    let app = apple_app().await;
    let user = app.register().await;
    let big = "A".repeat(300 * 1024);
    let resp = post_notification(&app, &big).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    let resp = post_transaction(&app, &user, &big).await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    let resp = app.post("/webhooks/google", None, &json!({"message": {"messageId": "1", "data": big}})).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit is read (and refused for what it is).
    let resp = post_notification(&app, &"A".repeat(250 * 1024)).await;
    assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_signature").await;
}
