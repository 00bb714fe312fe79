//! Issue 23's findings about slow, idle and greedy clients (1, 2, 3, 4, 8 and
//! the early 413 of 9), each held by a test that failed before its fix.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, TestApp};

/// Reads from `stream` until the end of a response head, EOF or `within`;
/// what was read.
async fn read_head(stream: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.unwrap()
}

#[tokio::test]
async fn expect_continue_with_an_oversized_length_gets_413_not_100() {
    let app = spawn_app().await;
    let session = app.register().await;
    let cases = [
        ("/sync/push", Some(&session.access_token), 16 * 1024 * 1024 + 1, "batch_too_large"),
        ("/auth/register", None, 1024 * 1024 + 1, "body_too_large"),
    ];
    for (path, token, length, code) in cases {
        let mut stream = connect(&app).await;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = read_head(&mut stream, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer:?}");
        // The error body, in the same read or the next.
        let mut buf = [0u8; 4096];
        while !answer.contains(code) {
            match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => break,
            }
        }
        assert!(answer.contains(code), "{path}: {answer}");
    }
    // Under the limit, the client is told to go on.
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /sync/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 13\r\nExpect: 100-continue\r\n\r\n",
        session.access_token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 100"), "{answer:?}");
}

/// `n` version-vector keys besides `me`, all sorting before `last`.
fn fake_keys(n: usize) -> Vec<uuid::Uuid> {
    (0..n)
        .map(|_| {
            let mut bytes = *uuid::Uuid::new_v4().as_bytes();
            bytes[0] &= 0x7f;
            uuid::Uuid::from_bytes(bytes)
        })
        .collect()
}

#[tokio::test]
async fn a_pull_page_counts_every_byte_and_holds_at_least_one_change() {
    let app = spawn_app().await;
    let a = app.register().await;
    let me = a.device_id;
    // 30 aggregates of 32 heads, each head's vector naming 128 devices: about
    // 330 KB of heads and vectors per change, one byte of payload each.
    for batch in 0..2 {
        let events: Vec<_> = (0..15)
            .flat_map(|_| {
                let entry = uuid::Uuid::new_v4();
                (0..32).map(move |_| {
                    let mut version: Vec<(uuid::Uuid, u64)> = fake_keys(127).into_iter().map(|k| (k, 1)).collect();
                    version.push((me, 1));
                    crate::helpers::event("entry", entry, "put", &version, Some(b"p"))
                })
            })
            .collect();
        assert_eq!(events.len(), 480, "batch {batch}");
        app.push_ok(&a, &events).await;
    }
    let mut since = 0;
    let mut seen = 0;
    loop {
        let resp = app.get(&format!("/sync/pull?since={since}&limit=1000"), &a.access_token).await;
        let body = resp.bytes().await.unwrap();
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let changes = page["changes"].as_array().unwrap().len();
        assert!(changes >= 1, "a page without a change");
        // The budget, plus the one change that crossed it.
        assert!(body.len() < 8 * 1024 * 1024 + 400 * 1024, "a page of {} bytes", body.len());
        seen += changes;
        since = page["cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen, 30, "every aggregate, once");
    // One change over the whole budget still comes, alone.
    let one = app.pull(&a, "since=0&limit=1").await;
    assert_eq!(one["changes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn conflict_heads_and_vector_keys_are_capped() {
    use crate::helpers::{assert_error, event};
    use reqwest::StatusCode;
    let app = spawn_app().await;
    let a = app.register().await;
    let me = a.device_id;
    let entry = uuid::Uuid::new_v4();
    // 32 concurrent edits: 32 heads, allowed.
    let concurrent: Vec<_> = fake_keys(33)
        .into_iter()
        .map(|other| event("entry", entry, "put", &[(me, 1), (other, 1)], Some(b"x")))
        .collect();
    let body = app.push_ok(&a, &concurrent[..32]).await;
    assert_eq!(body["results"][31]["status"], "conflict");
    let before = app.event_count(a.user_id).await;
    // A 33rd: refused, nothing appended, whatever else the batch holds.
    let other = event("entry", uuid::Uuid::new_v4(), "put", &[(me, 1)], Some(b"y"));
    let message = assert_error(
        app.push(&a, &[other, concurrent[32].clone()]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_heads",
    )
    .await;
    assert!(message.contains("events[1]") && message.contains("merge"), "{message}");
    assert_eq!(app.event_count(a.user_id).await, before);
    // One event above every head merges them: one head again.
    let pulled = app.pull(&a, "since=0").await;
    let change = pulled["changes"].as_array().unwrap().iter().find(|c| c["id"] == entry.to_string()).unwrap();
    assert_eq!(change["heads"].as_array().unwrap().len(), 32);
    let mut merged: Vec<(uuid::Uuid, u64)> = change["version"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap()))
        .filter(|(k, _)| *k != me)
        .collect();
    merged.push((me, 2));
    assert_eq!(merged.len(), 33, "the 32 heads' devices and this one");
    let body = app.push_ok(&a, &[event("entry", entry, "put", &merged, Some(b"merged"))]).await;
    assert_eq!(body["results"][0]["status"], "applied");

    // 129 devices in one vector: refused.
    let mut wide: Vec<(uuid::Uuid, u64)> = fake_keys(128).into_iter().map(|k| (k, 1)).collect();
    wide.push((me, 1));
    let resp = app.push(&a, &[event("entry", uuid::Uuid::new_v4(), "put", &wide, Some(b"z"))]).await;
    let message = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(message.contains("events[0].version") && message.contains("128"), "{message}");
    wide.pop();
    wide.pop();
    wide.push((me, 1));
    let body = app.push_ok(&a, &[event("entry", uuid::Uuid::new_v4(), "put", &wide, Some(b"z"))]).await;
    assert_eq!(body["results"][0]["status"], "applied");
}

/// The worst a push can make the fold do: an aggregate at the cap of heads,
/// vectors at the cap of keys, sharing all but their last key (so every
/// comparison walks them to the end), and 1,000 events each evicting one
/// head and taking its place.
#[tokio::test]
async fn the_worst_case_push_keeps_its_heads_at_the_cap() {
    let app = spawn_app().await;
    let a = app.register().await;
    let me = a.device_id;
    let entry = uuid::Uuid::new_v4();
    let shared: Vec<(uuid::Uuid, u64)> = fake_keys(126).into_iter().map(|k| (k, 1)).collect();
    let last: Vec<uuid::Uuid> =
        (0..32u8).map(|i| uuid::Uuid::from_bytes([0xff, i, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, i])).collect();
    let version = |slot: usize, counter: u64| {
        let mut v = shared.clone();
        v.push((me, counter));
        v.push((last[slot], 1));
        v
    };
    let heads: Vec<_> =
        (0..32).map(|slot| crate::helpers::event("entry", entry, "put", &version(slot, 1), Some(b"h"))).collect();
    app.push_ok(&a, &heads).await;
    let batch: Vec<_> = (0..1000)
        .map(|i| crate::helpers::event("entry", entry, "put", &version(i % 32, 2 + (i / 32) as u64), Some(b"e")))
        .collect();
    let started = std::time::Instant::now();
    let body = app.push_ok(&a, &batch).await;
    let took = started.elapsed();
    assert!(body["results"].as_array().unwrap().iter().all(|r| r["status"] == "conflict"), "each replaced one head");
    let pulled = app.pull(&a, "since=0").await;
    let change = pulled["changes"].as_array().unwrap().iter().find(|c| c["id"] == entry.to_string()).unwrap();
    assert_eq!(change["heads"].as_array().unwrap().len(), 32);
    // A figure for the reader, not a check: speed is measured by benchmarks, not asserted in tests.
    eprintln!("worst-case push: 1,000 events, 32 heads of 128 keys: {took:?} ({:?} per event)", took / 1000);
}

/// Waits until `n` long-polls wait on `app`'s server.
async fn wait_for_long_polls(app: &TestApp, n: f64) {
    let started = std::time::Instant::now();
    loop {
        let scrape = app.scrape().await;
        let waiting = scrape.lines().find_map(|line| line.strip_prefix("echolia_long_polls_waiting "));
        if waiting.map_or(0.0, |value| value.trim().parse().unwrap()) == n {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{n} long-polls never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn long_polls_are_capped_per_device_and_per_user() {
    use reqwest::StatusCode;
    let app = crate::helpers::spawn_app_with(&[("LONG_POLLS_PER_DEVICE", "2"), ("LONG_POLLS_PER_USER", "3")]).await;
    let desktop = app.register().await;
    let phone = app.pair(&desktop, "Phone").await;
    let cursor = app.pull(&desktop, "since=0").await["cursor"].as_u64().unwrap();
    let poll = |token: String| {
        let (client, url) = (app.client.clone(), app.url(&format!("/sync/pull?since={cursor}&wait=20")));
        async move { client.get(url).bearer_auth(token).timeout(Duration::from_secs(30)).send().await.unwrap() }
    };
    let mut held = Vec::new();
    for (i, session) in [&desktop, &desktop, &phone].into_iter().enumerate() {
        held.push(tokio::spawn(poll(session.access_token.clone())));
        wait_for_long_polls(&app, i as f64 + 1.0).await;
    }
    // The desktop's third: over its device's cap. The phone's second: over the account's.
    for (session, whose) in [(&desktop, "this device"), (&phone, "this account")] {
        let resp = tokio::time::timeout(Duration::from_secs(5), poll(session.access_token.clone()))
            .await
            .expect("a long-poll over the cap was held instead of refused");
        let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
        let message = crate::helpers::assert_error(resp, StatusCode::TOO_MANY_REQUESTS, "too_many_long_polls").await;
        assert!(message.contains(whose), "{message}");
    }
    // A pull without wait is not a long-poll: answered as ever.
    assert_eq!(app.get("/sync/pull?since=0", &desktop.access_token).await.status(), StatusCode::OK);
    // A push answers the held ones; their places come back.
    let entry = uuid::Uuid::new_v4();
    app.push_ok(&desktop, &[crate::helpers::event("entry", entry, "put", &[(desktop.device_id, 1)], Some(b"x"))]).await;
    for poll in held {
        assert_eq!(poll.await.unwrap().status(), StatusCode::OK);
    }
    wait_for_long_polls(&app, 0.0).await;
    let resp = app.get(&format!("/sync/pull?since={}&wait=1", cursor + 1), &desktop.access_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_approved_pairing_never_collected_is_revoked_and_purged() {
    use reqwest::StatusCode;
    let app = crate::helpers::spawn_app_with(&[("PAIRING_SWEEP_SECS", "1")]).await;
    let desktop = app.register().await;
    let resp = app.post("/auth/pairing", Some(&desktop.access_token), &serde_json::json!({})).await;
    let started: serde_json::Value = resp.json().await.unwrap();
    let pairing_id = started["pairing_id"].as_str().unwrap().to_owned();
    let mut claim = crate::helpers::device_body("Phone", "mobile");
    claim["code"] = started["code"].clone();
    let claimed: serde_json::Value = app.post("/auth/pairing/claim", None, &claim).await.json().await.unwrap();
    let claim_token = claimed["claim_token"].as_str().unwrap().to_owned();
    let approve = serde_json::json!({ "key_envelope": "c2VhbGVk" });
    let resp = app.post(&format!("/auth/pairing/{pairing_id}/approve"), Some(&desktop.access_token), &approve).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let phone: serde_json::Value = resp.json().await.unwrap();
    let phone_id = phone["device_id"].as_str().unwrap().to_owned();

    let envelope = |app: &TestApp| {
        let path = app.data_dir().join("control.db");
        let pairing_id = pairing_id.clone();
        async move {
            let db = libsql::Builder::new_local(path).build().await.unwrap();
            let conn = db.connect().unwrap();
            let mut rows = conn
                .query("SELECT key_envelope IS NOT NULL FROM pairings WHERE pairing_id = ?1", [pairing_id])
                .await
                .unwrap();
            rows.next().await.unwrap().map(|row| row.get::<i64>(0).unwrap() == 1)
        }
    };
    assert_eq!(envelope(&app).await, Some(true));
    // Nobody collects it; its time runs out.
    app.clock.advance(chrono::Duration::minutes(11));
    let started = std::time::Instant::now();
    let revoked = loop {
        let devices = app.devices(&desktop).await;
        let listed = devices.iter().find(|d| d["device_id"] == phone_id.as_str()).unwrap().clone();
        if !listed["revoked_at"].is_null() || started.elapsed() > Duration::from_secs(5) {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!revoked["revoked_at"].is_null(), "the uncollected device is still active: {revoked}");
    assert_eq!(envelope(&app).await, Some(false), "the sealed key is still stored");
    let resp = crate::pairing::result(&app, &pairing_id.to_string(), &claim_token, "").await;
    crate::helpers::assert_error(resp, StatusCode::NOT_FOUND, "pairing_expired").await;
    // A day later the pairing itself is forgotten.
    app.clock.advance(chrono::Duration::days(1));
    let started = std::time::Instant::now();
    while envelope(&app).await.is_some() {
        assert!(started.elapsed() < Duration::from_secs(5), "an expired pairing was never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the server closed `stream` within `within` (EOF or reset),
/// reading and dropping whatever it sends meanwhile.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Short deadlines, so the tests run in seconds.
const SHORT: &[(&str, &str)] =
    &[("HEADER_READ_TIMEOUT_SECS", "1"), ("BODY_READ_TIMEOUT_SECS", "1"), ("IDLE_TIMEOUT_SECS", "2")];

#[tokio::test]
async fn a_head_sent_one_byte_at_a_time_is_cut_off() {
    let app = crate::helpers::spawn_app_with(SHORT).await;
    let mut stream = connect(&app).await;
    let started = std::time::Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(closed_within(&mut stream, Duration::from_secs(2)).await, "a slow head kept its connection");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    // Partial headers, then silence: also closed.
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "partial headers kept their connection");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_not_before_its_time() {
    let app = crate::helpers::spawn_app_with(SHORT).await;
    let mut stream = connect(&app).await;
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert!(read_head(&mut stream, Duration::from_secs(5)).await.starts_with("HTTP/1.1 200"));
    // Idle longer than the header deadline, shorter than the idle one: still served.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    stream.write_all(request).await.unwrap();
    assert!(read_head(&mut stream, Duration::from_secs(5)).await.starts_with("HTTP/1.1 200"));
    let idle_from = std::time::Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await, "an idle connection stayed open");
    assert!(idle_from.elapsed() >= Duration::from_millis(1500), "closed too early: {:?}", idle_from.elapsed());
}

#[tokio::test]
async fn a_body_shorter_than_its_length_is_not_waited_for() {
    let app = crate::helpers::spawn_app_with(SHORT).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"devi",
        )
        .await
        .unwrap();
    let answer = read_head(&mut stream, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await, "the connection stayed open");
}

#[tokio::test]
async fn a_long_poll_outlives_the_idle_deadline() {
    let app = crate::helpers::spawn_app_with(SHORT).await;
    let session = app.register().await;
    let cursor = app.pull(&session, "since=0").await["cursor"].clone();
    let started = std::time::Instant::now();
    let resp = app
        .client
        .get(app.url(&format!("/sync/pull?since={cursor}&wait=4")))
        .bearer_auth(&session.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(3900), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let app = crate::helpers::spawn_app_with(&[("MAX_CONNECTIONS", "2")]).await;
    let mut held = vec![connect(&app).await, connect(&app).await];
    // Both served: they hold the two places.
    for stream in &mut held {
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(read_head(stream, Duration::from_secs(5)).await.starts_with("HTTP/1.1 200"));
    }
    let client = reqwest::Client::new();
    let waiting = client.get(app.url("/health")).timeout(Duration::from_millis(800)).send().await;
    assert!(waiting.is_err(), "a third connection was served: {waiting:?}");
    let scrape = app.scrape().await;
    assert!(scrape.lines().any(|l| l.starts_with("echolia_connection_cap_reached_total ")), "{scrape}");
    drop(held.pop());
    let resp = client.get(app.url("/health")).timeout(Duration::from_secs(5)).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
}

/// Opens a connection whose receive buffer is tiny, and asks for
/// `/openapi.json` at once as many times as its answers make 64 MiB (far
/// more than the socket buffers hold), without reading any answer. Returns
/// the stream, the number of requests and the size of one answer's body.
async fn stalled_client(app: &TestApp) -> (TcpStream, usize, usize) {
    let size = app.client.get(app.url("/openapi.json")).send().await.unwrap().bytes().await.unwrap().len();
    let times = (64 << 20) / size + 1;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let requests = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(times);
    stream.write_all(&requests).await.unwrap();
    (stream, times, size)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let app = crate::helpers::spawn_app_with(&[("WRITE_STALL_TIMEOUT_SECS", "1")]).await;
    let (mut stream, times, size) = stalled_client(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Closed by now: reading gets what was buffered, then the end, long
    // before every answer (or the idle deadline, 75 s).
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a client that stopped reading kept its connection");
    assert!(got < times * size, "every answer was sent: {got} bytes");
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_cut_off() {
    let app = crate::helpers::spawn_app_with(SHORT).await;
    let mut stream = connect(&app).await;
    let started = std::time::Instant::now();
    stream
        .write_all(b"POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    // Each byte well within the per-pause deadline (1 s); the whole, not.
    let dripped = async {
        loop {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
    };
    dripped.await;
    assert!(started.elapsed() < Duration::from_secs(5), "the drip went on for {:?}", started.elapsed());
}

#[tokio::test]
async fn a_connection_that_sends_nothing_gets_the_header_deadline() {
    let app = crate::helpers::spawn_app_with(&[("HEADER_READ_TIMEOUT_SECS", "1"), ("IDLE_TIMEOUT_SECS", "30")]).await;
    let mut stream = connect(&app).await;
    let started = std::time::Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(4)).await, "a silent connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", started.elapsed());
}

#[tokio::test]
async fn shutdown_finishes_with_a_client_that_stopped_reading() {
    let mut app = crate::helpers::spawn_app_with(&[("SHUTDOWN_GRACE_SECS", "1")]).await;
    let _stalled = stalled_client(&app).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    assert!(stopped.is_ok(), "shutdown waited on a client that does not read");
    assert!(started.elapsed() >= Duration::from_millis(900), "no grace period: {:?}", started.elapsed());
}

/// Starts, claims and approves a pairing for `by`'s user; its id and the new device's.
async fn approved_pairing(app: &TestApp, by: &crate::helpers::Session) -> (String, String) {
    let resp = app.post("/auth/pairing", Some(&by.access_token), &serde_json::json!({})).await;
    let started: serde_json::Value = resp.json().await.unwrap();
    let pairing_id = started["pairing_id"].as_str().unwrap().to_owned();
    let mut claim = crate::helpers::device_body("Phone", "mobile");
    claim["code"] = started["code"].clone();
    let resp = app.post("/auth/pairing/claim", None, &claim).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let approve = serde_json::json!({ "key_envelope": "c2VhbGVk" });
    let resp = app.post(&format!("/auth/pairing/{pairing_id}/approve"), Some(&by.access_token), &approve).await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let phone: serde_json::Value = resp.json().await.unwrap();
    (pairing_id, phone["device_id"].as_str().unwrap().to_owned())
}

async fn user_sql(app: &TestApp, user: uuid::Uuid, sql: &str) {
    let db = libsql::Builder::new_local(app.user_db_path(user)).build().await.unwrap();
    db.connect().unwrap().execute_batch(sql).await.unwrap();
}

async fn revoked(app: &TestApp, by: &crate::helpers::Session, device: &str) -> bool {
    let devices = app.devices(by).await;
    !devices.iter().find(|d| d["device_id"] == device).unwrap()["revoked_at"].is_null()
}

#[tokio::test]
async fn the_sweep_spares_collected_devices_and_outlives_a_broken_database() {
    // The sweep is run by hand here.
    let app = crate::helpers::spawn_app_with(&[("PAIRING_SWEEP_SECS", "86400")]).await;
    let (collected, broken, plain) = (app.register().await, app.register().await, app.register().await);
    let (_, collected_phone) = approved_pairing(&app, &collected).await;
    approved_pairing(&app, &broken).await;
    let (_, plain_phone) = approved_pairing(&app, &plain).await;
    // The collection's user transaction committed (a refresh token was
    // issued) though the pairing was not marked delivered.
    user_sql(
        &app,
        collected.user_id,
        &format!(
            "INSERT INTO refresh_tokens (token_hash, device_id, issued_at, expires_at) \
             VALUES (zeroblob(32), '{collected_phone}', 0, 9999999999)"
        ),
    )
    .await;
    app.clock.advance(chrono::Duration::minutes(11));
    // One user's database fails.
    user_sql(&app, broken.user_id, "DROP TABLE device_sessions").await;
    let swept = echolia::auth::pairing::sweep(&app.state).await;
    assert_eq!(swept.unwrap(), 1, "only the plain uncollected device is revoked");
    assert!(revoked(&app, &plain, &plain_phone).await, "the uncollected device is still active");
    assert!(!revoked(&app, &collected, &collected_phone).await, "a collected device was revoked");
}

#[tokio::test]
async fn a_large_body_on_a_slow_link_still_arrives() {
    let app = crate::helpers::spawn_app_with(SHORT).await;
    let mut stream = connect(&app).await;
    // 64 KiB of whitespace at 32 KiB/s: over the 1 s deadline, within the
    // time a second per 16 KiB earns.
    let json = crate::helpers::device_body("Desktop", "desktop").to_string();
    let padding = 64 * 1024;
    let head = format!(
        "POST /auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        padding + json.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..8 {
        stream.write_all(&[b' '; 8 * 1024]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stream.write_all(json.as_bytes()).await.unwrap();
    assert!(started.elapsed() > Duration::from_secs(1));
    let answer = read_head(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
}
