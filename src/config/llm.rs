//! The LLM proxy's settings: its upstreams (from `LLM_*`, and optionally a
//! models file), the quotas per tier, the upstream timeouts, and where the
//! Oblivious HTTP key comes from. Validated at start, like the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, parse_or, ConfigError, Secret};

/// The upstream protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server (OpenAI, OpenRouter, vLLM, llama.cpp, Ollama).
    Openai,
    /// Anthropic's Messages API, translated to and from the OpenAI shapes.
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub kind: ProviderKind,
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<Secret>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// A model the proxy offers by name.
#[derive(Debug, Clone)]
pub struct Model {
    /// The name clients send.
    pub name: String,
    pub provider: String,
    /// The name sent upstream.
    pub upstream: String,
    pub price: Price,
}

/// Requests per minute and tokens per day of one tier; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: u32,
    pub tokens_per_day: u64,
}

/// Where the OHTTP gateway's key comes from.
#[derive(Debug, Clone)]
pub enum OhttpKeySource {
    /// `DATA_DIR/ohttp_key`, generated on first start.
    DataDir,
    /// `OHTTP_KEY_SEED` (32 bytes, hex) with `OHTTP_KEY_ID`.
    Configured { key_id: u8, seed: Secret },
}

/// The name of the provider the `LLM_*` variables describe.
pub const DEFAULT_PROVIDER: &str = "default";

#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// By name; `default` is the one of `LLM_PROVIDER`/`LLM_BASE_URL`/`LLM_API_KEY`.
    pub providers: BTreeMap<String, Provider>,
    /// From the models file, by client-facing name.
    pub models: BTreeMap<String, Model>,
    pub free: Limits,
    pub pro: Limits,
    /// Until the upstream's response head, and between two chunks of its body.
    pub upstream_timeout: Duration,
    /// Attempts after the first, before any byte of an answer was received.
    pub retries: u32,
    pub ohttp_key: OhttpKeySource,
}

impl LlmConfig {
    /// Whether any upstream is configured (otherwise the routes answer 503).
    pub fn is_configured(&self) -> bool {
        !self.providers.is_empty()
    }

    /// The provider, upstream name and price for a model a client asked for:
    /// a configured model, else the `default` provider with the name as it is
    /// (price 0).
    pub fn resolve(&self, model: &str) -> Option<(&str, &Provider, String, Price)> {
        if let Some(entry) = self.models.get(model) {
            let provider = self.providers.get(&entry.provider)?;
            return Some((entry.provider.as_str(), provider, entry.upstream.clone(), entry.price));
        }
        let provider = self.providers.get(DEFAULT_PROVIDER)?;
        Some((DEFAULT_PROVIDER, provider, model.to_owned(), Price::default()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    providers: BTreeMap<String, FileProvider>,
    #[serde(default)]
    models: Vec<FileModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    kind: ProviderKind,
    base_url: String,
    /// The variable holding its key (keys stay out of the file).
    api_key_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    name: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    input_per_million: f64,
    #[serde(default)]
    output_per_million: f64,
}

pub(super) fn base_url(variable: &'static str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len() {
        return Err(invalid(variable, format!("`{url}` is not an http(s) URL")));
    }
    Ok(url.to_owned())
}

/// An upstream key, trimmed (a secrets file's trailing newline) and checked
/// to fit an HTTP header, so a bad one stops the server at start instead of
/// failing every request. The message never quotes the key.
pub(super) fn api_key(variable: &'static str, key: String) -> Result<Secret, ConfigError> {
    let key = key.trim();
    if key.is_empty() || reqwest::header::HeaderValue::from_str(key).is_err() {
        return Err(invalid(variable, "is not a valid HTTP header value (empty, or holds a control character)"));
    }
    Ok(Secret::from(key.as_bytes().to_vec()))
}

/// Reads the `LLM_*` and `OHTTP_*` variables (and the models file they name).
pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<LlmConfig, ConfigError> {
    let mut providers = BTreeMap::new();
    let kind = match get("LLM_PROVIDER").as_deref() {
        None | Some("openai") => ProviderKind::Openai,
        Some("anthropic") => ProviderKind::Anthropic,
        Some(other) => return Err(invalid("LLM_PROVIDER", format!("`{other}` is not one of openai, anthropic"))),
    };
    if let Some(url) = get("LLM_BASE_URL") {
        let api_key = get("LLM_API_KEY").map(|key| api_key("LLM_API_KEY", key)).transpose()?;
        providers
            .insert(DEFAULT_PROVIDER.to_owned(), Provider { kind, base_url: base_url("LLM_BASE_URL", &url)?, api_key });
    } else if get("LLM_PROVIDER").is_some() || get("LLM_API_KEY").is_some() {
        return Err(invalid("LLM_BASE_URL", "required when LLM_PROVIDER or LLM_API_KEY is set"));
    }

    let mut models = BTreeMap::new();
    if let Some(path) = get("LLM_MODELS_FILE") {
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path)
            .map_err(|err| invalid("LLM_MODELS_FILE", format!("cannot read {}: {err}", path.display())))?;
        let file: ModelsFile =
            toml::from_str(&text).map_err(|err| invalid("LLM_MODELS_FILE", format!("{}: {err}", path.display())))?;
        for (name, provider) in file.providers {
            if name == DEFAULT_PROVIDER {
                return Err(invalid("LLM_MODELS_FILE", "the provider name `default` is the one of LLM_BASE_URL"));
            }
            let api_key = match provider.api_key_env {
                Some(variable) => {
                    let key = get(&variable).ok_or_else(|| {
                        invalid("LLM_MODELS_FILE", format!("provider `{name}`: the variable {variable} is not set"))
                    })?;
                    Some(api_key("LLM_MODELS_FILE", key).map_err(|_| {
                        invalid(
                            "LLM_MODELS_FILE",
                            format!("provider `{name}`: {variable} is not a valid HTTP header value"),
                        )
                    })?)
                }
                None => None,
            };
            let base_url = base_url("LLM_MODELS_FILE", &provider.base_url)?;
            providers.insert(name, Provider { kind: provider.kind, base_url, api_key });
        }
        for model in file.models {
            let provider = model.provider.unwrap_or_else(|| DEFAULT_PROVIDER.to_owned());
            if !providers.contains_key(&provider) {
                return Err(invalid(
                    "LLM_MODELS_FILE",
                    format!("model `{}`: no provider `{provider}` (set LLM_BASE_URL or add it)", model.name),
                ));
            }
            let prices = [model.input_per_million, model.output_per_million];
            if prices.iter().any(|price| !price.is_finite() || *price < 0.0 || *price > 1e6) {
                return Err(invalid(
                    "LLM_MODELS_FILE",
                    format!("model `{}`: prices must be 0 to 1,000,000", model.name),
                ));
            }
            if model.name.is_empty() || model.name.len() > MAX_MODEL_NAME {
                return Err(invalid("LLM_MODELS_FILE", format!("model names are 1 to {MAX_MODEL_NAME} bytes")));
            }
            let entry = Model {
                upstream: model.upstream.unwrap_or_else(|| model.name.clone()),
                name: model.name.clone(),
                provider,
                price: Price {
                    input_per_million: model.input_per_million,
                    output_per_million: model.output_per_million,
                },
            };
            if models.insert(model.name.clone(), entry).is_some() {
                return Err(invalid("LLM_MODELS_FILE", format!("model `{}` is listed twice", model.name)));
            }
        }
    }

    let limits = |tier: &str, rpm: &str, tpd: &str| -> Result<Limits, ConfigError> {
        let (rpm_var, tpd_var) = match tier {
            "FREE" => ("LLM_FREE_REQUESTS_PER_MINUTE", "LLM_FREE_TOKENS_PER_DAY"),
            _ => ("LLM_PRO_REQUESTS_PER_MINUTE", "LLM_PRO_TOKENS_PER_DAY"),
        };
        Ok(Limits {
            requests_per_minute: parse_or(rpm_var, get(rpm_var), rpm)?,
            tokens_per_day: parse_or(tpd_var, get(tpd_var), tpd)?,
        })
    };
    let timeout: u64 = parse_or("LLM_UPSTREAM_TIMEOUT_SECS", get("LLM_UPSTREAM_TIMEOUT_SECS"), "60")?;
    if timeout == 0 {
        return Err(invalid("LLM_UPSTREAM_TIMEOUT_SECS", "must be at least 1"));
    }
    let retries: u32 = parse_or("LLM_RETRIES", get("LLM_RETRIES"), "2")?;
    if retries > 10 {
        return Err(invalid("LLM_RETRIES", "must be at most 10"));
    }
    let ohttp_key = match (get("OHTTP_KEY_SEED"), get("OHTTP_KEY_ID")) {
        (None, None) => OhttpKeySource::DataDir,
        (Some(seed), id) => {
            let seed = hex::decode(seed.trim())
                .ok()
                .filter(|seed| seed.len() == 32)
                .ok_or_else(|| invalid("OHTTP_KEY_SEED", "must be 32 bytes in hex (64 characters)"))?;
            let key_id = parse_or("OHTTP_KEY_ID", id, "1")?;
            OhttpKeySource::Configured { key_id, seed: Secret::from(seed) }
        }
        (None, Some(_)) => return Err(invalid("OHTTP_KEY_SEED", "required when OHTTP_KEY_ID is set")),
    };
    Ok(LlmConfig {
        providers,
        models,
        free: limits("FREE", "20", "200000")?,
        pro: limits("PRO", "120", "5000000")?,
        upstream_timeout: Duration::from_secs(timeout),
        retries,
        ohttp_key,
    })
}

/// Longest model name accepted, in bytes.
pub const MAX_MODEL_NAME: usize = 200;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<LlmConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn unset_means_not_configured_and_defaults_hold() {
        let config = load(&[]).unwrap();
        assert!(!config.is_configured());
        assert_eq!(config.free, Limits { requests_per_minute: 20, tokens_per_day: 200_000 });
        assert!(matches!(config.ohttp_key, OhttpKeySource::DataDir));
    }

    #[test]
    fn the_env_provider_forwards_every_name_at_price_zero() {
        let config = load(&[("LLM_BASE_URL", "http://127.0.0.1:1/v1/"), ("LLM_API_KEY", "k")]).unwrap();
        let (name, provider, upstream, price) = config.resolve("gpt-x").unwrap();
        assert_eq!((name, provider.kind, upstream.as_str()), ("default", ProviderKind::Openai, "gpt-x"));
        assert_eq!(provider.base_url, "http://127.0.0.1:1/v1");
        assert_eq!(price, Price::default());
    }

    #[test]
    fn an_api_key_is_trimmed_and_one_that_cannot_be_a_header_stops_the_start() {
        use secrecy::ExposeSecret;

        let config = load(&[("LLM_BASE_URL", "http://127.0.0.1:1/v1"), ("LLM_API_KEY", "sk-abc\n")]).unwrap();
        let key = config.providers["default"].api_key.as_ref().unwrap();
        assert_eq!(key.expose_secret(), b"sk-abc");
        for bad in ["sk-a\nb", "  ", "sk\u{7f}"] {
            let err = load(&[("LLM_BASE_URL", "http://127.0.0.1:1/v1"), ("LLM_API_KEY", bad)]).unwrap_err();
            assert_eq!(err.variable, "LLM_API_KEY");
            assert!(!err.message.contains("sk-a"), "the key is never quoted: {}", err.message);
        }
    }

    #[test]
    fn a_models_file_adds_aliases_providers_and_prices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        std::fs::write(
            &path,
            r#"
[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:2"
api_key_env = "CLAUDE_KEY"

[[models]]
name = "smart"
provider = "claude"
upstream = "claude-x"
input_per_million = 3.0
output_per_million = 15.0
"#,
        )
        .unwrap();
        let file = path.display().to_string();
        let err = load(&[("LLM_MODELS_FILE", &file)]).unwrap_err();
        assert_eq!(err.variable, "LLM_MODELS_FILE");
        assert!(err.message.contains("CLAUDE_KEY"), "{}", err.message);
        let config = load(&[("LLM_MODELS_FILE", &file), ("CLAUDE_KEY", "s")]).unwrap();
        let (name, provider, upstream, price) = config.resolve("smart").unwrap();
        assert_eq!((name, provider.kind, upstream.as_str()), ("claude", ProviderKind::Anthropic, "claude-x"));
        assert_eq!(price.output_per_million, 15.0);
        assert!(config.resolve("other").is_none(), "no default provider");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, variable) in [
            (vec![("LLM_PROVIDER", "cohere"), ("LLM_BASE_URL", "http://x")], "LLM_PROVIDER"),
            (vec![("LLM_PROVIDER", "openai")], "LLM_BASE_URL"),
            (vec![("LLM_BASE_URL", "ftp://x")], "LLM_BASE_URL"),
            (vec![("LLM_MODELS_FILE", "/nonexistent/models.toml")], "LLM_MODELS_FILE"),
            (vec![("LLM_FREE_REQUESTS_PER_MINUTE", "-1")], "LLM_FREE_REQUESTS_PER_MINUTE"),
            (vec![("LLM_PRO_TOKENS_PER_DAY", "lots")], "LLM_PRO_TOKENS_PER_DAY"),
            (vec![("LLM_UPSTREAM_TIMEOUT_SECS", "0")], "LLM_UPSTREAM_TIMEOUT_SECS"),
            (vec![("OHTTP_KEY_SEED", "abcd")], "OHTTP_KEY_SEED"),
            (vec![("OHTTP_KEY_ID", "3")], "OHTTP_KEY_SEED"),
        ] {
            assert_eq!(load(&vars).unwrap_err().variable, variable, "{vars:?}");
        }
    }
}
