//! Issue 23's findings, each held by a test that failed before its fix.

use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test]
async fn request_id_from_the_client_is_echoed_only_when_short_and_visible_ascii() {
    let app = spawn_app().await;
    let echoed = |id: String| {
        let (client, url) = (app.client.clone(), app.url("/health"));
        async move {
            let resp = client.get(url).header("x-request-id", id).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    let good = "client-id_0123:abc".to_owned();
    assert_eq!(echoed(good.clone()).await, good);
    let longest = "~".repeat(64);
    assert_eq!(echoed(longest.clone()).await, longest);

    for bad in ["a".repeat(390 * 1024), "b".repeat(65), "has space".to_owned(), "tab\there".to_owned(), String::new()] {
        let got = echoed(bad.clone()).await;
        assert!(got != bad, "echoed a {}-byte id", bad.len());
        assert!(Uuid::parse_str(&got).is_ok(), "a generated id, not {:.80}", got);
    }
}
