//! Verifying a stored log: seq continuity and the hash chain, recomputed from
//! the stored events, streamed in pages so memory stays flat in log size.

use libsql::Connection;

use super::hash::{ChainError, ChainVerifier};
use super::log::read_after_lenient;
use crate::store::{query_opt, StoreResult};

/// Events read per query.
pub const PAGE: u64 = 10_000;

/// Where a stored log stops holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A row whose columns do not even decode into an event (a damaged id,
    /// kind or time), which is a break of the chain at that seq as well.
    #[error("seq {seq}: the stored event does not decode: {reason}")]
    Unreadable { seq: u64, reason: String },
    /// An `event_id` stored twice (no index on disk holds it unique: the
    /// writer checks it in memory), at `first` and again at `seq`.
    #[error("seq {seq}: event_id {event_id} is already the event at seq {first}")]
    EventIdTwice { seq: u64, first: u64, event_id: String },
}

impl Break {
    /// The first seq that is not what the chain promises: the missing one
    /// for a gap, the damaged one otherwise.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Chain(ChainError::Gap { previous, .. }) => previous + 1,
            Self::Chain(ChainError::HashMismatch(seq)) => *seq,
            Self::Unreadable { seq, .. } | Self::EventIdTwice { seq, .. } => *seq,
        }
    }
}

/// What verifying a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events that verified.
    pub events: u64,
    /// The last verified position: (seq, hash).
    pub head: (u64, [u8; 32]),
    /// The first break, if any (verification stops there).
    pub broken: Option<Break>,
}

/// Recomputes the chain from seq 1 to the head. `progress` is told how many
/// events have been verified, once per page. A deleted last event leaves no
/// trace in the log itself: clients hold `head_hash` for that.
pub async fn verify_log(conn: &Connection, progress: &(dyn Fn(u64) + Send + Sync)) -> StoreResult<ChainReport> {
    let mut verifier = ChainVerifier::default();
    let mut since = 0;
    let mut events = 0;
    loop {
        let page = read_after_lenient(conn, since, PAGE).await?;
        let full = page.len() as u64 == PAGE;
        for (seq, decoded) in page {
            let checked = match decoded {
                Ok(stored) => verifier.check(&stored).map_err(Break::from),
                Err(_) if seq != verifier.head().0 + 1 => {
                    Err(Break::Chain(ChainError::Gap { previous: verifier.head().0, found: seq }))
                }
                Err(err) => Err(Break::Unreadable { seq, reason: err.to_string() }),
            };
            if let Err(broken) = checked {
                return Ok(ChainReport { events, head: verifier.head(), broken: Some(broken) });
            }
            events += 1;
            since = seq;
        }
        progress(events);
        if !full {
            let broken = event_id_twice(conn).await?;
            return Ok(ChainReport { events, head: verifier.head(), broken });
        }
    }
}

/// The first `event_id` the log holds twice, if any: one sort of the ids
/// (SQLite's sorter, spilling to temporary files, so memory stays flat).
async fn event_id_twice(conn: &Connection) -> StoreResult<Option<Break>> {
    let sql = "SELECT event_id, min(seq), max(seq) FROM events GROUP BY event_id HAVING count(*) > 1 \
               ORDER BY max(seq) LIMIT 1";
    let Some(row) = query_opt(conn, sql, ()).await? else { return Ok(None) };
    Ok(Some(Break::EventIdTwice { event_id: row.get(0)?, first: row.get(1)?, seq: row.get(2)? }))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::events::version::VersionVector;
    use crate::events::{Kind, LogTx, NewEvent, Op};
    use crate::store::{Backend, StoreError, UserDb};

    fn event(event_id: Uuid) -> NewEvent {
        NewEvent {
            event_id,
            kind: Kind::Entry,
            aggregate_id: Uuid::new_v4(),
            parent_id: None,
            op: Op::Put,
            version: VersionVector::single(Uuid::from_bytes([1; 16]), 1),
            payload: Some(b"x".to_vec()),
            client_time: Utc::now(),
        }
    }

    async fn append(db: &UserDb, ids: &[Uuid]) {
        let mut tx = LogTx::begin(db).await.unwrap();
        for id in ids {
            tx.append(Uuid::from_bytes([1; 16]), Utc::now(), event(*id)).await.unwrap();
        }
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn an_event_id_stored_twice_breaks_the_log_and_the_append_path_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::local(dir.path());
        let user = Uuid::new_v4();
        let db = UserDb::open(&backend, user, true).await.unwrap();
        let twice = Uuid::new_v4();
        append(&db, &[Uuid::new_v4(), twice, Uuid::new_v4()]).await;
        // A writer whose index covers the log refuses the id.
        let mut tx = LogTx::begin(&db).await.unwrap();
        assert!(matches!(tx.append(Uuid::nil(), Utc::now(), event(twice)).await, Err(StoreError::Conflict(_))));
        drop(tx);
        let report = verify_log(&db.read().await.unwrap(), &|_| {}).await.unwrap();
        assert_eq!(report.broken, None);

        // Another process's writer that never looked the id up (what `find` is for) can store it twice;
        // verify finds it, with the chain intact.
        let other = UserDb::open(&backend, user, false).await.unwrap();
        append(&other, &[twice]).await;
        let report = verify_log(&db.read().await.unwrap(), &|_| {}).await.unwrap();
        assert_eq!(report.events, 4);
        assert_eq!(report.broken, Some(Break::EventIdTwice { seq: 4, first: 2, event_id: twice.to_string() }));
    }
}
