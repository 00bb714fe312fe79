//! `ApiJson<T>`: a JSON body, with errors a client can act on.
//! Wrong content type → 415; over the route's body limit → 413; not JSON →
//! 400 `malformed_json`; JSON of the wrong shape → 422 naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected `Content-Type: application/json`",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("body_too_large", "the request body is larger than this endpoint accepts")
            } else {
                ApiError::bad_request("invalid_body", "the request body could not be read")
            }
        })?;
        parse(&body).map(ApiJson)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON, telling syntax errors (400) from shape errors (422, with the
/// path of the field at fault). serde_json reports some shape errors (an
/// array where an enum belongs) as syntax errors, so a failed parse of a
/// document that is valid JSON counts as a shape error.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if !inner.is_data() && serde_json::from_slice::<IgnoredAny>(body).is_err() {
            return malformed(inner);
        }
        if path == "." {
            ApiError::unprocessable("validation_failed", inner.to_string())
        } else {
            ApiError::invalid_field(&path, inner)
        }
    })?;
    deserializer.end().map_err(malformed)?;
    Ok(value)
}

fn malformed(err: serde_json::Error) -> ApiError {
    ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Probe {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn status_and_message(body: &str) -> (StatusCode, String) {
        match parse::<Probe>(body.as_bytes()).unwrap_err() {
            ApiError::Client { status, message, .. } => (status, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn syntax_is_400_and_shape_is_422_with_the_field() {
        assert_eq!(status_and_message("{").0, StatusCode::BAD_REQUEST);
        assert_eq!(status_and_message(r#"{"name": "a"} trailing"#).0, StatusCode::BAD_REQUEST);
        let (status, message) = status_and_message("{}");
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message.contains("missing field `name`"), "{message}");
        let (status, message) = status_and_message(r#"{"name": 5}"#);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message.starts_with("name: "), "{message}");
        let (_, message) = status_and_message(r#"{"name": "a", "inner": {"count": "x"}}"#);
        assert!(message.starts_with("inner.count: "), "{message}");
        let (status, message) = status_and_message(r#"{"name": ["a"]}"#);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message.starts_with("name: "), "{message}");
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/vnd.api+json", true),
            ("text/plain", false),
            ("application/msgpack", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&headers), ok, "{value}");
        }
    }
}
