//! The usage rows in the user's database: a row opened when a request
//! starts (after the quota check, in the same transaction), completed when
//! it ends, and summed per day and model for `GET /llm/usage`.

use chrono::{DateTime, NaiveDate, Utc};

use super::quota::{self, Refusal, Spent};
use super::usage::Usage;
use crate::clock::{parse_rfc3339, rfc3339};
use crate::config::llm::Limits;
use crate::store::{StoreResult, UserDb};

/// What a request was, for its row.
pub struct Opening<'a> {
    pub model: &'a str,
    pub provider: &'a str,
    pub endpoint: &'static str,
    pub stream: bool,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Cut upstream or by the client: what was counted is recorded.
    Interrupted,
    UpstreamError,
    /// The upstream refused the request (its 4xx).
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Interrupted => "interrupted",
            Self::UpstreamError => "upstream_error",
            Self::Rejected => "rejected",
        }
    }
}

/// Checks the quota and, if it allows, opens the request's row; one
/// `BEGIN IMMEDIATE` transaction, so two processes cannot both take the last slot.
pub async fn open(
    db: &UserDb,
    limits: Limits,
    now: DateTime<Utc>,
    opening: Opening<'_>,
) -> StoreResult<Result<i64, Refusal>> {
    let tx = db.begin_write().await?;
    let since = rfc3339(now - quota::WINDOW);
    let day = now.date_naive().to_string();
    let mut rows =
        tx.query("SELECT count(*), min(started_at) FROM llm_usage WHERE started_at > ?1", [since.as_str()]).await?;
    let (requests, mut oldest): (u32, Option<String>) = match rows.next().await? {
        Some(row) => (row.get(0)?, row.get(1)?),
        None => (0, None),
    };
    drop(rows);
    // Over the limit (a lowered limit, or several processes): a slot frees only once
    // count − limit + 1 requests have left the window, so the (count − limit + 1)-th oldest decides.
    let limit = limits.requests_per_minute;
    if limit > 0 && requests > limit {
        let mut rows = tx
            .query(
                "SELECT started_at FROM llm_usage WHERE started_at > ?1 ORDER BY started_at LIMIT 1 OFFSET ?2",
                (since.as_str(), i64::from(requests - limit)),
            )
            .await?;
        if let Some(row) = rows.next().await? {
            oldest = Some(row.get(0)?);
        }
    }
    let mut rows = tx
        .query("SELECT coalesce(sum(input_tokens + output_tokens), 0) FROM llm_usage WHERE day = ?1", [day.as_str()])
        .await?;
    let tokens: i64 = match rows.next().await? {
        Some(row) => row.get(0)?,
        None => 0,
    };
    drop(rows);
    let spent = Spent {
        requests_last_minute: requests,
        oldest_in_minute: oldest.as_deref().and_then(parse_rfc3339),
        tokens_today: u64::try_from(tokens).unwrap_or(0),
    };
    if let Err(refusal) = quota::check(limits, spent, now) {
        return Ok(Err(refusal));
    }
    tx.execute(
        "INSERT INTO llm_usage (started_at, day, model, provider, endpoint, stream, status) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')",
        (rfc3339(now), day, opening.model, opening.provider, opening.endpoint, i64::from(opening.stream)),
    )
    .await?;
    let id = tx.last_insert_rowid();
    tx.commit().await?;
    Ok(Ok(id))
}

/// Completes a request's row: how it ended, its tokens (`estimated` when
/// the upstream gave no final count) and cost, its duration.
pub async fn close(
    db: &UserDb,
    id: i64,
    status: Status,
    usage: Usage,
    estimated: bool,
    cost_nano_usd: i64,
    duration_ms: u64,
) -> StoreResult<()> {
    let tx = db.begin_write().await?;
    tx.execute(
        "UPDATE llm_usage SET status = ?2, input_tokens = ?3, output_tokens = ?4, cost_nano_usd = ?5, duration_ms = ?6, \
         estimated = ?7 WHERE id = ?1",
        (
            id,
            status.as_str(),
            i64::try_from(usage.input_tokens).unwrap_or(i64::MAX),
            i64::try_from(usage.output_tokens).unwrap_or(i64::MAX),
            cost_nano_usd,
            i64::try_from(duration_ms).unwrap_or(i64::MAX),
            i64::from(estimated),
        ),
    )
    .await?;
    tx.commit().await
}

/// One row of `GET /llm/usage`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Per day and model, `from` to `to` inclusive, ordered by day then model.
pub async fn summary(db: &UserDb, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<DayUsage>> {
    let conn = db.read().await?;
    let mut rows = conn
        .query(
            "SELECT day, model, count(*), sum(input_tokens), sum(output_tokens), sum(cost_nano_usd) FROM llm_usage \
             WHERE day >= ?1 AND day <= ?2 GROUP BY day, model ORDER BY day, model",
            (from.to_string(), to.to_string()),
        )
        .await?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().await? {
        let count = |i| row.get::<i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
        out.push(DayUsage {
            day: row.get(0)?,
            model: row.get(1)?,
            requests: count(2)?,
            input_tokens: count(3)?,
            output_tokens: count(4)?,
            cost_usd: row.get::<i64>(5)? as f64 / 1e9,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::store::Backend;

    fn opening() -> Opening<'static> {
        Opening { model: "m", provider: "default", endpoint: "chat", stream: false }
    }

    /// Five requests in the minute and a limit lowered to 3: a slot frees when
    /// the third oldest leaves the window, not the oldest.
    #[tokio::test]
    async fn retry_after_waits_for_enough_requests_to_leave_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::open(&Backend::local(dir.path()), Uuid::new_v4(), true).await.unwrap();
        let start = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z").unwrap().with_timezone(&Utc);
        let five = Limits { requests_per_minute: 5, tokens_per_day: 0 };
        for n in 0..5 {
            let at = start + chrono::Duration::seconds(10 * n);
            assert!(open(&db, five, at, opening()).await.unwrap().is_ok());
        }
        let three = Limits { requests_per_minute: 3, tokens_per_day: 0 };
        let now = start + chrono::Duration::seconds(45);
        let refusal = open(&db, three, now, opening()).await.unwrap().unwrap_err();
        // The third oldest started at +20 s: it leaves at +80 s, 35 s from now.
        assert_eq!(refusal, Refusal::RequestsPerMinute { retry_after: 35 });
        let refusal = open(&db, five, now, opening()).await.unwrap().unwrap_err();
        assert_eq!(refusal, Refusal::RequestsPerMinute { retry_after: 15 }, "at the limit: the oldest");
        // And at +80 s one more may start under the limit of 3.
        let later = start + chrono::Duration::seconds(80) + chrono::Duration::milliseconds(1);
        assert!(open(&db, three, later, opening()).await.unwrap().is_ok());
    }
}
