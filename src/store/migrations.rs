//! Numbered SQL migrations, embedded into the binary and applied on first
//! open of a database, each recorded in `schema_migrations`.
//!
//! `schema/` holds the control and per-user schema; `projections/` holds one
//! file per read model. Views are disposable (replay rebuilds them), so their
//! files are applied after the log's schema.

use libsql::{Connection, TransactionBehavior};

use super::{query_opt, StoreResult};

/// One embedded SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($path:literal) => {
        Migration { name: $path, sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)) }
    };
}

/// The control database: users directory (pairing sessions, entitlements and
/// webhook dedupe join it in later migrations).
pub const CONTROL: &[Migration] =
    &[migration!("schema/control/0001_users.sql"), migration!("schema/control/0002_pairings.sql")];

/// Every user database: the event log, auth state, then the read models.
pub const USER: &[Migration] = &[
    migration!("schema/user/0001_events.sql"),
    migration!("schema/user/0002_auth.sql"),
    migration!("projections/devices.sql"),
    migration!("projections/entries.sql"),
    migration!("projections/memories.sql"),
    migration!("projections/tags.sql"),
    migration!("projections/embeddings.sql"),
];

/// Applies every migration of `set` not yet recorded, and names those it
/// applied (`echolia migrate` reports them). Safe to run from several
/// processes at once: each file is applied inside `BEGIN IMMEDIATE` after
/// checking again that nobody else applied it.
pub async fn apply(conn: &Connection, set: &[Migration]) -> StoreResult<Vec<&'static str>> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL) STRICT",
        (),
    )
    .await?;
    let mut applied = Vec::new();
    for migration in set {
        if is_applied(conn, migration.name).await? {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).await?;
        if is_applied(&tx, migration.name).await? {
            continue;
        }
        tx.execute_batch(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)",
            (migration.name, crate::clock::rfc3339(chrono::Utc::now())),
        )
        .await?;
        tx.commit().await?;
        applied.push(migration.name);
    }
    Ok(applied)
}

async fn is_applied(conn: &Connection, name: &str) -> StoreResult<bool> {
    Ok(query_opt(conn, "SELECT 1 FROM schema_migrations WHERE name = ?1", [name]).await?.is_some())
}
