//! Unit tests of the entitlement ledger (compiled only for tests: `#[cfg(test)] mod tests;` in mod.rs).
#![cfg(test)]

use chrono::Duration;

use super::*;
use crate::store::{Backend, ControlDb};

const HOUR: i64 = 3_600_000;

fn update(store_id: &str, environment: StoreEnvironment, status: Status, expires: i64, signed: i64) -> Update {
    Update {
        source: Source::Apple,
        environment,
        store_id: store_id.into(),
        product_id: "pro".into(),
        status,
        expires_at: Some(expires),
        grace_expires_at: None,
        signed_at: signed,
    }
}

#[test]
fn access_follows_the_state_and_the_clock() {
    let row = |status, expires_at, grace_expires_at| Row {
        source: Source::Apple,
        product_id: "pro".into(),
        status,
        expires_at,
        grace_expires_at,
        signed_at: 0,
    };
    assert_eq!(row(Status::Active, Some(10), None).at(5), (Status::Active, Some(Some(10))));
    assert_eq!(row(Status::Active, Some(10), None).at(10), (Status::Expired, None));
    assert_eq!(row(Status::Active, None, None).at(i64::MAX - 1), (Status::Active, Some(None)));
    assert_eq!(row(Status::Grace, Some(10), Some(20)).at(15), (Status::Grace, Some(Some(20))));
    assert_eq!(row(Status::Grace, Some(10), Some(20)).at(20), (Status::BillingRetry, None));
    for status in [Status::BillingRetry, Status::Expired, Status::Revoked] {
        assert_eq!(row(status, Some(i64::MAX), Some(i64::MAX)).at(0), (status, None));
    }
}

#[tokio::test]
async fn older_news_never_overwrites_and_environments_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlDb::open(&Backend::local(dir.path())).await.unwrap();
    let conn = control.conn().await.unwrap();
    let now = Utc::now();
    let ms = now.timestamp_millis();
    let user = Uuid::new_v4();
    let sandbox = Live { apple: StoreEnvironment::Sandbox, google: StoreEnvironment::Production };
    let production = Live { apple: StoreEnvironment::Production, google: StoreEnvironment::Production };

    let bought = update("t-1", StoreEnvironment::Sandbox, Status::Active, ms + HOUR, ms - 10);
    assert_eq!(apply(&conn, &bought, Some(user), now).await.unwrap(), Applied::Applied);
    assert_eq!(tier(&conn, user, now, sandbox).await.unwrap(), Tier::Pro);
    assert_eq!(tier(&conn, user, now, production).await.unwrap(), Tier::Free, "a sandbox purchase in production");

    let refunded = update("t-1", StoreEnvironment::Sandbox, Status::Revoked, ms + HOUR, ms);
    assert_eq!(apply(&conn, &refunded, None, now).await.unwrap(), Applied::Applied);
    let older = update("t-1", StoreEnvironment::Sandbox, Status::Active, ms + 2 * HOUR, ms - 5);
    assert_eq!(apply(&conn, &older, None, now).await.unwrap(), Applied::Stale);
    let shown = entitlement(&conn, user, now, sandbox).await.unwrap();
    assert_eq!((shown.tier, shown.status), (Tier::Free, Status::Revoked));
    assert_eq!(owner(&conn, Source::Apple, StoreEnvironment::Sandbox, "t-1").await.unwrap(), Some(Some(user)));

    // Two subscriptions: the one giving access the longest is shown.
    let short = update("t-2", StoreEnvironment::Sandbox, Status::Active, ms + HOUR, ms);
    let long = update("t-3", StoreEnvironment::Sandbox, Status::Active, ms + 5 * HOUR, ms);
    apply(&conn, &short, Some(user), now).await.unwrap();
    apply(&conn, &long, Some(user), now).await.unwrap();
    let shown = entitlement(&conn, user, now, sandbox).await.unwrap();
    assert_eq!(shown.expires_at.map(|t| t.timestamp_millis()), Some(ms + 5 * HOUR));
    // A retired one never counts.
    retire(&conn, Source::Apple, StoreEnvironment::Sandbox, "t-3").await.unwrap();
    let shown = entitlement(&conn, user, now, sandbox).await.unwrap();
    assert_eq!(shown.expires_at.map(|t| t.timestamp_millis()), Some(ms + HOUR));
    assert_eq!(tier(&conn, user, now + Duration::hours(2), sandbox).await.unwrap(), Tier::Free);
    // A deleted user's subscriptions are unlinked.
    delete_user(&conn, user).await.unwrap();
    assert_eq!(entitlement(&conn, user, now, sandbox).await.unwrap(), Entitlement::none());
}

#[tokio::test]
async fn an_apps_transaction_never_shortens_the_state_held() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlDb::open(&Backend::local(dir.path())).await.unwrap();
    let conn = control.conn().await.unwrap();
    let now = Utc::now();
    let ms = now.timestamp_millis();
    let user = Uuid::new_v4();
    let renewed = update("t-1", StoreEnvironment::Sandbox, Status::Active, ms + 2 * HOUR, ms);
    apply(&conn, &renewed, Some(user), now).await.unwrap();
    // The first period's transaction, signed again later.
    let first = update("t-1", StoreEnvironment::Sandbox, Status::Active, ms + HOUR, ms + 10);
    assert_eq!(apply_from_app(&conn, &first, user, now).await.unwrap(), Applied::Stale);
    // A store notification is the store's word: it applies.
    assert_eq!(apply(&conn, &first, None, now).await.unwrap(), Applied::Applied);
    // A later end from the app applies.
    let later = update("t-1", StoreEnvironment::Sandbox, Status::Active, ms + 3 * HOUR, ms + 20);
    assert_eq!(apply_from_app(&conn, &later, user, now).await.unwrap(), Applied::Applied);
    // Grace at the same end is kept; a revocation at the same end is not.
    let mut grace = update("t-1", StoreEnvironment::Sandbox, Status::Grace, ms + 3 * HOUR, ms + 30);
    grace.grace_expires_at = Some(ms + 4 * HOUR);
    apply(&conn, &grace, None, now).await.unwrap();
    let same_end = update("t-1", StoreEnvironment::Sandbox, Status::Active, ms + 3 * HOUR, ms + 40);
    assert_eq!(apply_from_app(&conn, &same_end, user, now).await.unwrap(), Applied::Stale);
    let revoked = update("t-1", StoreEnvironment::Sandbox, Status::Revoked, ms + 3 * HOUR, ms + 50);
    assert_eq!(apply_from_app(&conn, &revoked, user, now).await.unwrap(), Applied::Applied);
    // Still ordered by signed date.
    let older = update("t-1", StoreEnvironment::Sandbox, Status::Active, ms + 9 * HOUR, ms + 45);
    assert_eq!(apply_from_app(&conn, &older, user, now).await.unwrap(), Applied::Stale);
}

#[tokio::test]
async fn a_notification_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlDb::open(&Backend::local(dir.path())).await.unwrap();
    let conn = control.conn().await.unwrap();
    let received = Received {
        source: Source::Google,
        notification_id: "m-1",
        kind: "4",
        store_id: None,
        outcome: "ignored",
        signed_at: None,
    };
    assert!(!seen(&conn, Source::Google, "m-1").await.unwrap());
    assert!(record(&conn, &received, Utc::now()).await.unwrap());
    assert!(!record(&conn, &received, Utc::now()).await.unwrap());
    assert!(seen(&conn, Source::Google, "m-1").await.unwrap());
    assert!(!seen(&conn, Source::Apple, "m-1").await.unwrap(), "per store");
}
