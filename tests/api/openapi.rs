//! The router and `/openapi.json` agree: every documented operation is served,
//! and every served route is documented. Routes registered with
//! `utoipa_axum::routes!` hold this by construction; these tests catch a
//! route added beside it.

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

/// Every (method, path) the API port serves.
const SERVED: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("POST", "/auth/register"),
    ("POST", "/auth/pair-device"),
    ("POST", "/auth/refresh"),
    ("GET", "/auth/devices"),
    ("PATCH", "/auth/devices/current"),
    ("DELETE", "/auth/device/{device_id}"),
    ("POST", "/auth/pairing"),
    ("POST", "/auth/pairing/claim"),
    ("GET", "/auth/pairing/{pairing_id}"),
    ("POST", "/auth/pairing/{pairing_id}/approve"),
    ("POST", "/auth/pairing/{pairing_id}/reject"),
    ("GET", "/auth/pairing/{pairing_id}/result"),
    ("GET", "/auth/keys"),
    ("POST", "/auth/keys/rotate"),
    ("GET", "/audit/devices/{device_id}/history"),
    ("GET", "/account"),
    ("DELETE", "/account"),
    ("GET", "/account/export"),
    ("GET", "/account/entitlement"),
    ("POST", "/payments/apple/transactions"),
    ("POST", "/webhooks/apple"),
    ("POST", "/payments/google/subscriptions"),
    ("POST", "/webhooks/google"),
    ("POST", "/sync/push"),
    ("GET", "/sync/pull"),
    ("GET", "/sync/events"),
    ("GET", "/sync/status"),
    ("POST", "/llm/v1/chat/completions"),
    ("POST", "/llm/v1/embeddings"),
    ("GET", "/embeddings/capability"),
    ("POST", "/embeddings"),
    ("GET", "/llm/v1/models"),
    ("GET", "/llm/usage"),
    ("GET", "/llm/ohttp-keys"),
    ("POST", "/llm/ohttp"),
];

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn documented(app: &TestApp) -> BTreeSet<(String, String)> {
    let spec: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in METHODS.iter().filter(|method| item.get(**method).is_some()) {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// Whether the answer came from the router's fallbacks rather than a route.
async fn fallback(app: &TestApp, method: &str, path: &str) -> Option<String> {
    let mut url = String::new();
    for segment in path.split('/').skip(1) {
        url.push('/');
        // Path parameters are all ids.
        url.push_str(&if segment.starts_with('{') { Uuid::now_v7().to_string() } else { segment.to_owned() });
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let resp = app.client.request(method, app.url(&url)).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let fell_through = (status == StatusCode::NOT_FOUND && code == "not_found")
        || (status == StatusCode::METHOD_NOT_ALLOWED && code == "method_not_allowed");
    fell_through.then(|| format!("{status} {code}"))
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = spawn_app().await;
    // The probe tells a fallback from a route.
    assert!(fallback(&app, "GET", "/no/such/route").await.is_some());
    assert!(fallback(&app, "PUT", "/health").await.is_some());

    let operations = documented(&app).await;
    assert!(!operations.is_empty());
    for (method, path) in &operations {
        assert_eq!(fallback(&app, method, path).await, None, "{method} {path} is documented but not served");
    }
}

#[tokio::test]
async fn every_served_route_is_documented() {
    let app = spawn_app().await;
    let served: BTreeSet<(String, String)> =
        SERVED.iter().map(|(method, path)| (method.to_string(), path.to_string())).collect();
    for (method, path) in &served {
        assert_eq!(fallback(&app, method, path).await, None, "{method} {path} is served");
    }
    assert_eq!(documented(&app).await, served);
}

/// API routes are registered only through `OpenApiRouter::routes(routes!(..))`:
/// a plain axum route would be served undocumented. The metrics listener is
/// not this API and has its own router.
#[test]
fn no_route_is_registered_beside_the_openapi_router() {
    const PLAIN: [&str; 4] = [".route(", ".route_service(", ".nest(", ".nest_service("];
    const OWN_LISTENER: &str = "src/ops/metrics/mod.rs";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    let mut offenders = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            if path.extension().is_none_or(|ext| ext != "rs") || name == OWN_LISTENER {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (line, content) in text.lines().enumerate() {
                if PLAIN.iter().any(|call| content.contains(call)) {
                    offenders.push(format!("{name}:{}: {}", line + 1, content.trim()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "register API routes with utoipa_axum::routes!:\n{}", offenders.join("\n"));
}
