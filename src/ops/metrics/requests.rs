//! Request count and latency by route template, method and status. The
//! route is axum's `MatchedPath` (`/auth/device/{device_id}`), never the raw
//! path, which may hold ids; a request no route matched is `unmatched`.
//! Methods outside the standard nine count as `other`, so no client can
//! grow the label sets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use dashmap::DashMap;

use super::text::{Exposition, Histogram, Kind};
use super::Metrics;

/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// The status label of a request whose client went away before the answer
/// (nginx's convention): a long-poll cancelled by its client still counts.
pub const CLIENT_CLOSED: u16 = 499;

const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];
const METHOD_LABELS: [&str; METHODS.len() + 1] =
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "other"];

fn method_index(method: &Method) -> usize {
    METHODS.iter().position(|known| known == method).unwrap_or(METHODS.len())
}

/// Everything kept about one route template.
#[derive(Debug, Default)]
struct RouteStats {
    durations: [Histogram; METHOD_LABELS.len()],
    /// By (method index, status).
    statuses: DashMap<(usize, u16), AtomicU64>,
}

/// Per-route request statistics. A route's entry is made on its first
/// request; after that a request costs a shared-lock lookup and a few
/// relaxed atomic additions.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    routes: DashMap<Arc<str>, RouteStats>,
}

impl RequestMetrics {
    pub fn observe(&self, route: &str, method: &Method, status: u16, duration: Duration) {
        let method = method_index(method);
        if !self.routes.contains_key(route) {
            self.routes.entry(Arc::from(route)).or_default();
        }
        let Some(stats) = self.routes.get(route) else { return };
        stats.durations[method].observe(duration);
        if let Some(count) = stats.statuses.get(&(method, status)) {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.statuses.entry((method, status)).or_default().fetch_add(1, Ordering::Relaxed);
    }

    /// Writes `echolia_http_requests_total` and `echolia_http_request_duration_seconds`.
    pub fn render(&self, text: &mut Exposition) {
        let mut routes: Vec<Arc<str>> = self.routes.iter().map(|route| route.key().clone()).collect();
        routes.sort_unstable();

        let name = "echolia_http_requests_total";
        let help = "HTTP requests answered on the API port, by route template, method and status \
                    (499: the client went away first).";
        text.family(name, Kind::Counter, help);
        for route in &routes {
            let Some(stats) = self.routes.get(&**route) else { continue };
            let mut statuses: Vec<(usize, u16, u64)> =
                stats.statuses.iter().map(|s| (s.key().0, s.key().1, s.value().load(Ordering::Relaxed))).collect();
            statuses.sort_unstable();
            for (method, status, count) in statuses {
                let status = status.to_string();
                let labels = [("route", &**route), ("method", METHOD_LABELS[method]), ("status", status.as_str())];
                text.sample(name, &labels, count as f64);
            }
        }

        let name = "echolia_http_request_duration_seconds";
        let help = "Time from request to response head on the API port, by route template and method \
                    (long-polls included).";
        text.family(name, Kind::Histogram, help);
        for route in &routes {
            let Some(stats) = self.routes.get(&**route) else { continue };
            for (method, histogram) in stats.durations.iter().enumerate() {
                let snapshot = histogram.snapshot();
                if snapshot.count() > 0 {
                    text.histogram(name, &[("route", route), ("method", METHOD_LABELS[method])], &snapshot);
                }
            }
        }
    }
}

/// Middleware (in the router's layer stack) that times every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let mut timing = Timing {
        metrics,
        route: req.extensions().get::<MatchedPath>().cloned(),
        method: req.method().clone(),
        started: Instant::now(),
        status: None,
    };
    let response = next.run(req).await;
    timing.status = Some(response.status().as_u16());
    response
}

/// Records on drop, so a request whose future is dropped (the client hung
/// up, e.g. during a long-poll) is counted too, as [`CLIENT_CLOSED`].
struct Timing {
    metrics: Arc<Metrics>,
    route: Option<MatchedPath>,
    method: Method,
    started: Instant,
    status: Option<u16>,
}

impl Drop for Timing {
    fn drop(&mut self) {
        let route = self.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        self.metrics.requests.observe(route, &self.method, status, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_method_and_status_and_bounds_the_methods() {
        let requests = RequestMetrics::default();
        requests.observe("/sync/push", &Method::POST, 200, Duration::from_millis(3));
        requests.observe("/sync/push", &Method::POST, 200, Duration::from_millis(4));
        requests.observe("/sync/push", &Method::POST, 413, Duration::from_millis(1));
        requests.observe(UNMATCHED, &Method::from_bytes(b"BREW").unwrap(), 404, Duration::from_micros(10));
        let mut text = Exposition::default();
        requests.render(&mut text);
        let body = text.finish();
        assert!(body.contains("echolia_http_requests_total{route=\"/sync/push\",method=\"POST\",status=\"200\"} 2\n"));
        assert!(body.contains("echolia_http_requests_total{route=\"/sync/push\",method=\"POST\",status=\"413\"} 1\n"));
        assert!(body.contains("echolia_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1\n"));
        assert!(body.contains("echolia_http_request_duration_seconds_count{route=\"/sync/push\",method=\"POST\"} 3\n"));
        assert!(!body.contains("BREW"));
        assert!(!body.contains("method=\"GET\""), "no empty histograms: {body}");
    }
}
