//! Content negotiation for the sync endpoints: JSON or MessagePack in
//! (`Content-Type`), JSON or MessagePack out (`Accept`), same field names.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

use super::json::parse as parse_json;
use crate::error::ApiError;
use crate::events::wire::binary_payloads;

pub const MSGPACK: &str = "application/msgpack";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

impl Format {
    fn content_type(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(Self::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => Some(Self::MsgPack),
            _ => None,
        }
    }

    /// MessagePack when the client's `Accept` names it, JSON otherwise.
    fn accepted(headers: &HeaderMap) -> Self {
        let accepts_msgpack = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|value| {
            value.split(',').any(|item| {
                let mut parts = item.split(';');
                let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
                !refused
                    && matches!(
                        media.as_str(),
                        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack"
                    )
            })
        });
        if accepts_msgpack {
            Self::MsgPack
        } else {
            Self::Json
        }
    }

    /// Serializes a response body in this format.
    pub fn respond<T: Serialize>(self, status: StatusCode, value: &T) -> Response {
        match self.encode(value) {
            Ok(bytes) => self.respond_encoded(status, bytes),
            Err(err) => ApiError::internal(format!("encoding a response: {err}")).into_response(),
        }
    }

    /// A body in this format.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, String> {
        self.encode_sized(value, 128)
    }

    /// A body in this format, written into a buffer of `capacity` bytes to
    /// begin with: a body whose size is known roughly (a pull page) is then
    /// not copied each time the buffer doubles.
    pub fn encode_sized<T: Serialize>(self, value: &T, capacity: usize) -> Result<Vec<u8>, String> {
        let mut body = Vec::with_capacity(capacity);
        match self {
            Self::Json => serde_json::to_writer(&mut body, value).map_err(|e| e.to_string())?,
            Self::MsgPack => rmp_serde::encode::write_named(&mut body, value).map_err(|e| e.to_string())?,
        }
        Ok(body)
    }

    /// A response with a body [`Self::encode`] made.
    pub fn respond_encoded(self, status: StatusCode, body: impl Into<Body>) -> Response {
        let content_type = match self {
            Self::Json => "application/json",
            Self::MsgPack => MSGPACK,
        };
        let mut response = (status, body.into()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept"));
        response
    }
}

/// The response format the client asked for.
#[derive(Debug, Clone, Copy)]
pub struct Accepts(pub Format);

impl<S: Send + Sync> FromRequestParts<S> for Accepts {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Accepts(Format::accepted(&parts.headers)))
    }
}

/// A sync request body in JSON or MessagePack. Over the route's body limit
/// → 413 `batch_too_large`; undecodable → 400; wrong shape → 422 naming the field.
pub struct SyncBody<T>(pub T);

impl<S, T> FromRequest<S> for SyncBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Some(format) = Format::content_type(req.headers()) else {
            return Err(ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected `Content-Type: application/json` or `application/msgpack`",
            ));
        };
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("batch_too_large", "the batch is larger than 16 MiB")
            } else {
                ApiError::bad_request("invalid_body", "the request body could not be read")
            }
        })?;
        match format {
            Format::Json => parse_json(&body),
            Format::MsgPack => parse_msgpack(&body),
        }
        .map(SyncBody)
    }
}

/// Decodes MessagePack as the sync endpoints write it (ids and times as
/// strings, payloads as `bin`): what a client of this crate reads responses with.
pub fn from_msgpack<T: DeserializeOwned>(body: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    T::deserialize(&mut rmp_serde::Deserializer::from_read_ref(body).with_human_readable())
}

/// Parses MessagePack: 400 when it is not exactly one MessagePack value,
/// 422 (with the field's path) when it decodes but has the wrong shape.
/// Strict as JSON is: payloads only as `bin`, enums only by name.
pub fn parse_msgpack<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Human-readable, so ids and times are read from the strings clients send
    // (the default expects UUIDs as 16-byte arrays).
    // Read through a slice that advances, so what follows the value shows.
    let mut rest = body;
    let mut deserializer = rmp_serde::Deserializer::new(&mut rest).with_human_readable();
    let decoded = binary_payloads(|| serde_path_to_error::deserialize(&mut deserializer));
    drop(deserializer);
    let malformed = |detail: String| {
        ApiError::bad_request("malformed_msgpack", format!("the body is not valid MessagePack: {detail}"))
    };
    let value = decoded.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if rmp_serde::from_slice::<IgnoredAny>(body).is_err() {
            return malformed(inner.to_string());
        }
        if path == "." {
            ApiError::unprocessable("validation_failed", inner.to_string())
        } else {
            ApiError::invalid_field(&path, inner)
        }
    })?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes after the value", rest.len())));
    }
    Ok(value)
}
