//! Entitlements: what the App Store and the Play Store last said about each
//! subscription (control database, `store_subscriptions`), whose it is, and
//! the tier it gives (RevenueCat's model: a user is `pro` while any of its
//! subscriptions gives access).
//!
//! Each subscription is in one of five states: `active` (access until
//! `expires_at`), `grace` (billing failed, access kept until the grace end),
//! `billing_retry` (billing failed, no access), `expired`, `revoked`
//! (refunded or revoked: no access, at once). A state carries the store's
//! signed date: news older than the state held is recorded and changes
//! nothing, so notifications may arrive in any order. Sandbox and production
//! rows are kept apart and only the server's environment of each store counts.
//!
//! Also here, below the areas, the stores' verifiers and clients the
//! payments area uses: [`apple`] (signed data), [`google`] (Play Developer
//! API, Pub/Sub push tokens).

pub mod apple;
pub mod google;

use chrono::{DateTime, TimeZone, Utc};
use libsql::{Connection, Value};
use serde::Serialize;
use uuid::Uuid;

use crate::clock::rfc3339;
use crate::config::{Config, Missing, StoreEnvironment};
use crate::store::{query_opt, StoreResult};

/// What a user may use: the LLM quotas and the fallback embeddings follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Free,
    Pro,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Apple,
    Google,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apple => "apple",
            Self::Google => "google",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "apple" => Some(Self::Apple),
            "google" => Some(Self::Google),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Grace,
    BillingRetry,
    Expired,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Grace => "grace",
            Self::BillingRetry => "billing_retry",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "grace" => Self::Grace,
            "billing_retry" => Self::BillingRetry,
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// A store's word on one subscription at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub source: Source,
    pub environment: StoreEnvironment,
    /// Apple's `originalTransactionId`, Google's purchase token.
    pub store_id: String,
    pub product_id: String,
    pub status: Status,
    /// Unix milliseconds; `None`: no end (a non-consumable purchase).
    pub expires_at: Option<i64>,
    pub grace_expires_at: Option<i64>,
    /// The store's signed date of this word (unix milliseconds).
    pub signed_at: i64,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The subscription now holds this state.
    Applied,
    /// The subscription already held newer news; nothing changed.
    Stale,
}

/// Records `update` unless the subscription holds a state signed later, and
/// links the subscription to `user` when given (a link is not news: it holds
/// whatever the order). Run it inside the caller's transaction.
pub async fn apply(conn: &Connection, update: &Update, user: Option<Uuid>, now: DateTime<Utc>) -> StoreResult<Applied> {
    apply_if(conn, update, user, now, false).await
}

/// [`apply`] for a transaction an app posted, which may be an old one the
/// store signed again (Apple re-signs a transaction whenever the app reads
/// it): it also needs to end no earlier than the state held, and at the
/// same end it does not replace the grace or billing-retry state it cannot
/// express, unless it revokes.
pub async fn apply_from_app(
    conn: &Connection,
    update: &Update,
    user: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<Applied> {
    apply_if(conn, update, Some(user), now, true).await
}

async fn apply_if(
    conn: &Connection,
    update: &Update,
    user: Option<Uuid>,
    now: DateTime<Utc>,
    no_shorter: bool,
) -> StoreResult<Applied> {
    let changed = conn
        .execute(
            "INSERT INTO store_subscriptions \
             (source, environment, store_id, user_id, product_id, status, expires_at, grace_expires_at, signed_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (source, environment, store_id) DO UPDATE SET \
               product_id = excluded.product_id, status = excluded.status, expires_at = excluded.expires_at, \
               grace_expires_at = excluded.grace_expires_at, signed_at = excluded.signed_at, \
               updated_at = excluded.updated_at \
             WHERE excluded.signed_at >= store_subscriptions.signed_at \
               AND (?11 = 0 OR store_subscriptions.expires_at IS NULL \
                 OR excluded.expires_at > store_subscriptions.expires_at \
                 OR (excluded.expires_at = store_subscriptions.expires_at \
                   AND (excluded.status = 'revoked' \
                     OR store_subscriptions.status NOT IN ('grace', 'billing_retry'))))",
            vec![
                Value::from(update.source.as_str()),
                Value::from(update.environment.as_str()),
                Value::from(update.store_id.clone()),
                user.map_or(Value::Null, |user| Value::from(user.to_string())),
                Value::from(update.product_id.clone()),
                Value::from(update.status.as_str()),
                update.expires_at.map_or(Value::Null, Value::from),
                update.grace_expires_at.map_or(Value::Null, Value::from),
                Value::from(update.signed_at),
                Value::from(rfc3339(now)),
                Value::from(i64::from(no_shorter)),
            ],
        )
        .await?;
    if let Some(user) = user {
        link(conn, update.source, update.environment, &update.store_id, user).await?;
    }
    Ok(if changed > 0 { Applied::Applied } else { Applied::Stale })
}

/// Links a known subscription to `user` (a purchase restored on another
/// account moves to it, as RevenueCat's default transfer does).
pub async fn link(
    conn: &Connection,
    source: Source,
    environment: StoreEnvironment,
    store_id: &str,
    user: Uuid,
) -> StoreResult<()> {
    conn.execute(
        "UPDATE store_subscriptions SET user_id = ?4 WHERE source = ?1 AND environment = ?2 AND store_id = ?3",
        (source.as_str(), environment.as_str(), store_id, user.to_string()),
    )
    .await?;
    Ok(())
}

/// The user a subscription belongs to: `None` if the subscription is
/// unknown, `Some(None)` if known but not linked yet.
pub async fn owner(
    conn: &Connection,
    source: Source,
    environment: StoreEnvironment,
    store_id: &str,
) -> StoreResult<Option<Option<Uuid>>> {
    let row = query_opt(
        conn,
        "SELECT user_id FROM store_subscriptions WHERE source = ?1 AND environment = ?2 AND store_id = ?3",
        (source.as_str(), environment.as_str(), store_id),
    )
    .await?;
    Ok(row.map(|row| row.get::<Option<String>>(0).ok().flatten().and_then(|id| Uuid::parse_str(&id).ok())))
}

/// Marks a subscription replaced by a newer one (Google's
/// `linkedPurchaseToken`): it never gives access again.
pub async fn retire(
    conn: &Connection,
    source: Source,
    environment: StoreEnvironment,
    store_id: &str,
) -> StoreResult<()> {
    conn.execute(
        "UPDATE store_subscriptions SET retired = 1 WHERE source = ?1 AND environment = ?2 AND store_id = ?3",
        (source.as_str(), environment.as_str(), store_id),
    )
    .await?;
    Ok(())
}

/// Whether a notification was already received.
pub async fn seen(conn: &Connection, source: Source, notification_id: &str) -> StoreResult<bool> {
    let row = query_opt(
        conn,
        "SELECT 1 FROM store_notifications WHERE source = ?1 AND notification_id = ?2",
        (source.as_str(), notification_id),
    )
    .await?;
    Ok(row.is_some())
}

/// A notification as received, for dedupe and the record.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    pub source: Source,
    pub notification_id: &'a str,
    pub kind: &'a str,
    pub store_id: Option<&'a str>,
    pub outcome: &'static str,
    pub signed_at: Option<i64>,
}

/// Records a notification; `false` when it was already there (a redelivery:
/// the caller rolls back whatever it did).
pub async fn record(conn: &Connection, received: &Received<'_>, now: DateTime<Utc>) -> StoreResult<bool> {
    let inserted = conn
        .execute(
            "INSERT OR IGNORE INTO store_notifications \
             (source, notification_id, kind, store_id, outcome, signed_at, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vec![
                Value::from(received.source.as_str()),
                Value::from(received.notification_id.to_owned()),
                Value::from(received.kind.to_owned()),
                received.store_id.map_or(Value::Null, |id| Value::from(id.to_owned())),
                Value::from(received.outcome),
                received.signed_at.map_or(Value::Null, Value::from),
                Value::from(rfc3339(now)),
            ],
        )
        .await?;
    Ok(inserted > 0)
}

/// The stores as configured, built once at start; a store not configured
/// holds the variables it still needs.
pub struct Stores {
    pub apple: Result<apple::AppleVerifier, Missing>,
    pub google: Result<google::PlayClient, Missing>,
    pub pubsub: Result<google::PushVerifier, Missing>,
    pub live: Live,
}

impl Stores {
    pub fn from_config(config: &Config) -> Self {
        if let Ok(apple) = &config.apple {
            if !apple.root_certs.is_empty() && apple.environment == StoreEnvironment::Production {
                tracing::warn!(
                    "APPLE_ROOT_CERTS replaces Apple's root for production App Store data: \
                     whoever holds those roots' keys can grant pro"
                );
            }
        }
        let apple = config.apple.clone().map(|apple| {
            apple::AppleVerifier::new(apple.root_certs, apple.bundle_id, apple.environment, apple.app_apple_id)
        });
        let google = config.google.clone().and_then(|google| {
            google::PlayClient::new(google).ok_or_else(|| Missing(vec!["GOOGLE_SERVICE_ACCOUNT_FILE"]))
        });
        let pubsub = config.google_pubsub.clone().map(google::PushVerifier::new);
        Self { apple, google, pubsub, live: Live::from_config(config) }
    }
}

/// Which environment of each store counts on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub apple: StoreEnvironment,
    pub google: StoreEnvironment,
}

impl Live {
    /// The configured environments (production for a store not configured).
    pub fn from_config(config: &Config) -> Self {
        Self {
            apple: config.apple.as_ref().map_or(StoreEnvironment::Production, |apple| apple.environment),
            google: config.google.as_ref().map_or(StoreEnvironment::Production, |google| google.environment),
        }
    }
}

/// A user's entitlement, as `GET /account/entitlement` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entitlement {
    pub tier: Tier,
    /// The state of the subscription shown: the one giving access (the
    /// longest), else the latest news; `expired` when there is none.
    pub status: Status,
    /// When the access of this status ends (the grace end in `grace`);
    /// null without a subscription or for a purchase without an end.
    pub expires_at: Option<DateTime<Utc>>,
    /// null without a subscription.
    pub source: Option<Source>,
    pub product_id: Option<String>,
}

impl Entitlement {
    fn none() -> Self {
        Self { tier: Tier::Free, status: Status::Expired, expires_at: None, source: None, product_id: None }
    }
}

/// One stored subscription, as read.
#[derive(Debug, Clone)]
struct Row {
    source: Source,
    product_id: String,
    status: Status,
    expires_at: Option<i64>,
    grace_expires_at: Option<i64>,
    signed_at: i64,
}

impl Row {
    /// The status at `now` (an active subscription past its end is expired,
    /// a grace period past its end is billing retry) and when access ends,
    /// if it gives access: `Some(None)` for no end.
    fn at(&self, now_ms: i64) -> (Status, Option<Option<i64>>) {
        match self.status {
            Status::Active => match self.expires_at {
                Some(end) if end <= now_ms => (Status::Expired, None),
                end => (Status::Active, Some(end)),
            },
            Status::Grace => match self.grace_expires_at.or(self.expires_at) {
                Some(end) if end > now_ms => (Status::Grace, Some(Some(end))),
                _ => (Status::BillingRetry, None),
            },
            other => (other, None),
        }
    }
}

fn millis_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// The entitlement of `user` at `now`.
pub async fn entitlement(conn: &Connection, user: Uuid, now: DateTime<Utc>, live: Live) -> StoreResult<Entitlement> {
    let mut rows = conn
        .query(
            "SELECT source, product_id, status, expires_at, grace_expires_at, signed_at FROM store_subscriptions \
             WHERE user_id = ?1 AND retired = 0 \
               AND ((source = 'apple' AND environment = ?2) OR (source = 'google' AND environment = ?3))",
            (user.to_string(), live.apple.as_str(), live.google.as_str()),
        )
        .await?;
    let mut subscriptions = Vec::new();
    while let Some(row) = rows.next().await? {
        let (Some(source), Some(status)) =
            (Source::parse(&row.get::<String>(0)?), Status::parse(&row.get::<String>(2)?))
        else {
            continue;
        };
        subscriptions.push(Row {
            source,
            product_id: row.get(1)?,
            status,
            expires_at: row.get(3)?,
            grace_expires_at: row.get(4)?,
            signed_at: row.get(5)?,
        });
    }
    let now_ms = now.timestamp_millis();
    // Giving access, longest first (no end is longest); else the latest news.
    let granting = subscriptions
        .iter()
        .filter_map(|row| match row.at(now_ms) {
            (status, Some(end)) => Some((row, status, end)),
            _ => None,
        })
        .max_by_key(|(_, _, end)| end.unwrap_or(i64::MAX));
    if let Some((row, status, end)) = granting {
        return Ok(Entitlement {
            tier: Tier::Pro,
            status,
            expires_at: end.and_then(millis_to_time),
            source: Some(row.source),
            product_id: Some(row.product_id.clone()),
        });
    }
    let Some(latest) = subscriptions.iter().max_by_key(|row| row.signed_at) else { return Ok(Entitlement::none()) };
    Ok(Entitlement {
        tier: Tier::Free,
        status: latest.at(now_ms).0,
        expires_at: None,
        source: Some(latest.source),
        product_id: Some(latest.product_id.clone()),
    })
}

/// The tier of `user` at `now`: what the LLM proxy's quotas and `GET
/// /account` follow.
pub async fn tier(conn: &Connection, user: Uuid, now: DateTime<Utc>, live: Live) -> StoreResult<Tier> {
    Ok(entitlement(conn, user, now, live).await?.tier)
}

/// Forgets a deleted user's links (the subscriptions stay, unlinked: the
/// store may still write about them).
pub async fn delete_user(conn: &Connection, user: Uuid) -> StoreResult<()> {
    conn.execute("UPDATE store_subscriptions SET user_id = NULL WHERE user_id = ?1", [user.to_string()]).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
