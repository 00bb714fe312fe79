//! `DATABASE_BACKEND=turso` beyond the conformance suite: the Platform API's
//! retries, rate limits and refusals, database tokens minted once and
//! renewed, against the fake Platform API ([`crate::turso_fake`]) and its
//! real sqld; and, when `TURSO_*` name a real account, the same against Turso.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use echolia::store::remote::turso::user_database;
use reqwest::{Method, StatusCode};
use uuid::Uuid;

use crate::conformance::{Fixture, Store};
use crate::helpers::{assert_error, device_body, event};
use crate::turso_fake::FakeTurso;

fn one_event(session: &crate::helpers::Session, text: &[u8]) -> Vec<serde_json::Value> {
    vec![event("entry", Uuid::new_v4(), "put", &[(session.device_id, 1)], Some(text))]
}

/// Held by the tests that count tokens minted or make a database refuse one:
/// libSQL's client does not say whose token it refused, so a refusal renews
/// every token of the process (`store::remote::refusals`), the other tests' too.
pub static TOKENS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Ends a test that made a database refuse tokens: a refusal still under way
/// in the background (a device's status touch) lands while it holds [`TOKENS`].
async fn settle_refusals(fx: &mut Fixture) {
    fx.app.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// Database creations the fake saw (`POST …/databases`).
fn creates(fake: &FakeTurso) -> Vec<Instant> {
    fake.requests_to(Method::POST, "/databases")
}

/// 429 with `Retry-After`, then 503 and 500: the registration waits as told,
/// backs off, and succeeds on the fourth try (`TURSO_RETRIES` = 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    let fx = Fixture::new(Store::Turso).await;
    let fake = fx.turso.as_ref().unwrap();
    let before = creates(fake).len();
    fake.fail_next(&[(429, Some("1")), (503, None), (500, None)]);
    let a = fx.app.register().await;
    let tries = creates(fake)[before..].to_vec();
    assert_eq!(tries.len(), 4, "three failures, then the creation");
    assert!(tries[1] - tries[0] >= Duration::from_secs(1), "Retry-After: 1 honoured: {:?}", tries[1] - tries[0]);
    // Backoff with jitter: half to all of 400 ms, then of 800 ms.
    assert!(tries[2] - tries[1] >= Duration::from_millis(200), "{:?}", tries[2] - tries[1]);
    assert!(tries[3] - tries[2] >= Duration::from_millis(400), "{:?}", tries[3] - tries[2]);
    assert!(fx.database_exists(a.user_id).await);
    assert_eq!(fx.app.push_ok(&a, &one_event(&a, b"after the retries")).await["cursor"], 2);
}

/// On Turso too a push is two round trips and a pull page one; once a
/// user's database is open and its token minted, pushes and pulls make no
/// Platform API call; `GET /account` reads the database's usage route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_pulls_are_round_trips_to_the_database_alone() {
    let _tokens = TOKENS.lock().await;
    let fx = Fixture::new(Store::Turso).await;
    let fake = fx.turso.as_ref().unwrap();
    let a = fx.app.register().await;
    fx.app.push_ok(&a, &one_event(&a, b"warm")).await;
    let calls = fake.state.requests.lock().unwrap().len();
    crate::conformance::round_trips(&fx).await;
    for round in 0..3u8 {
        fx.app.push_ok(&a, &one_event(&a, &[round])).await;
        fx.app.pull(&a, "since=0").await;
    }
    let after = fake.state.requests.lock().unwrap()[calls..].to_vec();
    let paths: Vec<String> = after.iter().map(|(method, path, _)| format!("{method} {path}")).collect();
    assert!(!paths.iter().any(|path| path.contains(&user_database(a.user_id))), "{paths:?}");
    // `round_trips` registers a user of its own (created, its token minted, opened on its first
    // request), and a metrics scrape reads the control database's usage (at most every 15 s).
    let expected = [
        "POST /v1/organizations/acme/databases",
        "/auth/tokens",
        "GET /v1/organizations/acme/databases/u-",
        "/echolia-control/usage",
    ];
    for path in &paths {
        assert!(expected.iter().any(|e| path.starts_with(e) || path.ends_with(e)), "unexpected {path}: {paths:?}");
    }
    assert!(paths.len() <= 4, "{paths:?}");
    let account: serde_json::Value = fx.app.get("/account", &a.access_token).await.json().await.unwrap();
    // The usage route answered it (the fake relays sqld's own figure for the namespace).
    assert_eq!(fake.requests_to(Method::GET, &format!("{}/usage", user_database(a.user_id))).len(), 1);
    let stats = reqwest::get(format!(
        "{}/v1/namespaces/{}/stats",
        fx.sqld.as_ref().unwrap().admin_url(),
        FakeTurso::namespace(&user_database(a.user_id))
    ))
    .await
    .unwrap()
    .json::<serde_json::Value>()
    .await
    .unwrap();
    assert_eq!(account["storage_bytes"], stats["storage_bytes_used"], "{account} {stats}");
}

/// Failures past the retries are 503 `storage_unavailable` with
/// `Retry-After`, leaving no database and no ledger row; a `Retry-After`
/// longer than the wait allowed fails at once; the next registration works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_retries_are_unavailable_and_leave_nothing() {
    let fx = Fixture::new(Store::Turso).await;
    let fake = fx.turso.as_ref().unwrap();
    let before = creates(fake).len();
    fake.fail_next(&[(503, None), (502, None), (500, None), (503, None)]);
    let resp = fx.app.post("/auth/register", None, &device_body("Desktop", "desktop")).await;
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    assert_eq!(creates(fake).len() - before, 4, "one try and three retries");

    let started = Instant::now();
    fake.fail_next(&[(429, Some("60"))]);
    let resp = fx.app.post("/auth/register", None, &device_body("Desktop", "desktop")).await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(5), "not waited for: {:?}", started.elapsed());

    assert_eq!(fake.database_names(), ["echolia-control"], "no database left behind");
    let control = fx.app.state.control.conn().await.unwrap();
    let mut rows = control.query("SELECT count(*) FROM provisioning", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(), 0, "the ledger is clean");
    let a = fx.app.register().await;
    assert!(fx.database_exists(a.user_id).await);
}

/// A database created but never recorded (here its token cannot be minted,
/// so its schema cannot be made): the registration answers 503 and deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_failing_after_the_creation_deletes_its_database() {
    let fx = Fixture::new(Store::Turso).await;
    let fake = fx.turso.as_ref().unwrap();
    fake.fail_next_to(Some("/auth/tokens"), &[(503, None); 4]);
    let resp = fx.app.post("/auth/register", None, &device_body("Desktop", "desktop")).await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    let created = fake.requests_to(Method::POST, "/databases");
    let deleted = fake.requests_to(Method::DELETE, "");
    assert_eq!((created.len(), deleted.len()), (2, 1), "the control database, the user's; the user's deleted");
    assert_eq!(fake.database_names(), ["echolia-control"], "no database left behind");
    let control = fx.app.state.control.conn().await.unwrap();
    let mut rows = control.query("SELECT count(*) FROM provisioning", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(), 0, "the ledger is clean");
}

/// One token per database until three quarters of its life
/// (`TURSO_TOKEN_EXPIRATION=4s`: 3 s), then a new one; every request on the
/// way succeeds (sqld checks each token's signature, scope and expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_token_is_minted_once_then_renewed_before_it_expires() {
    let _tokens = TOKENS.lock().await;
    let fx = Fixture::with(Store::Turso, &[("TURSO_TOKEN_EXPIRATION", "4s")]).await;
    let fake = fx.turso.as_ref().unwrap();
    let a = fx.app.register().await;
    let minted = Instant::now();
    let name = user_database(a.user_id);
    for round in 0..5u8 {
        fx.app.push_ok(&a, &one_event(&a, &[round])).await;
        assert_eq!(fx.app.pull(&a, "since=0").await["changes"].as_array().unwrap().len(), usize::from(round) + 1);
    }
    assert!(minted.elapsed() < Duration::from_secs(3), "the rounds took too long to tell: {:?}", minted.elapsed());
    assert_eq!(fake.mints(&name), 1, "one token for all of that");

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(minted.elapsed()) + Duration::from_millis(200)).await;
    fx.app.push_ok(&a, &one_event(&a, b"renewed")).await;
    assert_eq!(fake.mints(&name), 2, "renewed past three quarters of its life");
    fx.app.push_ok(&a, &one_event(&a, b"again")).await;
    assert_eq!(fake.mints(&name), 2);
}

/// A token the database refuses (as after `turso db tokens invalidate`) is
/// 503 and forgotten: the next request mints another, though the refused one
/// had days to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_forgotten_and_minted_again() {
    let _tokens = TOKENS.lock().await;
    let fx = Fixture::new(Store::Turso).await;
    let a = fx.app.register().await;
    let name = user_database(a.user_id);
    // A new process: no token cached.
    let mut fx = fx.restart().await;
    let fake = fx.turso.as_ref().unwrap();
    let before = fake.mints(&name);
    fake.state.refused_tokens_for.lock().unwrap().insert(name.clone());
    let resp = fx.app.push(&a, &one_event(&a, b"refused")).await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    assert_eq!(fake.mints(&name), before + 1);
    fake.state.refused_tokens_for.lock().unwrap().clear();
    assert_eq!(fx.app.push_ok(&a, &one_event(&a, b"accepted")).await["cursor"], 2, "nothing of the refused push");
    assert_eq!(fake.mints(&name), before + 2);
    settle_refusals(&mut fx).await;
}

/// A token refused on libSQL's client (a write transaction: `/auth/refresh`),
/// which does not say whose: tokens minted before the refusal are minted
/// again, so the next request works though the refused one was cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_on_a_transaction_is_minted_again() {
    let _tokens = TOKENS.lock().await;
    let mut fx = Fixture::with(Store::Turso, &[("TURSO_TOKEN_EXPIRATION", "4s")]).await;
    let fake = fx.turso.as_ref().unwrap();
    let a = fx.app.register().await;
    let name = user_database(a.user_id);
    fx.app.push_ok(&a, &one_event(&a, b"open")).await;
    // Past three quarters of the token's life: the next request mints, and the database refuses that one.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    fake.state.refused_tokens_for.lock().unwrap().insert(name.clone());
    let before = fake.mints(&name);
    let resp = fx.app.refresh(&a.refresh_token).await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    assert_eq!(fake.mints(&name), before + 1);
    fake.state.refused_tokens_for.lock().unwrap().clear();
    // Well within the refused token's 3 s: only the refusal makes it go.
    let resp = fx.app.refresh(&a.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(fake.mints(&name), before + 2);
    settle_refusals(&mut fx).await;
}

/// The Platform API refusing the API token: 503 while the server runs, and a
/// start that fails naming `TURSO_AUTH_TOKEN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_token_is_unavailable_and_named_at_start() {
    let fx = Fixture::new(Store::Turso).await;
    let fake = fx.turso.as_ref().unwrap();
    fake.state.api_token_revoked.store(true, std::sync::atomic::Ordering::Relaxed);
    let resp = fx.app.post("/auth/register", None, &device_body("Desktop", "desktop")).await;
    assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;

    let dir = tempfile::tempdir().unwrap();
    let mut vars: HashMap<String, String> = fake.vars().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    vars.insert("DATA_DIR".into(), dir.path().display().to_string());
    let config = echolia::config::Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let err = echolia::state::AppState::build(config, std::sync::Arc::new(echolia::clock::SystemClock)).await.err();
    let err = err.expect("the start fails").to_string();
    assert!(err.contains("TURSO_AUTH_TOKEN") && err.contains("401"), "{err}");
    assert!(!err.contains(crate::turso_fake::API_TOKEN), "the token is not in the message");
}

/// Against a real Turso account, when `TURSO_ORG`, `TURSO_AUTH_TOKEN` and
/// `TURSO_GROUP` name one (else it says why it skips): register, push, pull,
/// delete the account, and its database is gone. Its control database is
/// one of its own, deleted at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_turso_account() {
    let names = ["TURSO_ORG", "TURSO_AUTH_TOKEN", "TURSO_GROUP"];
    let values: Vec<Option<String>> = names.iter().map(|name| std::env::var(name).ok()).collect();
    let missing: Vec<&str> = names.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: the real-Turso test needs {} (a Turso organization, a Platform API token, a group)",
            missing.join(", ")
        );
        return;
    }
    let [org, token, group] = [0, 1, 2].map(|at| values[at].clone().unwrap());
    let api = std::env::var("TURSO_API_URL").unwrap_or_else(|_| "https://api.turso.tech".into());
    let control = format!("echolia-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let fx = Fixture::with(
        Store::Local,
        &[
            ("DATABASE_BACKEND", "turso"),
            ("TURSO_ORG", &org),
            ("TURSO_AUTH_TOKEN", &token),
            ("TURSO_GROUP", &group),
            ("TURSO_API_URL", &api),
            ("TURSO_CONTROL_DATABASE", &control),
        ],
    )
    .await;
    let app = &fx.app;
    let a = app.register().await;
    app.push_ok(&a, &one_event(&a, b"on turso")).await;
    assert_eq!(app.pull(&a, "since=0").await["changes"].as_array().unwrap().len(), 1);
    assert_eq!(app.delete("/account", &a.access_token).await.status(), StatusCode::NO_CONTENT);
    let client = reqwest::Client::new();
    let database = |name: &str| format!("{api}/v1/organizations/{org}/databases/{name}");
    let gone = client.get(database(&user_database(a.user_id))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND, "the user's database is deleted");
    drop(fx);
    let deleted = client.delete(database(&control)).bearer_auth(&token).send().await.unwrap();
    assert!(deleted.status().is_success(), "deleting the test's control database: {}", deleted.status());
}
