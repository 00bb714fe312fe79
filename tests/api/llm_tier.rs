//! The LLM quotas follow the subscription: a purchase lifts a user to the
//! `pro` quotas, a refund takes them back to `free` at once.

use chrono::Duration;
use echolia::clock::Clock;
use reqwest::StatusCode;

use crate::helpers::{assert_error, Session, TestApp};
use crate::llm::{ask, chat, llm_app};
use crate::payments_apple::{ms, notification, notify, post_transaction, sign, test_root_path, transaction};

async fn ask_once(app: &TestApp, user: &Session) -> reqwest::Response {
    chat(app, user, &ask("priced", "hello", false)).await
}

#[tokio::test]
async fn a_purchase_lifts_the_llm_quota_to_pro_and_a_refund_takes_it_back() {
    let root = test_root_path();
    let llm = llm_app(&[
        ("APPLE_ROOT_CERTS", &root),
        ("APPLE_ENVIRONMENT", "Sandbox"),
        ("APPLE_BUNDLE_ID", "com.example"),
        ("LLM_FREE_REQUESTS_PER_MINUTE", "1"),
        ("LLM_PRO_REQUESTS_PER_MINUTE", "100"),
    ])
    .await;
    let app = &llm.app;
    let user = app.register().await;

    // Free: one request a minute.
    assert_eq!(ask_once(app, &user).await.status(), StatusCode::OK);
    let refused = ask_once(app, &user).await;
    let message = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    assert!(message.contains("free"), "{message}");

    // A subscription bought in the app: pro quotas at once, within the same minute.
    let (now, month) = (app.clock.now(), Duration::days(30));
    let bought = transaction("2000000001", ms(now + month), ms(now), Some(user.user_id));
    assert_eq!(post_transaction(app, &user, &sign(&bought)).await.status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(ask_once(app, &user).await.status(), StatusCode::OK);
    }

    // Refunded: back to free, whose one request a minute is long spent.
    app.clock.advance(Duration::seconds(10));
    let at = app.clock.now();
    let refunded = transaction("2000000001", ms(now + month), ms(at), Some(user.user_id));
    let (_, refund) = notification("REFUND", None, ms(at), &refunded, None);
    assert_eq!(notify(app, &refund).await, "applied");
    let refused = ask_once(app, &user).await;
    let message = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded").await;
    assert!(message.contains("free"), "{message}");
}
