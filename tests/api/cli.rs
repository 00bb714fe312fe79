//! The operator commands, run as the real binary against a data directory
//! (often while the server is running on it): exit statuses, clear messages
//! on bad arguments, tampering found by `verify`, `audit`, `export`, `migrate`.

use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{event, spawn_app, Session, TestApp};

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `echolia <args>` with `DATA_DIR` and nothing else from the environment.
pub fn echolia(data_dir: &Path, args: &[&str]) -> Run {
    echolia_with(data_dir, args, &[])
}

/// [`echolia`] with `vars` set too.
pub fn echolia_with(data_dir: &Path, args: &[&str], vars: &[(&str, String)]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_echolia"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", data_dir)
        .envs(vars.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A user with two devices and a few entries: 2 device events, then `entries` pushes.
async fn user_with_events(app: &TestApp, entries: usize) -> (Session, Session) {
    let a = app.register().await;
    let b = app.pair(&a, "Phone").await;
    for i in 0..entries {
        let payload = format!("ciphertext {i}");
        app.push_ok(&a, &[event("entry", Uuid::new_v4(), "put", &[(a.device_id, 1)], Some(payload.as_bytes()))]).await;
    }
    (a, b)
}

#[tokio::test]
async fn bad_arguments_exit_2_with_a_clear_message() {
    let app = spawn_app().await;
    let (a, _) = user_with_events(&app, 1).await;
    let dir = app.data_dir();
    let stranger = Uuid::new_v4().to_string();
    let user = a.user_id.to_string();

    for args in [
        vec!["replay", "--user", "nonsense"],
        vec!["replay", "--user", "../../etc/passwd"],
        vec!["verify", "--user", "1234"],
        vec!["audit", "--user", "not-a-uuid"],
        vec!["export", "--user", ""],
    ] {
        let run = echolia(dir, &args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains("not an id"), "{args:?}: {}", run.stderr);
    }
    for args in [
        vec!["replay", "--user", stranger.as_str()],
        vec!["replay", "--check", "--user", stranger.as_str()],
        vec!["verify", "--user", stranger.as_str()],
        vec!["audit", "--user", stranger.as_str()],
        vec!["export", "--user", stranger.as_str()],
    ] {
        let run = echolia(dir, &args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains(&format!("unknown user {stranger}")), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    assert!(!dir.join(format!("users/{stranger}.db")).exists(), "an unknown user is not created");

    let missing = dir.join("no-such-dir");
    for args in [vec!["verify", "--all"], vec!["replay", "--user", user.as_str()], vec!["migrate"]] {
        let run = echolia(&missing, &args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains("DATA_DIR") && run.stderr.contains("does not exist"), "{}", run.stderr);
    }
    assert!(!missing.exists(), "a missing DATA_DIR is not created");
    let empty = tempfile::tempdir().unwrap();
    let run = echolia(empty.path(), &["verify", "--all"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("control.db"), "{}", run.stderr);

    for args in [
        vec!["replay"],
        vec!["verify", "--user", user.as_str(), "--all"],
        vec!["audit", "--user", user.as_str(), "--since", "yesterday"],
        vec!["replay", "--all", "--jobs", "0"],
    ] {
        let run = echolia(dir, &args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty());
    }
    let run = echolia(dir, &["audit", "--user", &user, "--device", &stranger]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains(&format!("device {stranger} is not a device")), "{}", run.stderr);
}

/// Runs SQL on a user's database as someone with file access would.
async fn tamper(app: &TestApp, user: Uuid, sql: &str) {
    app.open_user_db(user).await.execute_batch(sql).await.unwrap();
}

#[tokio::test]
async fn verify_names_the_seq_of_an_altered_byte_a_deleted_event_or_a_reorder() {
    let app = spawn_app().await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(user_with_events(&app, 6).await.0.user_id);
    }
    let dir = app.data_dir();
    for user in &users {
        let run = echolia(dir, &["verify", "--user", &user.to_string()]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.stdout.contains("chain intact: 8 events"), "{}", run.stdout);
    }

    // One byte of one payload (seq 5).
    let conn = app.open_user_db(users[0]).await;
    let mut rows = conn.query("SELECT payload FROM events WHERE seq = 5", ()).await.unwrap();
    let mut payload: Vec<u8> = rows.next().await.unwrap().unwrap().get(0).unwrap();
    drop(rows);
    payload[3] ^= 0x01;
    conn.execute_batch("DROP TRIGGER events_are_immutable").await.unwrap();
    conn.execute("UPDATE events SET payload = ?1 WHERE seq = 5", [payload]).await.unwrap();
    // A deleted event (seq 6).
    tamper(&app, users[1], "DROP TRIGGER events_are_append_only; DELETE FROM events WHERE seq = 6").await;
    // Two events swapped (seq 4 and 5).
    tamper(
        &app,
        users[2],
        "DROP TRIGGER events_are_append_only; \
         CREATE TEMP TABLE pair AS SELECT * FROM events WHERE seq IN (4, 5); \
         DELETE FROM events WHERE seq IN (4, 5); \
         INSERT INTO events SELECT 9 - seq, event_id, device_id, kind, aggregate_id, parent_id, op, version, payload, \
         client_time, received_at, hash FROM temp.pair;",
    )
    .await;

    for (user, seq) in [(users[0], 5), (users[1], 6), (users[2], 4)] {
        let run = echolia(dir, &["verify", "--user", &user.to_string()]);
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(run.stdout.contains(&format!("chain BROKEN at seq {seq}:")), "{}", run.stdout);
    }
    let run = echolia(dir, &["verify", "--all"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("verified 4 users"), "{}", run.stdout);
    assert!(run.stdout.contains("3 with a broken chain"), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("user {}: chain intact", users[3])), "{}", run.stdout);
}

#[tokio::test]
async fn audit_prints_the_device_history_as_a_table_or_json_lines() {
    let app = spawn_app().await;
    let (a, b) = user_with_events(&app, 0).await;
    let entry = Uuid::new_v4();
    app.push_ok(&a, &[event("entry", entry, "put", &[(a.device_id, 1)], Some(b"v1"))]).await;
    app.push_ok(&b, &[event("entry", entry, "put", &[(a.device_id, 1), (b.device_id, 1)], Some(b"v2"))]).await;
    let resp = app.delete(&format!("/auth/device/{}", b.device_id), &a.access_token).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let dir = app.data_dir();
    let user = a.user_id.to_string();

    let run = echolia(dir, &["audit", "--user", &user]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", run.stdout);
    for (line, words) in lines.iter().zip([
        &["SEQ", "TIME", "DEVICE", "ACTION", "AGGREGATE", "RESULT"][..],
        &["1", "Desktop", "registered", "-"],
        &["2", "Desktop", "paired", "-"],
        &["3", "Desktop", "entry put", "superseded"],
        &["4", "Phone", "entry put", "head"],
        &["5", "Desktop", "revoked", "-"],
    ]) {
        for word in words {
            assert!(line.contains(word), "`{word}` in `{line}`");
        }
    }
    assert!(!run.stdout.contains("djE=") && !run.stdout.contains("v1"), "no payload in the history");

    let run = echolia(dir, &["audit", "--user", &user, "--device", &b.device_id.to_string(), "--json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<Value> = run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["seq"], 4);
    assert_eq!(lines[0]["device_name"], "Phone");
    assert_eq!(lines[0]["action"], "entry put");
    assert_eq!(lines[0]["aggregate_id"], entry.to_string());
    assert_eq!(lines[0]["result"], "head");
    assert!(lines[0].get("payload").is_none());

    let run = echolia(dir, &["audit", "--user", &user, "--since", "2999-01-01", "--json"]);
    assert_eq!((run.code, run.stdout.as_str()), (Some(0), ""), "{run:?}");
    let run = echolia(dir, &["audit", "--user", &user, "--since", "2000-01-01T00:00:00Z", "--json"]);
    assert_eq!(run.stdout.lines().count(), 5);
}

#[tokio::test]
async fn export_writes_the_log_as_sync_events_ndjson() {
    let app = spawn_app().await;
    let (a, _) = user_with_events(&app, 5).await;
    app.push_ok(&a, &[event("memory", Uuid::new_v4(), "delete", &[(a.device_id, 1)], None)]).await;
    let run = echolia(app.data_dir(), &["export", "--user", &a.user_id.to_string()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.ends_with('\n'));
    let exported: Vec<Value> = run.stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let resp = app.get("/sync/events?since=0&limit=1000", &a.access_token).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(json!(exported), body["events"]);
    assert_eq!(exported.len(), 8);
    assert_eq!(exported.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn migrate_reports_each_database_and_is_idempotent() {
    let fresh = tempfile::tempdir().unwrap();
    let run = echolia(fresh.path(), &["migrate"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("control: applied schema/control/0001_users.sql"), "{}", run.stdout);
    let run = echolia(fresh.path(), &["migrate"]);
    assert!(run.stdout.contains("control: up to date"), "{}", run.stdout);
    assert!(run.stdout.contains("0 migrations applied"), "{}", run.stdout);

    let app = spawn_app().await;
    let (a, _) = user_with_events(&app, 1).await;
    let b = app.register().await;
    for _ in 0..2 {
        let run = echolia(app.data_dir(), &["migrate"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        for user in [a.user_id, b.user_id] {
            assert!(run.stdout.contains(&format!("user {user}: up to date")), "{}", run.stdout);
        }
        assert!(run.stdout.contains("control and 2 user databases, 0 migrations applied"), "{}", run.stdout);
    }
}
