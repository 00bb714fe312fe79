//! Logs and request tracing. A request's span carries its id, method, route
//! template and (once authenticated) user and device ids; its end is logged
//! with status and latency. Bodies, query strings, tokens and keys are never
//! recorded.

use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use tracing::Span;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The server's level unless `RUST_LOG` says otherwise.
pub const DEFAULT_LEVEL: &str = "info";

/// Always added to the default level: libSQL's replication client only on
/// errors. It logs every sync at `info` and any slower than its average at
/// `warn` (hundreds a second with embedded replicas); a sync that fails is
/// logged by the replicas, with its error.
const QUIET_LIBRARIES: &str = "libsql::replication=error,libsql_replication=error";

/// `RUST_LOG`'s filter, else `level` with [`QUIET_LIBRARIES`].
pub fn filter_or(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{level},{QUIET_LIBRARIES}")))
}

/// Installs the global subscriber; `RUST_LOG` filters (default [`DEFAULT_LEVEL`]).
pub fn init(format: LogFormat) {
    let filter = filter_or(DEFAULT_LEVEL);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    // Tests and embedders may have installed one already; theirs stays.
    let _ = installed;
}

/// The span of one request.
pub fn request_span<B>(req: &Request<B>) -> Span {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id,
        user_id = tracing::field::Empty,
        device_id = tracing::field::Empty,
    )
}

/// The line that closes a request.
pub fn log_response<B>(res: &Response<B>, latency: Duration, _span: &Span) {
    let status = res.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if res.status().is_server_error() {
        tracing::error!(status, latency_ms, "request failed");
    } else {
        tracing::info!(status, latency_ms, "request done");
    }
}

#[cfg(test)]
mod default_filter_tests {
    #[test]
    fn the_default_filter_parses_whole() {
        let directives = format!("{},{}", super::DEFAULT_LEVEL, super::QUIET_LIBRARIES);
        let filter = tracing_subscriber::EnvFilter::builder().parse(directives).expect("every directive parses");
        let shown = filter.to_string();
        assert!(shown.contains("libsql::replication=error") && shown.contains("libsql_replication=error"), "{shown}");
    }
}
