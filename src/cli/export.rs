//! `echolia export --user <id>`: the whole log as NDJSON on stdout, oldest
//! first, one `/sync/events` event per line — the format of `GET /account/export`.

use std::io::Write;

use uuid::Uuid;

use super::{CliError, Outcome, Storage};
use crate::events::log::read_after;
use crate::events::verify::PAGE;
use crate::events::wire::write_ndjson;

/// Streams a user's log from one snapshot, a page at a time. Returns the
/// number of events written.
pub async fn export(storage: &Storage, user: Uuid, out: &mut impl Write) -> Result<u64, CliError> {
    let db = storage.user(user).await?;
    let conn = db.read_view().await?;
    let snapshot = conn.transaction().await.map_err(crate::store::StoreError::from)?;
    let (mut since, mut written) = (0, 0);
    loop {
        let page = read_after(&snapshot, since, PAGE).await?;
        let Some(last) = page.last() else { break };
        since = last.seq;
        for event in page {
            write_ndjson(out, event).map_err(CliError::stdout)?;
            written += 1;
        }
    }
    snapshot.commit().await.map_err(crate::store::StoreError::from)?;
    out.flush().map_err(CliError::stdout)?;
    Ok(written)
}

pub async fn run(storage: &Storage, user: Uuid, out: &mut impl Write) -> Result<Outcome, CliError> {
    export(storage, user, out).await?;
    Ok(Outcome::Success)
}
