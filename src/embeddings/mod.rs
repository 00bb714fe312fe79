//! Fallback embeddings for devices that cannot compute them (older phones):
//! `GET /embeddings/capability` tells a device whether to ask, with the model
//! and dimensions every device of the user embeds with, and `POST
//! /embeddings` computes vectors and forgets the inputs. The client encrypts
//! the vectors and syncs them as `embedding` events.
//!
//! Inputs are never stored, logged, put in a metrics label or quoted in an
//! error message. Each request is charged to the user's LLM usage (a row in
//! `llm_usage`, model = the embeddings model, endpoint `fallback_embeddings`)
//! under the tier's quotas, like `POST /llm/v1/embeddings`.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::llm::Price;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::http::BodyLimit;
use crate::inference;
use crate::inference::call::Call;
use crate::inference::ledger::{Opening, Status};
use crate::inference::usage::Usage;
use crate::state::{AppState, UserAuth};

/// The `llm_usage` endpoint of these requests.
pub const ENDPOINT: &str = "fallback_embeddings";

pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    let limits = &state.config.embeddings;
    // Every input at its limit, each character escaped as `\uXXXX`, and room for the rest.
    let body_limit =
        limits.max_inputs.saturating_mul(limits.max_input_chars).saturating_mul(6).saturating_add(64 * 1024);
    let limit = BodyLimit {
        bytes: body_limit,
        code: "body_too_large",
        message: "the request body is larger than the embeddings limits allow",
    };
    limit.apply(OpenApiRouter::new().routes(routes!(capability)).routes(routes!(embeddings)))
}

/// What a device should do about embeddings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Capability {
    /// Ask `POST /embeddings` instead of computing locally: true when the server can embed and the device did not
    /// register `local_embeddings: true` with this model (`embedding_models`, when given, must list it).
    pub use_fallback: bool,
    /// Whether this server computes embeddings at all (false: `POST /embeddings` answers 503 `not_configured`).
    pub available: bool,
    /// The model every device of the user embeds with, so vectors stay comparable; null when not available.
    pub model: Option<String>,
    /// The vectors' length; null when not available (or, for an upstream provider, not known before its first answer).
    pub dimensions: Option<usize>,
}

/// Whether the device's capabilities say it embeds locally with `model`.
fn embeds_locally(capabilities: &serde_json::Map<String, Value>, model: &str) -> bool {
    let local = capabilities.get("local_embeddings") == Some(&Value::Bool(true));
    let with_model = match capabilities.get("embedding_models") {
        Some(Value::Array(models)) => models.iter().any(|m| m.as_str() == Some(model)),
        _ => true,
    };
    local && with_model
}

/// Whether the calling device should use the fallback, from the capabilities it registered.
#[utoipa::path(get, path = "/embeddings/capability", tag = "embeddings", security(("bearer" = [])),
    responses(
        (status = 200, description = "What the device should do", body = Capability),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 503, description = "Storage busy", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn capability(State(state): State<AppState>, auth: UserAuth) -> ApiResult<Json<Capability>> {
    let embedder = &state.embedder;
    let conn = auth.db.read().await?;
    let device = crate::views::devices::load(&conn, auth.device_id).await?;
    drop(conn);
    let capabilities = device.map(|row| row.profile.capabilities).unwrap_or_default();
    let available = embedder.provider().is_some();
    Ok(Json(Capability {
        use_fallback: available && !embeds_locally(&capabilities, embedder.model()),
        available,
        model: available.then(|| embedder.model().to_owned()),
        dimensions: if available { embedder.dimensions() } else { None },
    }))
}

/// `POST /embeddings`'s body (documentation: it is read by hand, so no message quotes an input).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EmbeddingsRequest {
    /// 1 to 256 non-empty strings (`EMBEDDINGS_MAX_INPUTS`), each at most 8,192 characters (`EMBEDDINGS_MAX_INPUT_CHARS`).
    inputs: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    pub model: String,
    pub dimensions: usize,
    /// One L2-normalised vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
}

/// The inputs of a request body, checked against the limits; messages name
/// the field (`inputs[3]`), never its content.
fn parse_inputs(body: &[u8], max_inputs: usize, max_chars: usize) -> ApiResult<Vec<String>> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON (line {}, column {})", err.line(), err.column()),
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::unprocessable("validation_failed", "the body must be a JSON object"));
    };
    let Some(Value::Array(items)) = object.remove("inputs") else {
        return Err(ApiError::invalid_field("inputs", "required, an array of strings"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid_field("inputs", "must hold at least one input"));
    }
    if items.len() > max_inputs {
        return Err(ApiError::invalid_field("inputs", format!("at most {max_inputs} inputs, got {}", items.len())));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(text) if text.is_empty() => {
                Err(ApiError::invalid_field(&format!("inputs[{index}]"), "must not be empty"))
            }
            Value::String(text) if text.chars().count() > max_chars => {
                Err(ApiError::invalid_field(&format!("inputs[{index}]"), format!("at most {max_chars} characters")))
            }
            Value::String(text) => Ok(text),
            _ => Err(ApiError::invalid_field(&format!("inputs[{index}]"), "must be a string")),
        })
        .collect()
}

/// Opens the request's usage row under the tier's quotas (429 `quota_exceeded` when spent); its guard completes
/// the row however the request ends (`interrupted`, charged an estimate, when the client goes away).
async fn charge(state: &AppState, auth: &UserAuth, provider: &str, prompt_bytes: u64) -> ApiResult<Call> {
    let now = state.clock.now();
    let tier = inference::tier(&state.control, auth.user_id, now, state.stores.live).await?;
    let opening = Opening { model: state.embedder.model(), provider, endpoint: ENDPOINT, stream: false };
    let id = inference::open(&auth.db, tier, &state.config.llm, now, opening).await?;
    let mut call = Call::new(auth.db.clone(), id, Price::default(), None);
    call.counter.set_prompt_bytes(prompt_bytes);
    Ok(call)
}

/// Embeddings of the inputs, computed by this server's provider; the inputs are forgotten once answered.
#[utoipa::path(post, path = "/embeddings", tag = "embeddings", security(("bearer" = [])),
    request_body(content = EmbeddingsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One vector per input, in order", body = EmbeddingsResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 413, description = "Body over the limit (the inputs' limits, escaped)", body = ErrorResponse),
        (status = 422, description = "`inputs` missing, empty, over the count, or an input not a string, empty or too long (the message names it: `inputs[3]`)", body = ErrorResponse),
        (status = 429, description = "`quota_exceeded` (the tier's LLM quotas, with `Retry-After`) or `upstream_rate_limited`", body = ErrorResponse),
        (status = 502, description = "`upstream_error`: the upstream provider is unreachable, failed or answered nonsense", body = ErrorResponse),
        (status = 503, description = "`not_configured` (naming the variables), `embeddings_busy` (the queue is full; `Retry-After`), or storage busy", body = ErrorResponse),
        (status = 504, description = "`upstream_timeout`", body = ErrorResponse),
    ))]
#[tracing::instrument(skip_all)]
pub async fn embeddings(
    State(state): State<AppState>,
    auth: UserAuth,
    body: Bytes,
) -> ApiResult<Json<EmbeddingsResponse>> {
    let embedder = state.embedder.clone();
    embedder.require_configured()?;
    let limits = &state.config.embeddings;
    let inputs = parse_inputs(&body, limits.max_inputs, limits.max_input_chars)?;
    drop(body);
    // A full queue refuses before anything is charged.
    let admission = embedder.admit()?;
    let prompt_bytes = inputs.iter().map(|input| input.len() as u64).sum::<u64>();
    let provider = embedder.provider().unwrap_or("none");
    let mut call = charge(&state, &auth, provider, prompt_bytes).await?;
    match embedder.embed(admission, &state.http, &inputs).await {
        Ok(embedded) => {
            drop(inputs);
            if let Some(tokens) = embedded.tokens {
                call.counter.set(Usage { input_tokens: tokens, output_tokens: 0 });
            }
            call.finish(Status::Ok).await;
            let dimensions = embedded.vectors.first().map_or(0, Vec::len);
            Ok(Json(EmbeddingsResponse {
                model: embedder.model().to_owned(),
                dimensions,
                embeddings: embedded.vectors,
            }))
        }
        Err(err) => {
            let status = if err.status().is_client_error() { Status::Rejected } else { Status::UpstreamError };
            call.finish(status).await;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn code_and_message(result: ApiResult<Vec<String>>) -> (StatusCode, String) {
        match result.unwrap_err() {
            ApiError::Client { status, message, .. } => (status, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_inputs_name_the_field_and_never_quote_it() {
        let cases = [
            (r#"{"inputs": "secret diary"}"#, "inputs:"),
            (r#"{}"#, "inputs:"),
            (r#"{"inputs": []}"#, "inputs:"),
            (r#"{"inputs": ["a", 5]}"#, "inputs[1]:"),
            (r#"{"inputs": ["a", ""]}"#, "inputs[1]:"),
            (r#"{"inputs": ["a", "secret diary entry"]}"#, "inputs[1]:"),
            (r#"{"inputs": ["a", "b", "c", "d"]}"#, "inputs:"),
        ];
        for (body, field) in cases {
            let (status, message) = code_and_message(parse_inputs(body.as_bytes(), 3, 10));
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(message.starts_with(field), "{body}: {message}");
            assert!(!message.contains("secret"), "{message}");
        }
        let (status, _) = code_and_message(parse_inputs(b"{\"inputs\": [\"secret", 3, 10));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Ten characters, many more bytes: the limit is in characters.
        assert_eq!(parse_inputs("{\"inputs\": [\"ééééééééé😀\"]}".as_bytes(), 3, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_device_embeds_locally_only_with_the_servers_model() {
        let caps = |value: Value| value.as_object().unwrap().clone();
        let model = "m";
        assert!(!embeds_locally(&caps(serde_json::json!({})), model));
        assert!(!embeds_locally(&caps(serde_json::json!({"local_embeddings": false})), model));
        assert!(embeds_locally(&caps(serde_json::json!({"local_embeddings": true})), model));
        assert!(embeds_locally(&caps(serde_json::json!({"local_embeddings": true, "embedding_models": ["m"]})), model));
        assert!(!embeds_locally(
            &caps(serde_json::json!({"local_embeddings": true, "embedding_models": ["x"]})),
            model
        ));
    }
}
