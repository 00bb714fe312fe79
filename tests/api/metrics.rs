//! `GET /metrics` on its own listener: Prometheus text whose counters move by
//! exactly what the requests did, with route templates and never an id.

use std::collections::HashMap;
use std::time::Duration;

use chrono::TimeDelta;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_error, device_body, event, spawn_app, spawn_app_with, Session, TestApp};

/// A scrape, parsed: every sample by its series (`name{labels}`), checked
/// for the text format on the way.
struct Scrape {
    body: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    async fn of(app: &TestApp) -> Scrape {
        let body = app.scrape().await;
        let mut samples = HashMap::new();
        let mut typed: HashMap<String, String> = HashMap::new();
        let mut helped = Vec::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split_once(' ').unwrap().0.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert_eq!(helped.last().map(String::as_str), Some(name), "HELP comes right before TYPE: {line}");
                typed.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().unwrap_or_else(|_| panic!("not a value: {line}")),
            };
            let name = series.split('{').next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|base| typed.get(*base).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(family), "a sample of an undeclared family: {line}");
            assert!(family.starts_with("echolia_"), "{line}");
            assert!(samples.insert(series.to_owned(), value).is_none(), "a series twice: {line}");
        }
        Scrape { body, samples }
    }

    /// A sample that must be there.
    fn get(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no `{series}` in:\n{}", self.body))
    }

    /// A sample, or 0 when the series has not appeared yet.
    fn or_zero(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    fn requests(&self, route: &str, method: &str, status: u16) -> f64 {
        self.or_zero(&format!(
            "echolia_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
        ))
    }

    fn has_family(&self, name: &str, kind: &str) -> bool {
        self.body.contains(&format!("# TYPE {name} {kind}\n")) && self.body.contains(&format!("# HELP {name} "))
    }
}

/// Scrapes until `series` has `value`, for up to 5 s.
async fn wait_for(app: &TestApp, series: &str, value: f64) {
    for _ in 0..250 {
        if Scrape::of(app).await.or_zero(series) == value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("`{series}` did not reach {value}:\n{}", Scrape::of(app).await.body);
}

#[tokio::test]
async fn a_scrape_counts_what_happened_by_route_template_and_never_names_an_id() {
    let app = spawn_app().await;
    let alice = app.register().await;
    let laptop = app.pair(&alice, "Laptop").await;
    let other = Uuid::new_v4();
    let d = alice.device_id;
    let (entry, note) = (Uuid::new_v4(), Uuid::new_v4());

    let before = Scrape::of(&app).await;
    let pushed = app
        .push_ok(
            &alice,
            &[
                event("entry", entry, "put", &[(d, 1)], Some(b"one")),
                event("entry", entry, "put", &[(d, 2)], Some(b"two")),
                event("entry", entry, "put", &[(d, 1), (other, 1)], Some(b"beside")),
                event("memory", note, "put", &[(d, 1)], Some(b"note")),
            ],
        )
        .await;
    let statuses: Vec<&str> =
        pushed["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["applied", "applied", "conflict", "applied"]);
    let pulled = app.pull(&laptop, "since=0").await;
    assert_eq!(pulled["changes"].as_array().unwrap().len(), 2);
    let history = app.get(&format!("/audit/devices/{}/history", laptop.device_id), &alice.access_token).await;
    assert_eq!(history.status(), StatusCode::OK);
    let stray = app.client.get(app.url(&format!("/users/{}/secret", alice.user_id))).send().await.unwrap();
    assert_eq!(stray.status(), StatusCode::NOT_FOUND);
    let after = Scrape::of(&app).await;

    let moved = |series: &str| after.or_zero(series) - before.or_zero(series);
    assert_eq!(moved("echolia_events_appended_total"), 4.0);
    assert_eq!(after.get("echolia_events_appended_total"), app.event_count(alice.user_id).await as f64);
    assert!(moved("echolia_write_lock_held_seconds_count") >= 1.0, "the push's transaction held the lock");
    assert!(moved("echolia_write_lock_held_seconds_sum") > 0.0);
    assert_eq!(moved("echolia_conflicts_created_total"), 1.0);
    assert_eq!(moved("echolia_pulls_total"), 1.0);
    assert_eq!(after.requests("/sync/push", "POST", 200), 1.0);
    assert_eq!(after.requests("/sync/pull", "GET", 200), 1.0);
    assert_eq!(after.requests("/auth/register", "POST", 201), 1.0);
    assert_eq!(after.requests("/auth/pair-device", "POST", 201), 1.0);
    assert_eq!(after.requests("/audit/devices/{device_id}/history", "GET", 200), 1.0);
    assert_eq!(after.requests("unmatched", "GET", 404), 1.0);
    let push_latency = "echolia_http_request_duration_seconds_count{route=\"/sync/push\",method=\"POST\"}";
    assert_eq!(after.get(push_latency), 1.0);
    assert_eq!(
        after.get("echolia_http_request_duration_seconds_bucket{route=\"/sync/push\",method=\"POST\",le=\"+Inf\"}"),
        1.0
    );
    assert!(after.get("echolia_http_request_duration_seconds_sum{route=\"/sync/push\",method=\"POST\"}") > 0.0);
    assert_eq!(after.get("echolia_user_databases"), 1.0);
    assert_eq!(after.get("echolia_open_user_databases"), 1.0);
    assert_eq!(after.get("echolia_daily_active_users"), 1.0);
    assert_eq!(after.get("echolia_long_polls_waiting"), 0.0);
    assert!(after.get("echolia_database_disk_bytes") > 0.0);
    assert!(after.get("echolia_sqlite_memory_bytes") > 0.0, "an open database holds memory");
    assert_eq!(after.get("echolia_pairing_failures_total"), 0.0);
    assert_eq!(after.get("echolia_rate_limited_total{limiter=\"register\"}"), 0.0);
    assert_eq!(after.get("echolia_rate_limited_total{limiter=\"pairing_claim\"}"), 0.0);
    assert!(after.has_family("echolia_llm_tokens_total", "counter"), "the family is declared before any sample");
    assert!(after.has_family("echolia_http_request_duration_seconds", "histogram"));

    for id in [alice.user_id, alice.device_id, laptop.device_id, entry, note, other] {
        assert!(!after.body.contains(&id.to_string()), "an id in the scrape:\n{}", after.body);
    }
    assert!(!after.body.contains(&alice.access_token));
    assert!(!after.body.contains("/users/"), "a raw unmatched path in the scrape");
}

#[tokio::test]
async fn metrics_are_not_served_on_the_api_port() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app.client.get(format!("http://{}/health", app.metrics_addr)).send().await.unwrap();
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(Scrape::of(&app).await.requests("unmatched", "GET", 404), 1.0, "the API's 404 is counted there");
}

#[tokio::test]
async fn a_rolled_back_batch_appends_and_counts_nothing() {
    let app = spawn_app().await;
    let alice = app.register().await;
    let d = alice.device_id;
    let first = event("entry", Uuid::new_v4(), "put", &[(d, 1)], Some(b"first"));
    app.push_ok(&alice, std::slice::from_ref(&first)).await;
    let before = Scrape::of(&app).await;

    // The new event is appended inside the transaction before the reused id
    // is found; the whole batch then rolls back.
    let mut reused = first.clone();
    reused["payload"] = json!("b3RoZXI=");
    let fresh = event("entry", Uuid::new_v4(), "put", &[(d, 1), (Uuid::new_v4(), 1)], Some(b"fresh"));
    let resp = app.push(&alice, &[fresh, reused]).await;
    assert_error(resp, StatusCode::CONFLICT, "event_id_reused").await;
    let after = Scrape::of(&app).await;
    assert_eq!(after.get("echolia_events_appended_total"), before.get("echolia_events_appended_total"));
    assert_eq!(after.get("echolia_events_appended_total"), app.event_count(alice.user_id).await as f64);
    let held = "echolia_write_lock_held_seconds_count";
    assert_eq!(after.or_zero(held), before.or_zero(held), "a transaction rolled back is not counted");
    assert_eq!(after.requests("/sync/push", "POST", 409), 1.0);
}

async fn long_poll(app: &TestApp, session: &Session) -> tokio::task::JoinHandle<StatusCode> {
    let (client, url, token) =
        (app.client.clone(), app.url("/sync/pull?since=0&wait=30"), session.access_token.clone());
    tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap().status() })
}

#[tokio::test]
async fn the_long_poll_gauge_counts_waiters_until_woken_or_gone() {
    let app = spawn_app().await;
    let alice = app.register().await;
    let waiting = "echolia_long_polls_waiting";
    assert_eq!(Scrape::of(&app).await.get(waiting), 0.0);

    let woken = long_poll(&app, &alice).await;
    wait_for(&app, waiting, 1.0).await;
    app.push_ok(&alice, &[event("entry", Uuid::new_v4(), "put", &[(alice.device_id, 1)], Some(b"x"))]).await;
    assert_eq!(woken.await.unwrap(), StatusCode::OK);
    wait_for(&app, waiting, 0.0).await;
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.get("echolia_pulls_total"), 1.0);
    assert_eq!(scrape.requests("/sync/pull", "GET", 200), 1.0, "a long-poll is counted once it answers");

    // A client that hangs up: the gauge comes back down, the request counts as 499.
    let since = app.pull(&alice, "since=0").await["cursor"].as_u64().unwrap();
    let (client, token) = (app.client.clone(), alice.access_token.clone());
    let url = app.url(&format!("/sync/pull?since={since}&wait=30"));
    let gone = tokio::spawn(async move { client.get(url).bearer_auth(token).send().await });
    wait_for(&app, waiting, 1.0).await;
    gone.abort();
    wait_for(&app, waiting, 0.0).await;
    wait_for(&app, "echolia_http_requests_total{route=\"/sync/pull\",method=\"GET\",status=\"499\"}", 1.0).await;
    assert_eq!(Scrape::of(&app).await.get("echolia_pulls_total"), 2.0, "an abandoned long-poll answered nothing");
}

#[tokio::test]
async fn daily_actives_and_users_follow_the_day_deletions_and_restarts() {
    let app = spawn_app().await;
    let (alice, bob) = (app.register().await, app.register().await);
    assert_eq!(Scrape::of(&app).await.get("echolia_daily_active_users"), 0.0, "registering is not authenticated");
    for session in [&alice, &bob, &alice] {
        assert_eq!(app.get("/sync/status", &session.access_token).await.status(), StatusCode::OK);
    }
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.get("echolia_daily_active_users"), 2.0);
    assert_eq!(scrape.get("echolia_user_databases"), 2.0);

    app.clock.advance(TimeDelta::days(1));
    assert_eq!(Scrape::of(&app).await.get("echolia_daily_active_users"), 0.0, "a new UTC day starts empty");
    // A day later the access token has expired; refreshing is not an authenticated request.
    let resp = app.refresh(&bob.refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bob = Session::from_json(&resp.json().await.unwrap());
    assert_eq!(Scrape::of(&app).await.get("echolia_daily_active_users"), 0.0);
    assert_eq!(app.get("/sync/status", &bob.access_token).await.status(), StatusCode::OK);
    assert_eq!(Scrape::of(&app).await.get("echolia_daily_active_users"), 1.0);

    assert_eq!(app.delete("/account", &bob.access_token).await.status(), StatusCode::NO_CONTENT);
    let app = app.restart().await;
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.get("echolia_user_databases"), 1.0, "read from the users directory, so right after a restart");
    assert_eq!(scrape.get("echolia_open_user_databases"), 0.0);
    assert_eq!(scrape.get("echolia_events_appended_total"), 0.0, "a counter of this process");
}

#[tokio::test]
async fn rate_limits_and_failed_pairing_claims_are_counted_by_limiter() {
    let app = spawn_app_with(&[("REGISTER_RATE_LIMIT", "1"), ("PAIRING_CLAIM_RATE_LIMIT", "2")]).await;
    app.register().await;
    let refused = app.post("/auth/register", None, &device_body("Second", "desktop")).await;
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    let mut claim: Value = device_body("Phone", "mobile");
    claim["code"] = json!("ZZZZ-ZZZZ");
    for _ in 0..2 {
        let resp = app.post("/auth/pairing/claim", None, &claim).await;
        assert_error(resp, StatusCode::NOT_FOUND, "pairing_not_found").await;
    }
    let resp = app.post("/auth/pairing/claim", None, &claim).await;
    assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.get("echolia_rate_limited_total{limiter=\"register\"}"), 1.0);
    assert_eq!(scrape.get("echolia_rate_limited_total{limiter=\"pairing_claim\"}"), 1.0);
    assert_eq!(scrape.get("echolia_pairing_failures_total"), 2.0);
    assert_eq!(scrape.requests("/auth/register", "POST", 429), 1.0);
    assert_eq!(scrape.requests("/auth/pairing/claim", "POST", 404), 2.0);
}

/// The README's Metrics table is the contract dashboards rely on: a scrape has every family it lists, with the
/// type it gives, and no family it does not list.
#[tokio::test]
async fn a_scrape_has_every_family_the_readme_lists_and_no_other() {
    let app = spawn_app().await;
    app.register().await;
    let scrape = Scrape::of(&app).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Metrics\n").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut listed = Vec::new();
    for row in section.lines().filter_map(|line| line.strip_prefix("| `echolia_")) {
        let (series, rest) = row.split_once("` | ").unwrap();
        let (name, kind) =
            (format!("echolia_{}", series.split('{').next().unwrap()), rest.split(" | ").next().unwrap());
        assert!(scrape.has_family(&name, kind), "no {kind} `{name}` in the scrape:\n{}", scrape.body);
        listed.push(name);
    }
    assert!(listed.len() >= 16, "the README's table was not found: {listed:?}");
    for declared in scrape.body.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let name = declared.split(' ').next().unwrap();
        assert!(listed.iter().any(|listed| listed == name), "`{name}` is not in the README's Metrics table");
    }
}
