//! `POST /llm/v1/chat/completions`, `POST /llm/v1/embeddings`,
//! `GET /llm/v1/models`: the OpenAI shapes, forwarded to the provider the
//! model resolves to.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::call::{Call, CallMetrics};
use super::ledger::{Opening, Status};
use super::relay::{self, Mode};
use super::{anthropic, upstream};
use crate::config::llm::{Price, Provider, ProviderKind, MAX_MODEL_NAME};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::state::{AppState, UserAuth};

/// The body as a JSON object. Messages never quote the body (it may hold a
/// prompt): serde's data errors do, so only positions are reported.
fn parse_object(body: &[u8]) -> ApiResult<Map<String, Value>> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON (line {}, column {})", err.line(), err.column()),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::unprocessable("validation_failed", "the body must be a JSON object")),
    }
}

fn model_of(request: &Map<String, Value>) -> ApiResult<String> {
    match request.get("model") {
        Some(Value::String(model)) if !model.is_empty() && model.len() <= MAX_MODEL_NAME => Ok(model.clone()),
        Some(Value::String(_)) => Err(ApiError::invalid_field("model", format!("must be 1 to {MAX_MODEL_NAME} bytes"))),
        _ => Err(ApiError::invalid_field("model", "required, a string")),
    }
}

/// The metrics label of every model name the models file does not configure.
const PASSTHROUGH_LABEL: &str = "passthrough";

/// A POST request to the proxy, its model resolved to a provider.
struct Resolved<'s> {
    request: Map<String, Value>,
    /// As the client named it.
    model: String,
    provider_name: &'s str,
    provider: &'s Provider,
    /// As the provider knows it.
    upstream_model: String,
    price: Price,
}

/// What both POST routes start with: the proxy configured, the body a JSON
/// object (dropped once parsed), its `model` resolved.
fn resolve(state: &AppState, body: Bytes) -> ApiResult<Resolved<'_>> {
    super::require_configured(state)?;
    let request = parse_object(&body)?;
    drop(body);
    let model = model_of(&request)?;
    let (provider_name, provider, upstream_model, price) =
        state.config.llm.resolve(&model).ok_or_else(model_not_found)?;
    Ok(Resolved { request, model, provider_name, provider, upstream_model, price })
}

fn model_not_found() -> ApiError {
    ApiError::not_found("model_not_found", "no such model here; GET /llm/v1/models lists them")
}

/// Checks the caller's quota and opens the request's usage row.
async fn start(
    state: &AppState,
    auth: &UserAuth,
    model: &str,
    provider: &str,
    endpoint: &'static str,
    stream: bool,
    price: Price,
) -> ApiResult<Call> {
    let tier = super::tier(state, auth).await?;
    let opening = Opening { model, provider, endpoint, stream };
    let id = crate::inference::open(&auth.db, tier, &state.config.llm, state.clock.now(), opening).await?;
    // Only the models file's names become labels: a name a client made up is
    // forwarded, but counted as `passthrough`, so no client can use up the label slots.
    let model_label = if state.config.llm.models.contains_key(model) {
        state.metrics.model_label(model)
    } else {
        PASSTHROUGH_LABEL.to_owned()
    };
    let metrics = CallMetrics { model_label, endpoint, recorder: state.metrics.clone() };
    Ok(Call::new(auth.db.clone(), id, price, Some(metrics)))
}

/// Ends a call whose upstream failed, and answers the failure.
async fn failed(call: Call, failure: upstream::Failure) -> ApiError {
    let status = if failure.is_rejection() { Status::Rejected } else { Status::UpstreamError };
    call.finish(status).await;
    failure.into_api_error()
}

fn json_response(body: impl Into<axum::body::Body>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

/// A chat completion, OpenAI's request and response; `"stream": true` answers server-sent events as they arrive.
#[utoipa::path(post, path = "/llm/v1/chat/completions", tag = "llm", security(("bearer" = [])),
    request_body(content = Object, description = "OpenAI chat completion request (`model`, `messages`, `stream`, …)", content_type = "application/json"),
    responses(
        (status = 200, description = "A `chat.completion` object, or with `stream: true` `text/event-stream` chunks ending with `data: [DONE]`", content(
            (Object = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 404, description = "`model_not_found`", body = ErrorResponse),
        (status = 413, description = "Body over 8 MiB", body = ErrorResponse),
        (status = 422, description = "A missing or invalid field (`model`), or one the model's provider cannot carry", body = ErrorResponse),
        (status = 429, description = "`quota_exceeded` (with `Retry-After`) or `upstream_rate_limited`", body = ErrorResponse),
        (status = 502, description = "`upstream_error`: the provider is unreachable or failed", body = ErrorResponse),
        (status = 503, description = "`not_configured`, or storage busy", body = ErrorResponse),
        (status = 504, description = "`upstream_timeout`", body = ErrorResponse),
    ))]
pub async fn chat_completions(State(state): State<AppState>, auth: UserAuth, body: Bytes) -> ApiResult<Response> {
    let Resolved { mut request, model, provider_name, provider, upstream_model, price } = resolve(&state, body)?;
    let llm = &state.config.llm;
    let stream = request.get("stream") == Some(&Value::Bool(true));
    let wants_usage =
        request.get("stream_options").and_then(|options| options.get("include_usage")) == Some(&Value::Bool(true));
    let prompt_bytes = super::usage::prompt_bytes(&request);
    let (path, upstream_body) = match provider.kind {
        ProviderKind::Openai => {
            request.insert("model".into(), Value::String(upstream_model));
            if stream {
                let options = request.entry("stream_options").or_insert_with(|| json!({}));
                if !options.is_object() {
                    *options = json!({});
                }
                options["include_usage"] = Value::Bool(true);
            }
            ("/chat/completions", Value::Object(request))
        }
        ProviderKind::Anthropic => {
            let translated = anthropic::request(&request, &upstream_model)
                .map_err(|unsupported| ApiError::unprocessable("unsupported_parameter", unsupported.0))?;
            drop(request);
            ("/messages", translated)
        }
    };
    let upstream_body = Bytes::from(serde_json::to_vec(&upstream_body).map_err(ApiError::internal)?);
    let mut call = start(&state, &auth, &model, provider_name, "chat", stream, price).await?;
    call.counter.set_prompt_bytes(prompt_bytes);
    let response =
        match upstream::post(&state.http, provider, path, upstream_body, llm.upstream_timeout, llm.retries).await {
            Ok(response) => response,
            Err(failure) => return Err(failed(call, failure).await),
        };
    if stream {
        let mode = match provider.kind {
            ProviderKind::Openai => Mode::Openai { include_usage: wants_usage },
            ProviderKind::Anthropic => {
                Mode::Anthropic(anthropic::StreamTranslator::new(state.clock.now().timestamp(), wants_usage))
            }
        };
        return Ok(relay::respond(&state, call, response, mode));
    }
    let answer = match upstream::read_body(response, llm.upstream_timeout).await {
        Ok(answer) => answer,
        Err(failure) => return Err(failed(call, failure).await),
    };
    match provider.kind {
        ProviderKind::Openai => {
            if let Ok(value) = serde_json::from_slice::<Value>(&answer) {
                call.counter.observe_openai(&value);
                call.counter.add_output(&value);
            }
            call.finish(Status::Ok).await;
            Ok(json_response(answer))
        }
        ProviderKind::Anthropic => {
            let Ok(message) = serde_json::from_slice::<Value>(&answer) else {
                return Err(failed(call, upstream::Failure::Connect).await);
            };
            let (completion, usage) = anthropic::response(&message, state.clock.now().timestamp());
            call.counter.set(usage);
            call.finish(Status::Ok).await;
            Ok(axum::Json(completion).into_response())
        }
    }
}

/// Embeddings, OpenAI's request and response (OpenAI-compatible providers only).
#[utoipa::path(post, path = "/llm/v1/embeddings", tag = "llm", security(("bearer" = [])),
    request_body(content = Object, description = "OpenAI embeddings request (`model`, `input`)", content_type = "application/json"),
    responses(
        (status = 200, description = "An embeddings `list`", body = Object),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 404, description = "`model_not_found`", body = ErrorResponse),
        (status = 413, description = "Body over 8 MiB", body = ErrorResponse),
        (status = 422, description = "A missing or invalid field; `unsupported_parameter` for a provider without embeddings (Anthropic)", body = ErrorResponse),
        (status = 429, description = "`quota_exceeded` (with `Retry-After`)", body = ErrorResponse),
        (status = 502, description = "`upstream_error`", body = ErrorResponse),
        (status = 503, description = "`not_configured`, or storage busy", body = ErrorResponse),
        (status = 504, description = "`upstream_timeout`", body = ErrorResponse),
    ))]
pub async fn embeddings(State(state): State<AppState>, auth: UserAuth, body: Bytes) -> ApiResult<Response> {
    let Resolved { mut request, model, provider_name, provider, upstream_model, price } = resolve(&state, body)?;
    let llm = &state.config.llm;
    if provider.kind != ProviderKind::Openai {
        return Err(ApiError::unprocessable(
            "unsupported_parameter",
            "model: this model's provider offers no embeddings",
        ));
    }
    request.insert("model".into(), Value::String(upstream_model));
    let prompt_bytes = super::usage::prompt_bytes(&request);
    let upstream_body = Bytes::from(serde_json::to_vec(&request).map_err(ApiError::internal)?);
    drop(request);
    let mut call = start(&state, &auth, &model, provider_name, "embeddings", false, price).await?;
    call.counter.set_prompt_bytes(prompt_bytes);
    let response =
        match upstream::post(&state.http, provider, "/embeddings", upstream_body, llm.upstream_timeout, llm.retries)
            .await
        {
            Ok(response) => response,
            Err(failure) => return Err(failed(call, failure).await),
        };
    let answer = match upstream::read_body(response, llm.upstream_timeout).await {
        Ok(answer) => answer,
        Err(failure) => return Err(failed(call, failure).await),
    };
    if let Ok(value) = serde_json::from_slice::<Value>(&answer) {
        call.counter.observe_openai(&value);
    }
    call.finish(Status::Ok).await;
    Ok(json_response(answer))
}

/// How long the provider's model list is reused.
const MODELS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The models: those of the models file, then (for an OpenAI-compatible
/// `LLM_BASE_URL`) what that upstream lists, every name forwarded as it is.
#[utoipa::path(get, path = "/llm/v1/models", tag = "llm", security(("bearer" = [])),
    responses(
        (status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\", \"object\": \"model\", \"created\", \"owned_by\"}]}`", body = Object),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorResponse),
        (status = 503, description = "`not_configured`", body = ErrorResponse),
    ))]
pub async fn models(State(state): State<AppState>, _auth: UserAuth) -> ApiResult<Response> {
    super::require_configured(&state)?;
    let llm = &state.config.llm;
    let mut data: Vec<Value> = llm
        .models
        .values()
        .map(|model| json!({"id": model.name, "object": "model", "created": 0, "owned_by": model.provider}))
        .collect();
    if let Some(provider) = llm.providers.get(crate::config::llm::DEFAULT_PROVIDER) {
        if provider.kind == ProviderKind::Openai {
            let listed = {
                let mut cached = state.llm_models.lock().await;
                match &*cached {
                    Some((fetched, list)) if fetched.elapsed() < MODELS_TTL => list.clone(),
                    _ => {
                        let list = upstream::get_json(&state.http, provider, "/models", llm.upstream_timeout).await;
                        *cached = Some((tokio::time::Instant::now(), list.clone()));
                        list
                    }
                }
            };
            for id in listed
                .iter()
                .flat_map(|list| list["data"].as_array().into_iter().flatten())
                .filter_map(|m| m["id"].as_str())
            {
                if !llm.models.contains_key(id) {
                    data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": provider.kind.as_str()}));
                }
            }
        }
    }
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}
