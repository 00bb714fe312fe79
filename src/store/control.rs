//! The control database: the users directory (and, in later migrations,
//! pairing sessions, entitlements and webhook dedupe).

use chrono::{DateTime, Utc};
use libsql::Connection;
use uuid::Uuid;

use super::{migrations, query_opt, Backend, Db, StoreError, StoreResult};
use crate::clock::rfc3339;

pub struct ControlDb {
    db: Db,
}

impl ControlDb {
    pub async fn open(backend: &Backend) -> StoreResult<Self> {
        let db = backend.open_control().await?;
        db.migrate(migrations::CONTROL).await?;
        Ok(Self { db })
    }

    pub async fn conn(&self) -> StoreResult<Connection> {
        self.db.connect().await
    }

    /// Sets SQLite's soft heap limit for the process, on a local backend
    /// (see [`Db::set_memory_limit`]).
    pub async fn set_memory_limit(&self, bytes: u64) -> StoreResult<()> {
        self.db.set_memory_limit(bytes).await
    }

    /// A cheap round trip proving the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        query_opt(&self.conn().await?, "SELECT 1", ()).await?;
        Ok(())
    }

    pub async fn insert_user(&self, user_id: Uuid, created_at: DateTime<Utc>) -> StoreResult<()> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO users (user_id, created_at) VALUES (?1, ?2)",
                (user_id.to_string(), rfc3339(created_at)),
            )
            .await?;
        Ok(())
    }

    /// One request under the shared rate limit `key` (GCRA, table
    /// `rate_limits`): one request per `interval_ms`, up to `burst_ms` of
    /// them at once. `None`: allowed (and counted); `Some(ms)`: refused, and
    /// how long until the next would be allowed. One statement, so two
    /// servers counting the same key at once each see the other's request.
    pub async fn take_rate(&self, key: &str, now_ms: i64, interval_ms: i64, burst_ms: i64) -> StoreResult<Option<u64>> {
        let conn = self.conn().await?;
        let take = "INSERT INTO rate_limits (key, tat_ms) VALUES (?1, ?2 + ?3) \
                    ON CONFLICT (key) DO UPDATE SET tat_ms = max(tat_ms, ?2) + ?3 \
                    WHERE max(tat_ms, ?2) + ?3 - ?2 <= ?4 RETURNING tat_ms";
        if query_opt(&conn, take, (key, now_ms, interval_ms, burst_ms)).await?.is_some() {
            return Ok(None);
        }
        let tat: i64 = match query_opt(&conn, "SELECT tat_ms FROM rate_limits WHERE key = ?1", [key]).await? {
            Some(row) => row.get(0)?,
            None => now_ms,
        };
        Ok(Some(u64::try_from(tat + interval_ms - burst_ms - now_ms).unwrap_or(0).max(1)))
    }

    /// Forgets the rate-limit keys whose requests are all in the past.
    pub async fn sweep_rates(&self, now_ms: i64) -> StoreResult<u64> {
        Ok(self.conn().await?.execute("DELETE FROM rate_limits WHERE tat_ms < ?1", [now_ms]).await?)
    }

    /// How many users the directory holds (each has one user database).
    pub async fn user_count(&self) -> StoreResult<u64> {
        let row = query_opt(&self.conn().await?, "SELECT count(*) FROM users", ()).await?;
        Ok(match row {
            Some(row) => row.get(0)?,
            None => 0,
        })
    }

    /// Every user in the directory, in id order.
    pub async fn user_ids(&self) -> StoreResult<Vec<Uuid>> {
        let conn = self.conn().await?;
        let mut rows = conn.query("SELECT user_id FROM users ORDER BY user_id", ()).await?;
        let mut users = Vec::new();
        while let Some(row) = rows.next().await? {
            let text: String = row.get(0)?;
            users.push(
                Uuid::parse_str(&text)
                    .map_err(|_| StoreError::Corrupt(format!("users directory: `{text}` is not a UUID")))?,
            );
        }
        Ok(users)
    }
}
