//! The `openai` provider: any OpenAI-compatible `/embeddings` upstream
//! (OpenAI, Ollama, llama.cpp, text-embeddings-inference), through the same
//! seam as the LLM proxy (`inference::upstream`: timeouts, retries, 502/504).

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::llm::Provider;
use crate::error::{ApiError, ApiResult};
use crate::inference::upstream;

fn invalid_answer() -> ApiError {
    ApiError::client(StatusCode::BAD_GATEWAY, "upstream_error", "the embeddings provider sent an invalid answer")
}

/// The vectors of `inputs` in order, and the tokens the upstream counted.
pub async fn embed(
    http: &reqwest::Client,
    provider: &Provider,
    model: &str,
    inputs: &[&str],
    timeout: Duration,
    retries: u32,
) -> ApiResult<(Vec<Vec<f32>>, Option<u64>)> {
    let body = serde_json::to_vec(&json!({"model": model, "input": inputs})).map_err(ApiError::internal)?;
    let response = upstream::post(http, provider, "/embeddings", Bytes::from(body), timeout, retries)
        .await
        .map_err(upstream::Failure::into_api_error)?;
    let answer = upstream::read_body(response, timeout).await.map_err(upstream::Failure::into_api_error)?;
    let answer: Value = serde_json::from_slice(&answer).map_err(|_| invalid_answer())?;
    let vectors = vectors(&answer, inputs.len()).ok_or_else(invalid_answer)?;
    let tokens = answer["usage"]["prompt_tokens"].as_u64().or_else(|| answer["usage"]["total_tokens"].as_u64());
    Ok((vectors, tokens))
}

/// `data[].embedding` placed by `data[].index` (position when absent):
/// exactly `count` vectors of finite numbers, all of one length.
fn vectors(answer: &Value, count: usize) -> Option<Vec<Vec<f32>>> {
    let data = answer["data"].as_array()?;
    if data.len() != count {
        return None;
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; count];
    for (position, item) in data.iter().enumerate() {
        let index = match item.get("index") {
            Some(index) => usize::try_from(index.as_u64()?).ok()?,
            None => position,
        };
        let vector = item["embedding"]
            .as_array()?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32).filter(|x| x.is_finite()))
            .collect::<Option<Vec<f32>>>()?;
        let slot = out.get_mut(index)?;
        if slot.is_some() || vector.is_empty() {
            return None;
        }
        *slot = Some(vector);
    }
    let out: Vec<Vec<f32>> = out.into_iter().collect::<Option<_>>()?;
    let length = out.first().map_or(0, Vec::len);
    out.iter().all(|v| v.len() == length).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_placed_by_index_and_checked() {
        let answer = json!({"data": [
            {"index": 1, "embedding": [0.0, 1.0]},
            {"index": 0, "embedding": [1.0, 0.0]},
        ]});
        assert_eq!(vectors(&answer, 2).unwrap(), [vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert!(vectors(&answer, 3).is_none(), "a missing vector");
        let twice = json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]});
        assert!(vectors(&twice, 2).is_none());
        let ragged = json!({"data": [{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}]});
        assert!(vectors(&ragged, 2).is_none());
        let text = json!({"data": [{"embedding": "AAAA"}]});
        assert!(vectors(&text, 1).is_none());
    }
}
