//! The control database: the users directory (and, in later migrations,
//! pairing sessions, entitlements and webhook dedupe).

use chrono::{DateTime, Utc};
use libsql::{Connection, Database};
use uuid::Uuid;

use super::{connect, migrations, query_opt, Backend, StoreResult};
use crate::clock::rfc3339;

pub struct ControlDb {
    db: Database,
}

impl ControlDb {
    pub async fn open(backend: &Backend) -> StoreResult<Self> {
        let db = backend.open_control().await?;
        migrations::apply(&connect(&db).await?, migrations::CONTROL).await?;
        Ok(Self { db })
    }

    pub async fn conn(&self) -> StoreResult<Connection> {
        connect(&self.db).await
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
}
