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
