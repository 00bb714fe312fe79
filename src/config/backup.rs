//! Object storage for `echolia backup` and `echolia restore`: the standard
//! AWS variables, so any S3-compatible service works (MinIO, Backblaze B2,
//! Cloudflare R2…). Read with the rest of the configuration; nothing here is
//! required unless a command names an `s3://` target.

use super::{invalid, ConfigError, Secret};

#[derive(Debug, Clone, Default)]
pub struct ObjectStorageConfig {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Temporary credentials come with a session token.
    pub session_token: Option<Secret>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL`: a service other than AWS. `http://` allows plain HTTP.
    pub endpoint_url: Option<String>,
}

impl ObjectStorageConfig {
    /// The variables an `s3://` target still needs, if any.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.access_key_id.is_none() {
            missing.push("AWS_ACCESS_KEY_ID");
        }
        if self.secret_access_key.is_none() {
            missing.push("AWS_SECRET_ACCESS_KEY");
        }
        missing
    }
}

/// Reads the `AWS_*` variables; a malformed endpoint stops the process.
pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<ObjectStorageConfig, ConfigError> {
    let endpoint_url = match get("AWS_ENDPOINT_URL") {
        Some(url) => Some(super::llm::base_url("AWS_ENDPOINT_URL", &url)?),
        None => None,
    };
    let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));
    if let Some(region) = &region {
        if !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid("AWS_REGION", format!("`{region}` is not a region name")));
        }
    }
    Ok(ObjectStorageConfig {
        access_key_id: get("AWS_ACCESS_KEY_ID"),
        secret_access_key: get("AWS_SECRET_ACCESS_KEY").map(|key| Secret::from(key.into_bytes())),
        session_token: get("AWS_SESSION_TOKEN").map(|token| Secret::from(token.into_bytes())),
        region,
        endpoint_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_standard_variables_and_refuses_a_bad_endpoint() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let config =
            from_lookup(&vars(&[("AWS_DEFAULT_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL", "http://x:9000/")])).unwrap();
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.endpoint_url.as_deref(), Some("http://x:9000"));
        assert_eq!(config.missing(), ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
        let err = from_lookup(&vars(&[("AWS_ENDPOINT_URL", "minio:9000")])).unwrap_err();
        assert_eq!(err.variable, "AWS_ENDPOINT_URL");
        assert!(from_lookup(&vars(&[("AWS_REGION", "eu west")])).is_err());
    }
}
