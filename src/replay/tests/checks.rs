//! Check and the sorted log it reads: differences named, keys never printed.
#![cfg(test)]

use super::*;
use crate::events::log::read_after;
use crate::events::read_tip;
use crate::replay::sorted_log::{Limits, SortedLog};
use crate::replay::{checksum, rebuild, DifferenceKind};
use crate::store::query_opt;

#[tokio::test]
async fn the_sorted_log_is_the_log_by_kind_aggregate_and_seq_whatever_the_scanners() {
    let fx = fixture(300).await;
    let conn = fx.db.read().await.unwrap();
    // A gap in the log (which `verify` reports): read past, nothing read twice.
    let copy = "INSERT INTO events SELECT seq + 10, ?1, device_id, kind, aggregate_id, parent_id, op, version, \
                payload, client_time, received_at, hash FROM events WHERE seq = (SELECT max(seq) FROM events)";
    conn.execute(copy, [Uuid::new_v4().to_string()]).await.unwrap();
    let head = read_tip(&conn).await.unwrap().seq;
    let mut expected = read_after(&conn, 0, u64::MAX >> 1).await.unwrap();
    // Replay never reads the payloads of non-device events.
    expected.iter_mut().filter(|e| e.event.kind != Kind::Device).for_each(|e| e.event.payload = None);
    expected.sort_by_key(|e| (e.event.kind.as_str(), e.event.aggregate_id.to_string(), e.seq));
    // Pages of 7 events, runs of a few events written out, files merged by threes.
    let tiny = Limits { page: 7, run_bytes: 2_000, max_files: 3 };
    for (scanners, limits) in [(1, Limits::default()), (2, tiny), (3, tiny), (7, tiny), (head + 5, tiny)] {
        let mut sorted = SortedLog::open_with(&fx.db, head, scanners, limits).await.unwrap();
        assert_eq!(sorted.scanned(), expected.len() as u64);
        let mut events = Vec::new();
        while let Some(event) = sorted.next_event().unwrap() {
            events.push(event);
        }
        assert_eq!(events, expected, "{scanners} scanners");
    }
}

#[tokio::test]
async fn wiped_views_come_back_from_the_log() {
    let fx = fixture(200).await;
    let conn = fx.db.read().await.unwrap();
    let live = checksum(&conn).await.unwrap();
    for view in VIEWS {
        conn.execute(&format!("DELETE FROM {}", view.table), ()).await.unwrap();
    }
    assert_ne!(checksum(&conn).await.unwrap(), live);
    let report = check(&fx.db, &|_| {}).await.unwrap();
    assert_eq!(report.first.map(|d| (d.table, d.kind)), Some(("devices", DifferenceKind::Missing)));
    assert_eq!(report.replayed, live);
    rebuild(&fx.db, &|_| {}).await.unwrap();
    assert_eq!(checksum(&conn).await.unwrap(), live);
}

#[tokio::test]
async fn check_names_the_first_difference_and_never_prints_a_key() {
    let fx = fixture(100).await;
    let conn = fx.db.read().await.unwrap();
    let entry: String = query_opt(&conn, "SELECT min(id) FROM entries", ()).await.unwrap().unwrap().get(0).unwrap();
    conn.execute("UPDATE entries SET conflict = 1 - conflict WHERE id = ?1", [entry.clone()]).await.unwrap();
    conn.execute(
        "INSERT INTO memories (id, parent_id, heads, version, deleted, conflict, updated_seq) \
         VALUES ('ffffffff-ffff-ffff-ffff-ffffffffffff', NULL, '[]', '{}', 0, 0, 999999)",
        (),
    )
    .await
    .unwrap();
    let report = check(&fx.db, &|_| {}).await.unwrap();
    assert_eq!(report.differences, 2);
    assert_ne!(report.stored, report.replayed);
    let first = report.first.unwrap();
    assert_eq!((first.table, first.key.as_str()), ("entries", entry.as_str()));
    assert!(matches!(&first.kind, DifferenceKind::Columns(c) if c.len() == 1 && c[0].column == "conflict"));
    assert!(first.to_string().contains("conflict: stored"), "{first}");

    conn.execute("UPDATE devices SET public_key = 'tampered-key'", ()).await.unwrap();
    let first = check(&fx.db, &|_| {}).await.unwrap().first.unwrap();
    assert_eq!(first.table, "devices");
    assert!(first.to_string().contains("public_key") && !first.to_string().contains("tampered-key"), "{first}");
}
