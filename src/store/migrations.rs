//! Numbered SQL migrations, embedded into the binary and applied on first
//! open of a database, each recorded in `schema_migrations`.
//!
//! `schema/` holds the control and per-user schema; `projections/` holds one
//! file per read model. Views are disposable (replay rebuilds them), so their
//! files are applied after the log's schema. Replay renames view tables and
//! alternates the names of their indexes between `<name>` and
//! `<name>_replay`: a later migration that alters a view table or drops one
//! of its indexes must accept either name (`DROP INDEX IF EXISTS` both).
//! Replay reads a projection file's indexes back when it recreates a dropped
//! view, so they keep the plain form
//! `CREATE [UNIQUE] INDEX <name> ON <table> (…)`.

use std::collections::HashSet;

use libsql::{Connection, TransactionBehavior};

use super::remote::hrana::{Hrana, Request, Stmt, StreamResponse, StreamResult, Value};
use super::{StoreError, StoreResult};

/// One embedded SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
    /// Empty: `sql` runs as it is. Otherwise `sql` runs once for each of
    /// these tables that exists, `{table}` standing for its name: a view
    /// table may have been dropped (views are disposable), and replay
    /// recreates it from its projection file, in the current shape.
    pub tables: &'static [&'static str],
}

macro_rules! migration {
    ($path:literal) => {
        migration!($path, [])
    };
    ($path:literal, $tables:expr) => {
        Migration { name: $path, sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)), tables: &$tables }
    };
}

/// The control database: users directory, pairing sessions, store
/// subscriptions (entitlements) and store-notification dedupe.
pub const CONTROL: &[Migration] = &[
    migration!("schema/control/0001_users.sql"),
    migration!("schema/control/0002_pairings.sql"),
    migration!("schema/control/0003_entitlements.sql"),
    migration!("schema/control/0005_provisioning.sql"),
    migration!("schema/control/0006_rate_limits.sql"),
];

/// Every user database: the event log, auth state, then the read models.
pub const USER: &[Migration] = &[
    migration!("schema/user/0001_events.sql"),
    migration!("schema/user/0002_auth.sql"),
    migration!("projections/devices.sql"),
    migration!("projections/entries.sql"),
    migration!("projections/memories.sql"),
    migration!("projections/tags.sql"),
    migration!("projections/embeddings.sql"),
    migration!("schema/user/0003_view_heads_as_seqs.sql", ["entries", "memories", "tags", "embeddings"]),
    migration!("schema/user/0004_llm_usage.sql"),
    migration!("schema/user/0005_llm_usage_estimated.sql"),
    migration!("schema/user/0006_events_without_event_id_index.sql"),
    migration!("schema/user/0007_views_keyed_by_creation.sql", ["entries", "memories", "tags", "embeddings"]),
    migration!("schema/user/0008_view_parent_indexes.sql", ["tags", "embeddings"]),
];

/// Applies every migration of `set` not yet recorded, and names those it
/// applied (`echolia migrate` reports them). The pending files are applied
/// together in one `BEGIN IMMEDIATE` transaction, after checking again
/// under that lock which are still pending: safe from several processes at
/// once, all or nothing, and one commit for all the files (a new user's
/// database is made with two commits, this and the bookkeeping table's,
/// instead of one per file).
pub async fn apply(conn: &Connection, set: &[Migration]) -> StoreResult<Vec<&'static str>> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL) STRICT",
        (),
    )
    .await?;
    if pending(conn, set).await?.is_empty() {
        return Ok(Vec::new());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).await?;
    let pending = pending(&tx, set).await?;
    let now = crate::clock::rfc3339(chrono::Utc::now());
    for migration in &pending {
        if migration.tables.is_empty() {
            tx.execute_batch(migration.sql).await?;
        }
        for table in migration.tables {
            let exists = "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1";
            if tx.query(exists, [*table]).await?.next().await?.is_some() {
                tx.execute_batch(&migration.sql.replace("{table}", table)).await?;
            }
        }
        tx.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)", (migration.name, now.as_str()))
            .await?;
    }
    tx.commit().await?;
    Ok(pending.iter().map(|migration| migration.name).collect())
}

/// The migrations of `set` not recorded yet, in order (one read of the
/// record: this runs on every open of a database).
async fn pending<'a>(conn: &Connection, set: &'a [Migration]) -> StoreResult<Vec<&'a Migration>> {
    let mut rows = conn.query("SELECT name FROM schema_migrations", ()).await?;
    let mut applied = HashSet::new();
    while let Some(row) = rows.next().await? {
        applied.insert(row.get::<String>(0)?);
    }
    Ok(set.iter().filter(|migration| !applied.contains(migration.name)).collect())
}

/// [`apply`] on a remote database, through Hrana rather than libSQL's
/// client: that client parses batches of SQL itself before sending them,
/// and its parser refuses some of SQLite's syntax the migrations use (an
/// aggregate's `ORDER BY`). Here the server parses each file (a `sequence`),
/// inside one `BEGIN IMMEDIATE` held across round trips on one stream, after
/// checking again under that lock which migrations are pending; any failure
/// rolls all of them back.
pub async fn apply_remote(hrana: &Hrana, set: &[Migration]) -> StoreResult<Vec<&'static str>> {
    let create =
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL) STRICT";
    let names = "SELECT name FROM schema_migrations";
    let tables = "SELECT name FROM sqlite_schema WHERE type = 'table'";
    let execute = |sql: &'static str| Request::Execute { stmt: Stmt::new(sql, Vec::new()) };
    let (results, _) = hrana.pipeline(None, &[execute(create), execute(names), Request::Close]).await?;
    let applied = column(&results, 1)?;
    if set.iter().all(|migration| applied.contains(migration.name)) {
        return Ok(Vec::new());
    }
    let (results, mut baton) =
        hrana.pipeline(None, &[execute("BEGIN IMMEDIATE"), execute(names), execute(tables)]).await?;
    let outcome = async {
        column(&results, 0)?;
        let applied = column(&results, 1)?;
        let existing = column(&results, 2)?;
        let pending: Vec<&Migration> = set.iter().filter(|migration| !applied.contains(migration.name)).collect();
        let now = crate::clock::rfc3339(chrono::Utc::now());
        let mut requests = Vec::new();
        for migration in &pending {
            if migration.tables.is_empty() {
                requests.push(Request::Sequence { sql: migration.sql.into() });
            }
            for table in migration.tables.iter().filter(|table| existing.contains(**table)) {
                requests.push(Request::Sequence { sql: migration.sql.replace("{table}", table).into() });
            }
            let record = "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)";
            let args = vec![Value::text(migration.name), Value::text(now.clone())];
            requests.push(Request::Execute { stmt: Stmt::new(record, args) });
        }
        // Each answer hands on the stream with a new baton.
        let (results, next) = hrana.pipeline(baton.as_deref(), &requests).await?;
        baton = next;
        for (at, result) in results.iter().enumerate() {
            if let StreamResult::Error { error } = result {
                return Err(error.clone().into_store_error(&format!("migrating (request {at})")));
            }
        }
        Ok(pending.iter().map(|migration| migration.name).collect::<Vec<_>>())
    }
    .await;
    let end = if outcome.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let (results, _) = hrana.pipeline(baton.as_deref(), &[execute(end), Request::Close]).await?;
    let applied = outcome?;
    column(&results, 0)?;
    Ok(applied)
}

/// The first column of every row `results[at]` returned (an error if it failed).
fn column(results: &[StreamResult], at: usize) -> StoreResult<HashSet<String>> {
    match results.get(at) {
        Some(StreamResult::Ok { response: StreamResponse::Execute { result } }) => {
            result.rows.iter().map(|row| row.text(0).map(str::to_owned)).collect()
        }
        Some(StreamResult::Error { error }) => Err(StoreError::Corrupt(format!("migrating: {}", error.message))),
        _ => Err(StoreError::Corrupt("migrating: an unexpected answer".into())),
    }
}
