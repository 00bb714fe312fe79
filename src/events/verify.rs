//! Verifying a stored log: seq continuity and the hash chain, recomputed from
//! the stored events, streamed in pages so memory stays flat in log size.

use libsql::Connection;

use super::hash::{ChainError, ChainVerifier};
use super::log::read_after_lenient;
use crate::store::StoreResult;

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
}

impl Break {
    /// The first seq that is not what the chain promises: the missing one
    /// for a gap, the damaged one otherwise.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Chain(ChainError::Gap { previous, .. }) => previous + 1,
            Self::Chain(ChainError::HashMismatch(seq)) => *seq,
            Self::Unreadable { seq, .. } => *seq,
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
            return Ok(ChainReport { events, head: verifier.head(), broken: None });
        }
    }
}
