//! The one error type of the HTTP API.
//!
//! Every failure a handler can meet becomes an [`ApiError`], which renders as
//! `{"error": {"code", "message"}}` with the status the contract names. Client
//! errors carry a stable snake_case code and a message for a person; internal
//! errors are logged with their detail and answered generically, so nothing a
//! database or library says (and nothing a request carried) leaks to a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A 4xx answer: the request was at fault.
    #[error("{code}: {message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        /// Seconds, sent as `Retry-After` (429).
        retry_after: Option<u64>,
    },
    /// Storage is busy, full, read-only or failing: 503 `storage_unavailable`
    /// with `Retry-After`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or an infrastructure failure, answered as 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Client { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 422 `validation_failed` naming the offending field.
    pub fn invalid_field(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::unprocessable("validation_failed", format!("{field}: {problem}"))
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::Client {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: "too many requests; retry later".into(),
            retry_after: Some(retry_after_secs.max(1)),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal(detail.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. } => *status,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of this error (what clients match on).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Client { code, .. } => code,
            Self::Unavailable(_) => "storage_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }
}

/// Seconds a client should wait before retrying after a 503.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
}

// The OpenAPI schema of what `ApiError` renders; handlers name it in their responses.
/// Every error: `{"error": {"code", "message"}}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `validation_failed`, `device_revoked`.
    code: String,
    /// For a person; names the offending field where there is one.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (message, retry_after) = match &self {
            Self::Client { message, retry_after, .. } => (message.as_str(), *retry_after),
            Self::Unavailable(detail) => {
                tracing::warn!(error = %detail, "storage unavailable");
                ("storage is busy or unavailable; retry shortly", Some(UNAVAILABLE_RETRY_AFTER_SECS))
            }
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ("internal error", None)
            }
        };
        let body = ErrorBody { error: ErrorFields { code: self.code(), message } };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Busy(detail) | StoreError::Unavailable(detail) => Self::Unavailable(detail),
            // The account was deleted while this request was in flight.
            StoreError::UserNotFound(_) => Self::unauthorized("invalid_token", "this account no longer exists"),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<libsql::Error> for ApiError {
    fn from(err: libsql::Error) -> Self {
        StoreError::from(err).into()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
