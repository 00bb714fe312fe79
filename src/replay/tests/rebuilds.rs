//! Rebuilds: the views come back equal, whatever was dropped, pushed or
//! migrated meanwhile, and the index names alternate.
#![cfg(test)]

use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::events::read_tip;
use crate::replay::{build_shadow, checksum, rebuild, swap};
use crate::store::{query_opt, StoreError};
use crate::views::devices;

#[tokio::test]
async fn rebuilt_views_equal_the_live_ones_again_and_again() {
    let mut fx = fixture(400).await;
    let conn = fx.db.read().await.unwrap();
    let live = checksum(&conn).await.unwrap();
    let report = clean_check(&fx.db).await;
    assert_eq!(report.stored, live);
    assert!(report.rows > 10);
    let names = schema(&conn).await;
    // The views' indexes alternate between their two names.
    let replay_named = |names: &[(String, String, String)]| {
        names.iter().filter(|(kind, name, _)| kind == "index" && name.ends_with("_replay")).count()
    };
    assert_eq!(replay_named(&names), 0);
    for round in 1..=2 {
        let rebuilt = rebuild(&fx.db, &|_| {}).await.unwrap();
        assert_eq!((rebuilt.events, rebuilt.tail, rebuilt.head), (report.head, 0, report.head));
        assert_eq!(rebuilt.rows, report.rows);
        assert_eq!(checksum(&conn).await.unwrap(), live);
        let now = schema(&conn).await;
        let canonical = |names: &[(String, String, String)]| -> Vec<(String, String, String)> {
            let mut names: Vec<_> = names
                .iter()
                .map(|(kind, name, table)| {
                    (kind.clone(), name.strip_suffix("_replay").unwrap_or(name).to_owned(), table.clone())
                })
                .collect();
            names.sort();
            names
        };
        assert_eq!(canonical(&now), canonical(&names), "same tables, indexes on the same tables, no leftovers");
        let expected = if round == 1 { 6 } else { 0 };
        assert_eq!(replay_named(&now), expected, "the six view indexes under their other name: {now:?}");
    }
    clean_check(&fx.db).await;
    // The writer's cached statements outlive the swaps: they now write the new tables.
    fx.random_pushes(200).await;
    let after = clean_check(&fx.db).await;
    assert!(after.head > report.head && after.stored != live, "the pushes after the rebuilds changed the views");
}

#[tokio::test]
async fn rebuilt_views_keep_one_row_per_updated_seq() {
    let fx = fixture(200).await;
    rebuild(&fx.db, &|_| {}).await.unwrap();
    let conn = fx.db.read().await.unwrap();
    for view in &VIEWS[1..] {
        let rows = query_opt(&conn, &format!("SELECT count(*) FROM {}", view.table), ()).await.unwrap();
        assert!(rows.unwrap().get::<u64>(0).unwrap() > 0, "{} is empty", view.table);
        let taken = format!(
            "INSERT INTO {table} ({columns}) SELECT '00000000-0000-0000-0000-000000000000', NULL, '[]', '{{}}', 0, 0, \
             max(updated_seq) FROM {table}",
            table = view.table,
            columns = view.columns
        );
        assert!(conn.execute(&taken, ()).await.is_err(), "{} took a second row for one seq", view.table);
    }
}

#[tokio::test]
async fn dropped_view_tables_come_back_with_their_schema() {
    let fx = fixture(200).await;
    let conn = fx.db.read().await.unwrap();
    let (live, names) = (checksum(&conn).await.unwrap(), schema(&conn).await);
    for view in VIEWS {
        conn.execute(&format!("DROP TABLE {}", view.table), ()).await.unwrap();
    }
    let rebuilt = rebuild(&fx.db, &|_| {}).await.unwrap();
    assert_eq!(rebuilt.events, rebuilt.head);
    assert_eq!(checksum(&conn).await.unwrap(), live);
    assert_eq!(schema(&conn).await, names);
}

#[tokio::test]
async fn views_without_rows_get_their_indexes_too() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap());
    let conn = db.read().await.unwrap();
    let indexes = view_indexes(&conn).await;
    assert_eq!(indexes.len(), 6, "{indexes:?}");
    for round in 0..2 {
        let report = rebuild(&db, &|_| {}).await.unwrap();
        assert_eq!((report.events, report.rows), (0, 0));
        assert_eq!(view_indexes(&conn).await, indexes, "round {round}");
    }
}

#[tokio::test]
async fn a_second_rebuild_of_a_user_is_refused_while_one_runs() {
    let fx = fixture(100).await;
    let shadow = build_shadow(&fx.db, 1, &|_| {}).await.unwrap();
    let err = rebuild(&fx.db, &|_| {}).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(message) if message.contains("another replay")), "{err}");
    swap(&fx.db, shadow).await.unwrap();
    rebuild(&fx.db, &|_| {}).await.unwrap();
    clean_check(&fx.db).await;
}

#[tokio::test]
async fn an_index_changed_during_a_rebuild_stops_the_swap_and_the_next_rebuild_keeps_it() {
    let fx = fixture(100).await;
    let conn = fx.db.read().await.unwrap();
    let live = checksum(&conn).await.unwrap();
    let shadow = build_shadow(&fx.db, 1, &|_| {}).await.unwrap();
    // As a migration applied meanwhile by a server in another process would.
    conn.execute("CREATE INDEX entries_by_deleted ON entries (deleted)", ()).await.unwrap();
    let err = swap(&fx.db, shadow).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(message) if message.contains("`entries`")), "{err}");
    assert_eq!(checksum(&conn).await.unwrap(), live);
    assert!(view_indexes(&conn).await.contains(&("entries".into(), "entries_by_deleted".into())));
    rebuild(&fx.db, &|_| {}).await.unwrap();
    assert!(view_indexes(&conn).await.contains(&("entries".into(), "entries_by_deleted".into())));
    assert_eq!(checksum(&conn).await.unwrap(), live);
}

#[tokio::test]
async fn leftovers_of_a_rebuild_cut_short_after_its_swap_free_their_index_names() {
    let fx = fixture(100).await;
    let conn = fx.db.read().await.unwrap();
    let live = checksum(&conn).await.unwrap();
    rebuild(&fx.db, &|_| {}).await.unwrap();
    // A crash between the swap and the drop: the old table keeps the
    // names the next shadow takes back.
    conn.execute_batch(
        "CREATE TABLE entries_old (id TEXT PRIMARY KEY, updated_seq INTEGER NOT NULL) STRICT; \
         CREATE UNIQUE INDEX entries_by_updated_seq ON entries_old (updated_seq); \
         CREATE TABLE tags_replay (id TEXT PRIMARY KEY, parent_id TEXT) STRICT; \
         CREATE INDEX tags_by_parent ON tags_replay (parent_id);",
    )
    .await
    .unwrap();
    rebuild(&fx.db, &|_| {}).await.unwrap();
    assert_eq!(checksum(&conn).await.unwrap(), live);
    let leftovers = query_opt(&conn, "SELECT 1 FROM sqlite_master WHERE name IN ('entries_old', 'tags_replay')", ());
    assert!(leftovers.await.unwrap().is_none());
    clean_check(&fx.db).await;
}

#[tokio::test]
async fn a_view_index_under_both_its_names_is_refused_before_any_work() {
    let fx = fixture(50).await;
    let conn = fx.db.read().await.unwrap();
    conn.execute("CREATE UNIQUE INDEX entries_by_updated_seq_replay ON entries (updated_seq)", ()).await.unwrap();
    let err = rebuild(&fx.db, &|_| {}).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(message) if message.contains("both of its names")), "{err}");
    let shadows =
        query_opt(&conn, "SELECT 1 FROM sqlite_master WHERE name LIKE '%\\_replay' ESCAPE '\\' AND type = 'table'", ());
    assert!(shadows.await.unwrap().is_none(), "no shadow left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_while_the_shadows_fill_end_up_in_the_views_swapped_in() {
    let mut fx = fixture(3_000).await;
    let db = fx.db.clone();
    let rebuilding = tokio::spawn(async move { rebuild(&db, &|_| {}).await });
    // Through the server's writer, between the shadow writer's transactions.
    fx.random_pushes(400).await;
    let report = rebuilding.await.unwrap().unwrap();
    assert_eq!(report.events, report.head);
    let checked = clean_check(&fx.db).await;
    let head = read_tip(&fx.db.read().await.unwrap()).await.unwrap().seq;
    assert_eq!(checked.head, head, "every push is in the views");
}

#[tokio::test]
async fn events_appended_during_a_rebuild_are_folded_at_the_swap() {
    let mut fx = fixture(150).await;
    let shadow = build_shadow(&fx.db, 2, &|_| {}).await.unwrap();
    fx.random_pushes(60).await;
    device_event(&fx.db, fx.devices[0], fx.devices[2], DeviceAction::Revoked).await;
    let late = Uuid::new_v4();
    device_event(&fx.db, fx.devices[0], late, DeviceAction::Paired(profile("late"))).await;
    let report = swap(&fx.db, shadow).await.unwrap();
    assert!(report.tail >= 62, "{report:?}");
    assert_eq!(report.events, report.head);
    let checked = clean_check(&fx.db).await;
    assert_eq!(checked.head, report.head);
    let conn = fx.db.read().await.unwrap();
    let revoked = devices::load(&conn, fx.devices[2]).await.unwrap().unwrap();
    assert!(revoked.is_revoked());
    assert!(devices::load(&conn, late).await.unwrap().is_some());
}
