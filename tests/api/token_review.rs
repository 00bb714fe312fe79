//! The token review, as tests: secrets never stored in clear, revocation that
//! survives a restart, the clock-skew tolerance, and key rotation by `kid`.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app_with, Session, TestApp};

const OLD_SECRET: &str = "rotation-test-old-secret-0123456789abcdef";
const NEW_SECRET: &str = "rotation-test-new-secret-fedcba9876543210";

fn kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).unwrap().kid
}

/// Every file under `dir`, recursively (databases, WALs, secrets).
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Asserts that no byte of any file in the data directory spells `secret`.
fn assert_nowhere_on_disk(app: &TestApp, what: &str, secret: &str) {
    for path in files(app.data_dir()) {
        let bytes = std::fs::read(&path).unwrap();
        let found = bytes.windows(secret.len()).any(|window| window == secret.as_bytes());
        assert!(!found, "{what} is stored in clear in {}", path.display());
    }
}

#[tokio::test]
async fn refresh_tokens_claim_tokens_and_pairing_codes_are_never_stored_in_clear() {
    let app = spawn_app_with(&[]).await;
    let desktop = app.register().await;
    // A consumed and a live refresh token.
    let resp = app.refresh(&desktop.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let renewed = Session::from_json(&resp.json().await.unwrap());

    // A pairing claimed and not yet approved: its code hash and claim-token hash are in control.db.
    let resp = app.post("/auth/pairing", Some(&renewed.access_token), &json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let started: Value = resp.json().await.unwrap();
    let code = started["code"].as_str().unwrap().to_owned();
    let claim = json!({"code": code, "device_name": "Phone", "device_type": "mobile", "platform": "ios",
                       "public_key": STANDARD.encode([7u8; 32])});
    let resp = app.post("/auth/pairing/claim", None, &claim).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let claimed: Value = resp.json().await.unwrap();
    let claim_token = claimed["claim_token"].as_str().unwrap().to_owned();

    // What control.db and the user's database hold for them: hashes of the right size.
    let control = libsql::Builder::new_local(app.data_dir().join("control.db")).build().await.unwrap();
    let conn = control.connect().unwrap();
    let mut rows = conn
        .query(
            "SELECT code_hash, claim_token_hash FROM pairings WHERE pairing_id = ?1",
            [claimed["pairing_id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    let row = rows.next().await.unwrap().expect("the pairing row");
    let (code_hash, claim_hash): (Vec<u8>, Vec<u8>) = (row.get(0).unwrap(), row.get(1).unwrap());
    assert_eq!((code_hash.len(), claim_hash.len()), (32, 32));
    let canonical = code.replace('-', "");
    let plain_sha = <sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes());
    assert_ne!(code_hash, plain_sha.to_vec(), "keyed (HMAC), not a plain SHA-256 anyone can brute-force");
    let user = app.open_user_db(desktop.user_id).await;
    let mut rows = user.query("SELECT token_hash FROM refresh_tokens", ()).await.unwrap();
    let mut stored = 0;
    while let Some(row) = rows.next().await.unwrap() {
        let hash: Vec<u8> = row.get(0).unwrap();
        assert_eq!(hash.len(), 32);
        stored += 1;
    }
    assert_eq!(stored, 2, "the consumed and the live refresh token");

    // Nowhere on disk, in any form the server received or sent them.
    for (what, secret) in [
        ("a consumed refresh token", desktop.refresh_token.as_str()),
        ("a live refresh token", renewed.refresh_token.as_str()),
        ("an access token", renewed.access_token.as_str()),
        ("a claim token", claim_token.as_str()),
        ("a pairing code", canonical.as_str()),
        ("a pairing code as shown", code.as_str()),
    ] {
        assert_nowhere_on_disk(&app, what, secret);
    }
}

#[tokio::test]
async fn revocation_and_refresh_reuse_survive_a_restart() {
    let app = spawn_app_with(&[]).await;
    let desktop = app.register().await;
    let phone = app.pair(&desktop, "Phone").await;
    let tablet = app.pair(&desktop, "Tablet").await;
    let resp = app.delete(&format!("/auth/device/{}", phone.device_id), &desktop.access_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // The tablet's refresh token is used once, then stolen and replayed.
    let resp = app.refresh(&tablet.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let renewed = Session::from_json(&resp.json().await.unwrap());
    assert_error(app.refresh(&tablet.refresh_token).await, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;

    let app = app.restart().await;
    assert_error(app.get("/sync/status", &phone.access_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
    assert_error(app.refresh(&phone.refresh_token).await, StatusCode::UNAUTHORIZED, "device_revoked").await;
    assert_error(app.get("/sync/status", &renewed.access_token).await, StatusCode::UNAUTHORIZED, "token_revoked").await;
    let resp = app.refresh(&renewed.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/sync/status", &desktop.access_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn access_tokens_are_accepted_for_the_stated_clock_skew_after_expiry_and_no_longer() {
    let app = spawn_app_with(&[]).await;
    let session = app.register().await;
    app.clock.advance(chrono::Duration::hours(1) + chrono::Duration::seconds(59));
    assert_eq!(app.get("/sync/status", &session.access_token).await.status(), StatusCode::OK);
    app.clock.advance(chrono::Duration::seconds(1));
    assert_error(app.get("/sync/status", &session.access_token).await, StatusCode::UNAUTHORIZED, "token_expired").await;
}

#[tokio::test]
async fn the_jwt_secret_rotates_with_old_tokens_accepted_until_the_old_key_is_dropped() {
    let app = spawn_app_with(&[("JWT_SECRET", OLD_SECRET)]).await;
    let before = app.register().await;
    let old_kid = kid(&before.access_token).expect("tokens name their key");
    assert_eq!(kid(&before.refresh_token).as_deref(), Some(old_kid.as_str()));
    let second = app.register().await;
    // A pairing open at the moment of rotation.
    let resp = app.post("/auth/pairing", Some(&before.access_token), &json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let open: Value = resp.json().await.unwrap();

    let app = app.restart_with(&[("JWT_SECRET", NEW_SECRET), ("JWT_PREVIOUS_SECRETS", OLD_SECRET)]).await;
    assert_eq!(app.get("/sync/status", &before.access_token).await.status(), StatusCode::OK);
    let resp = app.refresh(&before.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let after = Session::from_json(&resp.json().await.unwrap());
    let new_kid = kid(&after.access_token).unwrap();
    assert_ne!(new_kid, old_kid);
    assert_eq!(kid(&after.refresh_token).as_deref(), Some(new_kid.as_str()));
    let claim = json!({"code": open["code"], "device_name": "Phone", "device_type": "mobile", "platform": "ios",
                       "public_key": STANDARD.encode([7u8; 32])});
    assert_eq!(app.post("/auth/pairing/claim", None, &claim).await.status(), StatusCode::ACCEPTED);

    // The old key retired: what it signed stops, what the new one signed goes on.
    let app = app.restart_with(&[("JWT_SECRET", NEW_SECRET)]).await;
    assert_error(app.get("/sync/status", &second.access_token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_error(app.refresh(&second.refresh_token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_eq!(app.get("/sync/status", &after.access_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_malformed_previous_secret_stops_the_server_naming_the_variable() {
    let env = |name: &str| match name {
        "JWT_SECRET" => Some(NEW_SECRET.to_owned()),
        "JWT_PREVIOUS_SECRETS" => Some(format!("{OLD_SECRET},short")),
        _ => None,
    };
    let err = echolia::config::Config::from_lookup(env).unwrap_err();
    assert!(err.to_string().contains("JWT_PREVIOUS_SECRETS"), "{err}");
}

/// Every comparison of a secret or its hash in `src/` goes through a
/// constant-time function: a plain `==` on a token, hash, secret, code or
/// MAC fails this test unless it is listed here with why it is safe.
#[test]
fn secrets_are_compared_in_constant_time() {
    let allowed: &[(&str, &str)] = &[
        // Our own cached Google access token against the one we just used: no attacker input.
        ("src/entitlements/google.rs", "*held == token"),
        // Apple's appAccountToken is the user's id, public to the app: not a secret.
        ("src/payments/apple.rs", "Uuid::parse_str(token).ok() != Some(auth.user_id)"),
        // The hash chain: a tamper check of stored data, not a secret.
        ("src/events/hash.rs", "!= stored.hash"),
        // A backup's log head against the live log's or the copy's: tamper checks of stored data, not secrets.
        ("src/backup/snapshot.rs", "previous.head_hash == live.head_hash()"),
        ("src/backup/restore.rs", "hex::encode(hash) != user.head_hash"),
    ];
    let words = ["token", "hash", "secret", "code_key", "mac", "signature", "claim"];
    let mut offenders = Vec::new();
    for path in files(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))) {
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string();
        // Unit tests compare freely.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for line in code.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("//") || !(trimmed.contains(" == ") || trimmed.contains(" != ")) {
                continue;
            }
            let operands: Vec<&str> = trimmed.split([' ', '(', ')', ',', ';', '&', '!']).collect();
            let compares_secret = trimmed.split(" == ").chain(trimmed.split(" != ")).count() > 1
                && operands.iter().any(|word| {
                    let word = word.to_ascii_lowercase();
                    words.iter().any(|secret| word.ends_with(secret) || word.contains(&format!("{secret}_hash")))
                });
            let is_allowed = allowed.iter().any(|(file, snippet)| relative == *file && trimmed.contains(snippet));
            if compares_secret && !is_allowed {
                offenders.push(format!("{relative}: {trimmed}"));
            }
        }
    }
    assert!(offenders.is_empty(), "compare secrets with subtle::ConstantTimeEq:\n{}", offenders.join("\n"));
}
