//! The duplicate check without a unique index on `event_id` (issue 22): the
//! writer's in-memory index of the log's ids must answer exactly what the
//! index did — across aggregates, across processes, after a refused batch,
//! and on a database migrated from the indexed shape.

use base64::{engine::general_purpose::STANDARD, Engine};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::echolia;
use crate::helpers::{assert_error, event, spawn_app, Session, TestApp};

fn statuses(body: &Value) -> Vec<String> {
    body["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_owned()).collect()
}

fn seqs(body: &Value) -> Vec<u64> {
    body["results"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

fn batch(session: &Session, n: usize) -> Vec<Value> {
    (0..n).map(|i| event("entry", Uuid::new_v4(), "put", &[(session.device_id, 1)], Some(&[i as u8; 8]))).collect()
}

/// The same event id on another aggregate, with otherwise the same fields.
fn on_other_aggregate(original: &Value) -> Value {
    let mut other = original.clone();
    other["aggregate_id"] = json!(Uuid::new_v4());
    other
}

async fn assert_retry_is_duplicate(app: &TestApp, session: &Session, events: &[Value], first: &Value) {
    let retry = app.push_ok(session, events).await;
    assert_eq!(statuses(&retry), vec!["duplicate"; events.len()]);
    assert_eq!(seqs(&retry), seqs(first), "a retry answers the original seqs");
}

#[tokio::test]
async fn an_event_id_is_unique_across_aggregates() {
    let app = spawn_app().await;
    let a = app.register().await;
    let events = batch(&a, 3);
    app.push_ok(&a, &events).await;
    let count = app.event_count(a.user_id).await;
    let resp = app.push(&a, &[on_other_aggregate(&events[1])]).await;
    assert_error(resp, StatusCode::CONFLICT, "event_id_reused").await;
    assert_eq!(app.event_count(a.user_id).await, count);
}

#[tokio::test]
async fn a_refused_batch_leaves_none_of_its_ids_behind() {
    let app = spawn_app().await;
    let a = app.register().await;
    let events = batch(&a, 2);
    app.push_ok(&a, &events).await;
    let fresh = batch(&a, 1).remove(0);
    let mut reused = events[0].clone();
    reused["payload"] = json!(STANDARD.encode(b"other content"));
    let resp = app.push(&a, &[fresh.clone(), reused]).await;
    assert_error(resp, StatusCode::CONFLICT, "event_id_reused").await;
    // `fresh` was appended and rolled back: it is new, not a duplicate.
    let again = app.push_ok(&a, std::slice::from_ref(&fresh)).await;
    assert_eq!(statuses(&again), ["applied"]);
    assert_retry_is_duplicate(&app, &a, &[fresh], &again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_sees_the_ids_the_first_appended() {
    let first = spawn_app().await;
    let second = first.beside().await;
    let a = first.register().await;
    let registered = first.event_count(a.user_id).await;
    // The second server's writer reads the whole log on its first lookup, later only what the first appended.
    let early = batch(&a, 2);
    let pushed = first.push_ok(&a, &early).await;
    assert_retry_is_duplicate(&second, &a, &early, &pushed).await;

    let late = batch(&a, 5);
    let pushed = first.push_ok(&a, &late).await;
    assert_retry_is_duplicate(&second, &a, &late, &pushed).await;
    let resp = second.push(&a, &[on_other_aggregate(&late[4])]).await;
    assert_error(resp, StatusCode::CONFLICT, "event_id_reused").await;
    // And the other way round.
    let from_second = batch(&a, 3);
    let pushed = second.push_ok(&a, &from_second).await;
    assert_retry_is_duplicate(&first, &a, &from_second, &pushed).await;
    assert_eq!(first.event_count(a.user_id).await, registered + 10, "nothing appended twice");
}

/// A database whose log still has the unique index on `event_id` (the shape
/// before `schema/user/0006_events_without_event_id_index.sql`) upgrades with
/// `echolia migrate`, keeps every event and its chain, and answers retries
/// and reused ids as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_event_id_index_migrates_and_keeps_its_contract() {
    let mut app = spawn_app().await;
    let a = app.register().await;
    let events = batch(&a, 20);
    let pushed = app.push_ok(&a, &events).await;
    let count = app.event_count(a.user_id).await;

    let conn = app.open_user_db(a.user_id).await;
    let old_shape = include_str!("../../schema/user/0001_events.sql");
    conn.execute_batch(&format!(
        "BEGIN; ALTER TABLE events RENAME TO events_new; DROP INDEX events_by_device; \
         DROP TRIGGER events_are_immutable; DROP TRIGGER events_are_append_only; {old_shape} \
         INSERT INTO events SELECT * FROM events_new; DROP TABLE events_new; \
         DELETE FROM schema_migrations WHERE name = 'schema/user/0006_events_without_event_id_index.sql'; COMMIT;"
    ))
    .await
    .unwrap();
    let autoindexes = "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'events' \
                       AND name LIKE 'sqlite_autoindex%'";
    let indexed = |conn: libsql::Connection| async move {
        let mut rows = conn.query(autoindexes, ()).await.unwrap();
        rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap()
    };
    assert_eq!(indexed(conn.clone()).await, 1, "the old shape has the unique index");
    drop(conn);
    app.stop().await;

    let run = echolia(app.data_dir(), &["migrate"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("0006_events_without_event_id_index.sql"), "{}", run.stdout);
    assert_eq!(indexed(app.open_user_db(a.user_id).await).await, 0);
    assert_eq!(app.event_count(a.user_id).await, count);
    let run = echolia(app.data_dir(), &["verify", "--all"]);
    assert_eq!(run.code, Some(0), "{run:?}");

    let app = app.restart().await;
    assert_retry_is_duplicate(&app, &a, &events, &pushed).await;
    let resp = app.push(&a, &[on_other_aggregate(&events[7])]).await;
    assert_error(resp, StatusCode::CONFLICT, "event_id_reused").await;
    // The rebuilt log keeps its device index and stays append-only.
    let conn = app.open_user_db(a.user_id).await;
    let mut rows = conn.query("SELECT count(*) FROM sqlite_schema WHERE name = 'events_by_device'", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<u64>(0).unwrap(), 1);
    drop(rows);
    for sql in ["DELETE FROM events WHERE seq = 1", "UPDATE events SET op = 'delete' WHERE seq = 2"] {
        assert!(conn.execute(sql, ()).await.is_err(), "{sql}");
    }
    let run = echolia(app.data_dir(), &["replay", "--check", "--user", &a.user_id.to_string()]);
    assert_eq!(run.code, Some(0), "{run:?}");
}
