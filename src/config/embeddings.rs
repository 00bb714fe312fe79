//! Fallback embeddings' settings: which provider (`EMBEDDINGS_PROVIDER`, or
//! inferred from what is set), its model, and the limits and pool sizes.
//! Validated at start, like the rest; a provider whose settings are missing
//! is not an error (the routes answer 503 `not_configured`).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use super::llm::{api_key, base_url, Provider, ProviderKind};
use super::{invalid, parse_or, ConfigError};

/// The model the `local` provider reports unless `EMBEDDINGS_MODEL` names another.
pub const DEFAULT_LOCAL_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The files a model directory must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

#[derive(Debug, Clone)]
pub enum EmbeddingsProvider {
    /// A BERT sentence-embedding model run in this process.
    Local { model_dir: PathBuf },
    /// An OpenAI-compatible `/embeddings` upstream.
    Openai { upstream: Provider },
}

impl EmbeddingsProvider {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Local { .. } => "local",
            Self::Openai { .. } => "openai",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmbeddingsConfig {
    /// The provider, or why there is none (the message of 503 `not_configured`).
    pub provider: Result<EmbeddingsProvider, String>,
    /// The model id clients are told (and, for `openai`, the one sent upstream).
    pub model: String,
    /// Inputs per request.
    pub max_inputs: usize,
    /// Characters (Unicode scalar values) per input.
    pub max_input_chars: usize,
    /// `local`: threads computing (the cap on the CPU embeddings may take).
    pub threads: NonZeroUsize,
    /// `local`: requests admitted at once (computing or waiting); one more answers 503 with `Retry-After`.
    pub queue: NonZeroUsize,
    /// `openai`: the wait for the upstream's answer.
    pub timeout: Duration,
    /// `openai`: the vector length the upstream gives, when known in advance.
    pub dimensions: Option<usize>,
    /// `openai`: inputs per upstream call at most (a request's inputs are sent in chunks of this many).
    pub upstream_batch: NonZeroUsize,
}

impl EmbeddingsConfig {
    pub fn is_configured(&self) -> bool {
        self.provider.is_ok()
    }
}

const NOT_CONFIGURED: &str = "fallback embeddings are not configured: set EMBEDDINGS_MODEL_DIR (a model run on this \
                              server) or EMBEDDINGS_BASE_URL and EMBEDDINGS_MODEL (an OpenAI-compatible upstream)";

/// Half the cores (at least one): the other half stays with sync.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get).div_ceil(2)
}

fn model_dir(dir: String) -> Result<EmbeddingsProvider, ConfigError> {
    if !cfg!(feature = "local-embeddings") {
        return Err(invalid(
            "EMBEDDINGS_MODEL_DIR",
            "this build has no local embeddings (built without the `local-embeddings` feature); unset it or use \
             EMBEDDINGS_PROVIDER=openai",
        ));
    }
    let model_dir = PathBuf::from(dir);
    for file in MODEL_FILES {
        if !model_dir.join(file).is_file() {
            return Err(invalid(
                "EMBEDDINGS_MODEL_DIR",
                format!("{} has no {file} (it needs {})", model_dir.display(), MODEL_FILES.join(", ")),
            ));
        }
    }
    Ok(EmbeddingsProvider::Local { model_dir })
}

pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<EmbeddingsConfig, ConfigError> {
    let openai = |missing_model: bool| -> Result<Result<EmbeddingsProvider, String>, ConfigError> {
        let (Some(url), false) = (get("EMBEDDINGS_BASE_URL"), missing_model) else {
            let missing: Vec<&str> =
                [("EMBEDDINGS_BASE_URL", get("EMBEDDINGS_BASE_URL").is_none()), ("EMBEDDINGS_MODEL", missing_model)]
                    .into_iter()
                    .filter_map(|(name, missing)| missing.then_some(name))
                    .collect();
            return Ok(Err(format!("the openai embeddings provider is not configured: set {}", missing.join(" and "))));
        };
        let api_key = get("EMBEDDINGS_API_KEY").map(|key| api_key("EMBEDDINGS_API_KEY", key)).transpose()?;
        let upstream =
            Provider { kind: ProviderKind::Openai, base_url: base_url("EMBEDDINGS_BASE_URL", &url)?, api_key };
        Ok(Ok(EmbeddingsProvider::Openai { upstream }))
    };
    let missing_model = get("EMBEDDINGS_MODEL").is_none();
    let provider = match get("EMBEDDINGS_PROVIDER").as_deref() {
        Some("openai") => openai(missing_model)?,
        Some("local") => match get("EMBEDDINGS_MODEL_DIR") {
            Some(dir) => Ok(model_dir(dir)?),
            None => Err("the local embeddings provider is not configured: set EMBEDDINGS_MODEL_DIR".to_owned()),
        },
        Some(other) => return Err(invalid("EMBEDDINGS_PROVIDER", format!("`{other}` is not one of local, openai"))),
        None if get("EMBEDDINGS_BASE_URL").is_some() => openai(missing_model)?,
        None => match get("EMBEDDINGS_MODEL_DIR") {
            Some(dir) => Ok(model_dir(dir)?),
            None => Err(NOT_CONFIGURED.to_owned()),
        },
    };
    if get("EMBEDDINGS_API_KEY").is_some() && get("EMBEDDINGS_BASE_URL").is_none() {
        return Err(invalid("EMBEDDINGS_BASE_URL", "required when EMBEDDINGS_API_KEY is set"));
    }
    let bounded = |variable: &'static str, default: &str, max: usize| -> Result<usize, ConfigError> {
        let value: usize = parse_or(variable, get(variable), default)?;
        if value == 0 || value > max {
            return Err(invalid(variable, format!("must be 1 to {max}")));
        }
        Ok(value)
    };
    let timeout = bounded("EMBEDDINGS_TIMEOUT_SECS", "30", 3600)?;
    let model = get("EMBEDDINGS_MODEL").unwrap_or_else(|| DEFAULT_LOCAL_MODEL.to_owned());
    if model.len() > super::llm::MAX_MODEL_NAME {
        return Err(invalid("EMBEDDINGS_MODEL", format!("must be at most {} bytes", super::llm::MAX_MODEL_NAME)));
    }
    let dimensions = match get("EMBEDDINGS_DIMENSIONS") {
        Some(_) => Some(bounded("EMBEDDINGS_DIMENSIONS", "0", 65_536)?),
        None => None,
    };
    let nonzero = |value: usize| NonZeroUsize::new(value).unwrap_or(NonZeroUsize::MIN);
    Ok(EmbeddingsConfig {
        provider,
        model,
        max_inputs: bounded("EMBEDDINGS_MAX_INPUTS", "256", 4096)?,
        max_input_chars: bounded("EMBEDDINGS_MAX_INPUT_CHARS", "8192", 100_000)?,
        threads: nonzero(bounded("EMBEDDINGS_THREADS", &default_threads().to_string(), 256)?),
        queue: nonzero(bounded("EMBEDDINGS_QUEUE", "8", 10_000)?),
        timeout: Duration::from_secs(timeout as u64),
        dimensions,
        upstream_batch: nonzero(bounded("EMBEDDINGS_UPSTREAM_BATCH", "32", 4096)?),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<EmbeddingsConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn unset_is_not_configured_naming_the_variables() {
        let config = load(&[]).unwrap();
        let message = config.provider.unwrap_err();
        for variable in ["EMBEDDINGS_MODEL_DIR", "EMBEDDINGS_BASE_URL", "EMBEDDINGS_MODEL"] {
            assert!(message.contains(variable), "{message}");
        }
        assert_eq!((config.max_inputs, config.max_input_chars, config.queue.get()), (256, 8192, 8));
        assert_eq!(config.upstream_batch.get(), 32);
        assert_eq!(load(&[("EMBEDDINGS_UPSTREAM_BATCH", "0")]).unwrap_err().variable, "EMBEDDINGS_UPSTREAM_BATCH");
        assert_eq!(load(&[("EMBEDDINGS_UPSTREAM_BATCH", "5")]).unwrap().upstream_batch.get(), 5);
    }

    #[test]
    fn a_base_url_chooses_openai_which_needs_a_model() {
        let config = load(&[("EMBEDDINGS_BASE_URL", "http://127.0.0.1:1/v1/")]).unwrap();
        assert!(config.provider.unwrap_err().contains("EMBEDDINGS_MODEL"));
        let config = load(&[("EMBEDDINGS_BASE_URL", "http://127.0.0.1:1/v1/"), ("EMBEDDINGS_MODEL", "m")]).unwrap();
        let Ok(EmbeddingsProvider::Openai { upstream }) = config.provider else { panic!("not openai") };
        assert_eq!(upstream.base_url, "http://127.0.0.1:1/v1");
        assert_eq!(config.model, "m");
        let config = load(&[("EMBEDDINGS_PROVIDER", "openai")]).unwrap();
        assert!(config.provider.unwrap_err().contains("EMBEDDINGS_BASE_URL and EMBEDDINGS_MODEL"));
    }

    #[test]
    fn a_model_dir_must_hold_the_model_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        let result = load(&[("EMBEDDINGS_MODEL_DIR", &path)]);
        if cfg!(feature = "local-embeddings") {
            let err = result.unwrap_err();
            assert_eq!(err.variable, "EMBEDDINGS_MODEL_DIR");
            assert!(err.message.contains("config.json"), "{}", err.message);
            for file in MODEL_FILES {
                std::fs::write(dir.path().join(file), b"{}").unwrap();
            }
            let config = load(&[("EMBEDDINGS_MODEL_DIR", &path)]).unwrap();
            assert!(matches!(config.provider, Ok(EmbeddingsProvider::Local { .. })));
            assert_eq!(config.model, DEFAULT_LOCAL_MODEL);
        } else {
            assert_eq!(result.unwrap_err().variable, "EMBEDDINGS_MODEL_DIR");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, variable) in [
            (vec![("EMBEDDINGS_PROVIDER", "cohere")], "EMBEDDINGS_PROVIDER"),
            (vec![("EMBEDDINGS_BASE_URL", "ftp://x"), ("EMBEDDINGS_MODEL", "m")], "EMBEDDINGS_BASE_URL"),
            (vec![("EMBEDDINGS_API_KEY", "k")], "EMBEDDINGS_BASE_URL"),
            (vec![("EMBEDDINGS_MAX_INPUTS", "0")], "EMBEDDINGS_MAX_INPUTS"),
            (vec![("EMBEDDINGS_MAX_INPUT_CHARS", "many")], "EMBEDDINGS_MAX_INPUT_CHARS"),
            (vec![("EMBEDDINGS_QUEUE", "0")], "EMBEDDINGS_QUEUE"),
            (vec![("EMBEDDINGS_THREADS", "-2")], "EMBEDDINGS_THREADS"),
            (vec![("EMBEDDINGS_TIMEOUT_SECS", "0")], "EMBEDDINGS_TIMEOUT_SECS"),
            (vec![("EMBEDDINGS_DIMENSIONS", "0")], "EMBEDDINGS_DIMENSIONS"),
        ] {
            assert_eq!(load(&vars).unwrap_err().variable, variable, "{vars:?}");
        }
    }
}
