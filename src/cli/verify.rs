//! `echolia verify --user <id> | --all`: the hash chain and seq continuity
//! recomputed from the stored log ([`crate::events::verify`]).

use uuid::Uuid;

use super::Done;
use crate::events::verify::verify_log;
use crate::replay::OnProgress;
use crate::store::{StoreResult, UserDb};

pub async fn verify_one(user: Uuid, db: &UserDb, progress: &OnProgress<'_>) -> StoreResult<Done> {
    let report = verify_log(&*db.read_view().await?, progress).await?;
    let (seq, hash) = report.head;
    let line = match &report.broken {
        None => {
            format!("user {user}: chain intact: {} events, head seq {seq} hash {}", report.events, hex::encode(hash))
        }
        Some(broken) => format!(
            "user {user}: chain BROKEN at seq {}: {broken} ({} events verified before it)",
            broken.seq(),
            report.events
        ),
    };
    Ok(Done { line, found: report.broken.is_some(), events: report.events })
}
