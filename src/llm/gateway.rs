//! The Oblivious HTTP gateway (RFC 9458, Binary HTTP RFC 9292, chunked
//! OHTTP draft-ietf-ohai-chunked-ohttp): `GET /llm/ohttp-keys` serves the key
//! configuration; `POST /llm/ohttp` decrypts a request, dispatches the
//! Binary HTTP request inside (one of the `/llm/*` requests, with its own
//! `Authorization`) to the same handlers, and encrypts the answer. A relay
//! or TLS terminator in front sees neither the prompt nor the answer.
//!
//! A request that cannot be decrypted is a 400 and nothing is logged of it.

use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_util::StreamExt;
use serde_json::json;
use tower::ServiceExt;

use crate::error::{ApiError, ErrorResponse};
use crate::state::AppState;

pub const KEYS_TYPE: &str = "application/ohttp-keys";
pub const REQUEST_TYPE: &str = "message/ohttp-req";
pub const RESPONSE_TYPE: &str = "message/ohttp-res";
pub const CHUNKED_REQUEST_TYPE: &str = "message/ohttp-chunked-req";
pub const CHUNKED_RESPONSE_TYPE: &str = "message/ohttp-chunked-res";

/// The problem type RFC 9458 (§ 5.3) names for an unknown key.
pub const KEY_PROBLEM: &str = "https://iana.org/assignments/http-problem-types#ohttp-key";

/// Largest inner answer collected for a non-chunked response.
const MAX_INNER_RESPONSE: usize = 32 * 1024 * 1024;

/// The OHTTP key configuration of this gateway.
#[utoipa::path(get, path = "/llm/ohttp-keys", tag = "llm",
    responses((status = 200, description = "`application/ohttp-keys`: the current key configuration (X25519, HKDF-SHA256, AES-128-GCM or ChaCha20-Poly1305)", body = crate::http::Binary, content_type = "application/ohttp-keys")))]
pub async fn keys(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, KEYS_TYPE), (header::CACHE_CONTROL, "max-age=3600")], state.ohttp.encoded_list.clone())
        .into_response()
}

/// An encapsulated `/llm/*` request: `message/ohttp-req` (answered as
/// `message/ohttp-res`) or `message/ohttp-chunked-req` (answered as
/// `message/ohttp-chunked-res`, chunk by chunk as the inner answer streams).
#[utoipa::path(post, path = "/llm/ohttp", tag = "llm",
    request_body(content = crate::http::Binary, description = "An encapsulated Binary HTTP request", content_type = "message/ohttp-req"),
    responses(
        (status = 200, description = "The encapsulated Binary HTTP response (the inner status is inside)", body = crate::http::Binary, content_type = "message/ohttp-res"),
        (status = 400, description = "`application/problem+json` of type `…#ohttp-key` for an unknown key id or algorithms; otherwise `invalid_encapsulation` (cannot be decrypted or decoded)",
            content((ErrorResponse = "application/json"), (ErrorResponse = "application/problem+json"))),
        (status = 413, description = "Body over 8 MiB", body = ErrorResponse),
        (status = 415, description = "Not `message/ohttp-req` or `message/ohttp-chunked-req`", body = ErrorResponse),
    ))]
pub async fn ohttp(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    let chunked = match content_type.as_str() {
        REQUEST_TYPE => false,
        CHUNKED_REQUEST_TYPE => true,
        _ => {
            return ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected `Content-Type: message/ohttp-req` or `message/ohttp-chunked-req`",
            )
            .into_response()
        }
    };
    // The header: key id (1 byte), KEM, KDF, AEAD (2 bytes each).
    if body.len() < 7 {
        return outcome(invalid(), "invalid");
    }
    if body[0] != state.ohttp.key_id {
        return outcome(key_problem(), "key_unknown");
    }
    let answer = if chunked { chunked_exchange(&state, body).await } else { exchange(&state, &body).await };
    match answer {
        Ok(response) => outcome(response, "ok"),
        Err(Refused::Key) => outcome(key_problem(), "key_unknown"),
        Err(Refused::Invalid) => outcome(invalid(), "invalid"),
    }
}

fn outcome(response: Response, outcome: &'static str) -> Response {
    metrics::counter!("echolia_ohttp_requests_total", "outcome" => outcome).increment(1);
    response
}

enum Refused {
    /// Unknown key id or unsupported algorithms: the RFC's key problem.
    Key,
    /// Cannot be decrypted or decoded.
    Invalid,
}

impl From<ohttp::Error> for Refused {
    fn from(err: ohttp::Error) -> Self {
        match err {
            ohttp::Error::KeyId | ohttp::Error::InvalidKem | ohttp::Error::Unsupported => Self::Key,
            _ => Self::Invalid,
        }
    }
}

fn key_problem() -> Response {
    let body = json!({
        "type": KEY_PROBLEM,
        "title": "key identifier unknown",
        "error": {"code": "ohttp_key_unknown", "message": "this key configuration is not (or no longer) in use; fetch GET /llm/ohttp-keys again"},
    });
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

fn invalid() -> Response {
    ApiError::bad_request("invalid_encapsulation", "the request could not be decrypted or decoded").into_response()
}

/// The proxy's own routes, built once, for the inner requests: with the
/// same body limit as over plain HTTP (axum's default would be 2 MiB).
fn inner_router() -> Router<AppState> {
    static ROUTER: OnceLock<Router<AppState>> = OnceLock::new();
    ROUTER
        .get_or_init(|| {
            super::proxy_router().layer(axum::extract::DefaultBodyLimit::max(super::BODY_LIMIT)).split_for_parts().0
        })
        .clone()
}

/// Hop-by-hop and framing fields an inner message may not set.
fn forwardable(name: &[u8]) -> bool {
    !matches!(
        name.to_ascii_lowercase().as_slice(),
        b"connection" | b"keep-alive" | b"transfer-encoding" | b"te" | b"upgrade" | b"content-length" | b"host"
    )
}

/// The inner request as an `http::Request` for the router.
fn inner_request(message: &bhttp::Message) -> Result<Request<Body>, Refused> {
    let control = message.control();
    let method = Method::from_bytes(control.method().ok_or(Refused::Invalid)?).map_err(|_| Refused::Invalid)?;
    let path = std::str::from_utf8(control.path().ok_or(Refused::Invalid)?).map_err(|_| Refused::Invalid)?;
    let mut request = Request::builder().method(method).uri(path);
    for field in message.header().fields() {
        if !forwardable(field.name()) {
            continue;
        }
        let name = HeaderName::from_bytes(field.name()).map_err(|_| Refused::Invalid)?;
        let value = HeaderValue::from_bytes(field.value()).map_err(|_| Refused::Invalid)?;
        request = request.header(name, value);
    }
    request.body(Body::from(message.content().to_vec())).map_err(|_| Refused::Invalid)
}

/// Dispatches an inner request: only the proxy's routes (`/llm/v1/*`, `/llm/usage`) are reachable.
async fn dispatch(state: &AppState, request: Request<Body>) -> Response {
    let path = request.uri().path();
    if !(path.starts_with("/llm/v1/") || path == "/llm/usage") {
        return ApiError::not_found("not_found", "only /llm/v1/* and /llm/usage are reachable through OHTTP")
            .into_response();
    }
    match inner_router().with_state(state.clone()).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The response's head as Binary HTTP: status and fields.
fn response_head(response: &Response) -> bhttp::Message {
    let status = bhttp::StatusCode::try_from(response.status().as_u16()).unwrap_or(bhttp::StatusCode::OK);
    let mut message = bhttp::Message::response(status);
    for (name, value) in response.headers() {
        if forwardable(name.as_str().as_bytes()) {
            message.put_header(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    message
}

fn encoding_failed() -> Refused {
    Refused::Invalid
}

async fn exchange(state: &AppState, body: &[u8]) -> Result<Response, Refused> {
    let (plain, server_response) = state.ohttp.server.decapsulate(body)?;
    let message = bhttp::Message::read_bhttp(&mut Cursor::new(&plain[..])).map_err(|_| Refused::Invalid)?;
    drop(plain);
    let response = dispatch(state, inner_request(&message)?).await;
    drop(message);
    let mut out = response_head(&response);
    let content =
        axum::body::to_bytes(response.into_body(), MAX_INNER_RESPONSE).await.map_err(|_| encoding_failed())?;
    out.write_content(&content);
    let mut encoded = Vec::new();
    out.write_bhttp(bhttp::Mode::KnownLength, &mut encoded).map_err(|_| encoding_failed())?;
    let sealed = server_response.encapsulate(&encoded)?;
    Ok(([(header::CONTENT_TYPE, RESPONSE_TYPE), (header::CACHE_CONTROL, "no-store")], sealed).into_response())
}

/// What the chunked response writer writes into: taken after each write.
#[derive(Clone, Default)]
struct Tap(Arc<Mutex<Vec<u8>>>);

impl Tap {
    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(&mut *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())))
    }
}

impl AsyncWrite for Tap {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A QUIC variable-length integer (RFC 9000 § 16), Binary HTTP's lengths.
fn varint(value: usize, out: &mut Vec<u8>) {
    let v = value as u64;
    match v {
        0..=63 => out.push(v as u8),
        64..=16_383 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        16_384..=1_073_741_823 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xC000_0000_0000_0000).to_be_bytes()),
    }
}

/// Chunked OHTTP: the inner answer is encoded as an indeterminate-length
/// Binary HTTP response, and each piece of its body is sealed and sent as
/// its own chunk the moment the handler produces it.
async fn chunked_exchange(state: &AppState, body: Bytes) -> Result<Response, Refused> {
    let mut request = state.ohttp.server.clone().decapsulate_stream(futures_util::io::Cursor::new(body));
    let mut plain = Vec::new();
    request.read_to_end(&mut plain).await.map_err(|err| match err.into_inner() {
        Some(inner) => match inner.downcast::<ohttp::Error>() {
            Ok(err) => Refused::from(*err),
            Err(_) => Refused::Invalid,
        },
        None => Refused::Invalid,
    })?;
    let message = bhttp::Message::read_bhttp(&mut Cursor::new(&plain[..])).map_err(|_| Refused::Invalid)?;
    drop(plain);
    let tap = Tap::default();
    let writer = request.response(tap.clone())?;
    let response = dispatch(state, inner_request(&message)?).await;
    drop(message);
    // The head with an empty content and trailer, less those two terminators: the body follows in chunks.
    let mut head = Vec::new();
    response_head(&response).write_bhttp(bhttp::Mode::IndeterminateLength, &mut head).map_err(|_| encoding_failed())?;
    head.truncate(head.len().saturating_sub(2));

    enum Stage {
        Head(Vec<u8>),
        Body,
        Done,
    }
    let inner = response.into_body().into_data_stream();
    let stream = futures_util::stream::unfold(
        (writer, tap, inner, Stage::Head(head)),
        |(mut writer, tap, mut inner, stage)| async move {
            let (written, next) = match stage {
                Stage::Done => return None,
                Stage::Head(head) => (writer.write_all(&head).await, Stage::Body),
                Stage::Body => match inner.next().await {
                    Some(Ok(piece)) if piece.is_empty() => (Ok(()), Stage::Body),
                    Some(Ok(piece)) => {
                        let mut framed = Vec::with_capacity(piece.len() + 8);
                        varint(piece.len(), &mut framed);
                        framed.extend_from_slice(&piece);
                        (writer.write_all(&framed).await, Stage::Body)
                    }
                    // The inner answer broke off: end the outer one without its final chunk.
                    Some(Err(_)) => (Err(std::io::Error::other("the inner response broke off")), Stage::Done),
                    // Content and trailer terminators, then the final chunk.
                    None => {
                        let ended = match writer.write_all(&[0, 0]).await {
                            Ok(()) => writer.close().await,
                            Err(err) => Err(err),
                        };
                        (ended, Stage::Done)
                    }
                },
            };
            let item = written.map(|()| tap.take());
            Some((item, (writer, tap, inner, next)))
        },
    )
    .filter(|item| std::future::ready(!matches!(item, Ok(bytes) if bytes.is_empty())));
    Ok((
        [(header::CONTENT_TYPE, CHUNKED_RESPONSE_TYPE), (header::CACHE_CONTROL, "no-store")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_rfc_9000() {
        for (value, bytes) in [
            (37usize, vec![0x25]),
            (15_293, vec![0x7b, 0xbd]),
            (494_878_333, vec![0x9d, 0x7f, 0x3e, 0x7d]),
            (151_288_809_941_952_652, vec![0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
        ] {
            let mut out = Vec::new();
            varint(value, &mut out);
            assert_eq!(out, bytes, "{value}");
        }
    }
}
