//! A route's body limit, enforced twice: on the bytes read (axum's
//! [`DefaultBodyLimit`]) and, before any byte is read, on the length the
//! request declares. The second answers 413 at once: with
//! `Expect: 100-continue`, hyper sends `100 Continue` only when the body is
//! first read, so a client announcing an oversized body never sends it.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;

/// The limit of a group of routes, and the error code its 413 carries.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub bytes: usize,
    pub code: &'static str,
    pub message: &'static str,
}

impl BodyLimit {
    /// `router`'s routes with this limit, on declared and read bytes alike.
    pub fn apply<S: Clone + Send + Sync + 'static>(self, router: OpenApiRouter<S>) -> OpenApiRouter<S> {
        router
            .layer(DefaultBodyLimit::max(self.bytes))
            .layer(axum::middleware::from_fn_with_state(self, refuse_declared_over))
    }
}

/// 413 when `Content-Length` is over the limit, before the body is touched.
async fn refuse_declared_over(State(limit): State<BodyLimit>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit.bytes as u64) {
        return ApiError::too_large(limit.code, limit.message).into_response();
    }
    next.run(req).await
}
