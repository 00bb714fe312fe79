//! The Play Store: the Play Developer API (`purchases.subscriptionsv2.get`,
//! `purchases.subscriptions.acknowledge`) called with a service account's
//! OAuth token (RS256 JWT-bearer grant, cached until it nearly expires), and
//! the OIDC tokens Google signs on Pub/Sub push requests (real-time developer
//! notifications), checked against Google's published keys.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Source, Status, Update};
use crate::clock::parse_rfc3339;
use crate::config::{GooglePlayConfig, PubSubConfig, StoreEnvironment};

/// Each call to Google gives up after this long (504).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A cached OAuth token is renewed this long before it expires.
const TOKEN_MARGIN_SECS: i64 = 60;
/// Google's published keys are read again after this long.
const JWKS_TTL_SECS: i64 = 3600;
/// An unknown key id reads the keys again at most this often.
const JWKS_REFRESH_SECS: i64 = 60;
const SCOPE: &str = "https://www.googleapis.com/auth/androidpublisher";

#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// The Play Developer API does not know this purchase (or it belongs to another app).
    #[error("the Play Store does not know this purchase")]
    UnknownPurchase,
    #[error("Google did not answer in time")]
    Timeout,
    #[error("Google answered an error: {0}")]
    Upstream(String),
}

impl From<reqwest::Error> for GoogleError {
    fn from(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            Self::Timeout
        } else {
            // Without the URL: it holds the purchase token.
            Self::Upstream(err.without_url().to_string())
        }
    }
}

/// The Play Developer API for one app.
pub struct PlayClient {
    config: GooglePlayConfig,
    key: EncodingKey,
    /// The OAuth access token and when it expires (unix seconds).
    token: Mutex<Option<(String, i64)>>,
}

#[derive(Serialize)]
struct GrantClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

/// `SubscriptionPurchaseV2`, the fields used.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionPurchase {
    #[serde(default)]
    pub line_items: Vec<LineItem>,
    pub subscription_state: Option<String>,
    pub linked_purchase_token: Option<String>,
    pub acknowledgement_state: Option<String>,
    pub external_account_identifiers: Option<ExternalAccountIdentifiers>,
    /// Present on license testers' purchases: the sandbox.
    pub test_purchase: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    pub product_id: String,
    pub expiry_time: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAccountIdentifiers {
    pub obfuscated_external_account_id: Option<String>,
}

impl SubscriptionPurchase {
    pub fn environment(&self) -> StoreEnvironment {
        if self.test_purchase.is_some() {
            StoreEnvironment::Sandbox
        } else {
            StoreEnvironment::Production
        }
    }

    pub fn needs_acknowledgement(&self) -> bool {
        self.acknowledgement_state.as_deref() == Some("ACKNOWLEDGEMENT_STATE_PENDING")
    }

    pub fn account_id(&self) -> Option<&str> {
        self.external_account_identifiers.as_ref()?.obfuscated_external_account_id.as_deref()
    }

    /// The line item that runs longest (a subscription has one per base plan).
    fn latest_item(&self) -> Option<(&LineItem, Option<i64>)> {
        self.line_items
            .iter()
            .map(|item| (item, item.expiry_time.as_deref().and_then(parse_rfc3339).map(|t| t.timestamp_millis())))
            .max_by_key(|(_, expiry)| expiry.unwrap_or(i64::MIN))
    }

    /// The state this purchase gives, read at `read_at`, for `purchase_token`.
    /// `revoked`: Google said so (a refund, a revocation), whatever the state reads.
    pub fn update(&self, purchase_token: &str, product_id: &str, read_at: DateTime<Utc>, revoked: bool) -> Update {
        let (item, expires_at) = match self.latest_item() {
            Some((item, expiry)) => (Some(item), expiry),
            None => (None, None),
        };
        let status = if revoked {
            Status::Revoked
        } else {
            match self.subscription_state.as_deref() {
                // Cancelled means auto-renew is off: access runs to the end.
                Some("SUBSCRIPTION_STATE_ACTIVE" | "SUBSCRIPTION_STATE_CANCELED") => Status::Active,
                Some("SUBSCRIPTION_STATE_IN_GRACE_PERIOD") => Status::Grace,
                Some("SUBSCRIPTION_STATE_ON_HOLD") => Status::BillingRetry,
                // Expired, paused, pending (not paid yet), unknown: no access.
                _ => Status::Expired,
            }
        };
        Update {
            source: Source::Google,
            environment: self.environment(),
            store_id: purchase_token.to_owned(),
            product_id: item.map_or(product_id, |item| item.product_id.as_str()).to_owned(),
            status,
            expires_at,
            // In grace the line item's expiry is the grace end.
            grace_expires_at: if status == Status::Grace { expires_at } else { None },
            signed_at: read_at.timestamp_millis(),
        }
    }
}

/// Purchase tokens and product ids go into URL paths: only the characters
/// Google uses in them are accepted.
pub fn is_safe_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 1024
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl PlayClient {
    /// `None` if the service account's key does not parse (the
    /// configuration already checked it).
    pub fn new(config: GooglePlayConfig) -> Option<Self> {
        let key = EncodingKey::from_rsa_pem(config.service_account.private_key.expose_secret()).ok()?;
        Some(Self { config, key, token: Mutex::new(None) })
    }

    pub fn environment(&self) -> StoreEnvironment {
        self.config.environment
    }

    pub fn package_name(&self) -> &str {
        &self.config.package_name
    }

    /// An OAuth access token for the Play Developer API, from the cache while
    /// it is valid for another minute.
    async fn access_token(&self, http: &reqwest::Client, now: DateTime<Utc>) -> Result<String, GoogleError> {
        let mut cached = self.token.lock().await;
        let now_secs = now.timestamp();
        if let Some((token, expires)) = cached.as_ref() {
            if expires.saturating_sub(TOKEN_MARGIN_SECS) > now_secs {
                return Ok(token.clone());
            }
        }
        let account = &self.config.service_account;
        let claims = GrantClaims {
            iss: &account.client_email,
            scope: SCOPE,
            aud: &account.token_uri,
            iat: now_secs,
            exp: now_secs + 3600,
        };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|err| GoogleError::Upstream(format!("signing the token request: {err}")))?;
        let body = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let response = http
            .post(&account.token_uri)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .timeout(CALL_TIMEOUT)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(GoogleError::Upstream(format!("the token endpoint answered {}", response.status())));
        }
        let token: TokenResponse = response.json().await?;
        *cached = Some((token.access_token.clone(), now_secs.saturating_add(token.expires_in)));
        metrics::counter!("echolia_google_oauth_tokens_total").increment(1);
        Ok(token.access_token)
    }

    /// Sends the request `build` makes with an access token; if Google
    /// answers 401 (the token was revoked or rotated before its expiry), drops
    /// it from the cache and tries once more with a new one.
    async fn send_authorized(
        &self,
        http: &reqwest::Client,
        now: DateTime<Utc>,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, GoogleError> {
        let token = self.access_token(http, now).await?;
        let response = build(&token).timeout(CALL_TIMEOUT).send().await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        {
            let mut cached = self.token.lock().await;
            if cached.as_ref().is_some_and(|(held, _)| *held == token) {
                *cached = None;
            }
        }
        let token = self.access_token(http, now).await?;
        Ok(build(&token).timeout(CALL_TIMEOUT).send().await?)
    }

    fn purchases_url(&self) -> String {
        format!("{}/androidpublisher/v3/applications/{}/purchases", self.config.api_base_url, self.config.package_name)
    }

    /// `purchases.subscriptionsv2.get`.
    pub async fn subscription(
        &self,
        http: &reqwest::Client,
        purchase_token: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionPurchase, GoogleError> {
        if !is_safe_id(purchase_token) {
            return Err(GoogleError::UnknownPurchase);
        }
        let url = format!("{}/subscriptionsv2/tokens/{purchase_token}", self.purchases_url());
        let response = self.send_authorized(http, now, |token| http.get(&url).bearer_auth(token)).await?;
        match response.status().as_u16() {
            200 => Ok(response.json().await?),
            400 | 404 | 410 => Err(GoogleError::UnknownPurchase),
            status => Err(GoogleError::Upstream(format!("subscriptionsv2.get answered {status}"))),
        }
    }

    /// `purchases.subscriptions.acknowledge`: unacknowledged purchases are
    /// refunded by Google after three days.
    pub async fn acknowledge(
        &self,
        http: &reqwest::Client,
        product_id: &str,
        purchase_token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), GoogleError> {
        if !is_safe_id(purchase_token) || !is_safe_id(product_id) {
            return Err(GoogleError::UnknownPurchase);
        }
        let url = format!("{}/subscriptions/{product_id}/tokens/{purchase_token}:acknowledge", self.purchases_url());
        let response = self
            .send_authorized(http, now, |token| http.post(&url).bearer_auth(token).json(&serde_json::json!({})))
            .await?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(GoogleError::Upstream(format!("acknowledge answered {status}"))),
        }
    }
}

/// Why a push request's token was refused.
#[derive(Debug, thiserror::Error)]
pub enum PushAuthError {
    #[error("the push request's token is missing or invalid")]
    Invalid,
    #[error("Google's keys could not be read: {0}")]
    Keys(GoogleError),
}

/// Checks the OIDC token of Pub/Sub push requests.
pub struct PushVerifier {
    config: PubSubConfig,
    /// Google's keys and when they were read (unix seconds).
    keys: Mutex<Option<(JwkSet, i64)>>,
}

#[derive(Debug, Deserialize)]
struct PushClaims {
    exp: i64,
    email: Option<String>,
    email_verified: Option<bool>,
}

impl PushVerifier {
    pub fn new(config: PubSubConfig) -> Self {
        Self { config, keys: Mutex::new(None) }
    }

    async fn fetch_keys(&self, http: &reqwest::Client) -> Result<JwkSet, GoogleError> {
        let response = http.get(&self.config.jwks_url).timeout(CALL_TIMEOUT).send().await?;
        if !response.status().is_success() {
            return Err(GoogleError::Upstream(format!("the OIDC keys answered {}", response.status())));
        }
        Ok(response.json().await?)
    }

    /// The key `kid` names, reading Google's keys when they are old or the
    /// key is new to us (at most once a minute).
    async fn key(&self, http: &reqwest::Client, kid: &str, now: i64) -> Result<Option<DecodingKey>, GoogleError> {
        let mut cached = self.keys.lock().await;
        let fresh = cached.as_ref().is_some_and(|(_, read)| now - read < JWKS_TTL_SECS);
        let found = |set: &JwkSet| set.find(kid).and_then(|jwk| DecodingKey::from_jwk(jwk).ok());
        if fresh {
            if let Some((set, read)) = cached.as_ref() {
                if let Some(key) = found(set) {
                    return Ok(Some(key));
                }
                if now - read < JWKS_REFRESH_SECS {
                    return Ok(None);
                }
            }
        }
        let set = self.fetch_keys(http).await?;
        let key = found(&set);
        *cached = Some((set, now));
        Ok(key)
    }

    /// Checks `token` (the bearer of a push request): signed by Google,
    /// for our audience, not expired at `now`, naming the configured service
    /// account as its `email` (and not saying it is unverified).
    pub async fn verify(&self, http: &reqwest::Client, token: &str, now: DateTime<Utc>) -> Result<(), PushAuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| PushAuthError::Invalid)?;
        if header.alg != Algorithm::RS256 {
            return Err(PushAuthError::Invalid);
        }
        let kid = header.kid.ok_or(PushAuthError::Invalid)?;
        let key =
            self.key(http, &kid, now.timestamp()).await.map_err(PushAuthError::Keys)?.ok_or(PushAuthError::Invalid)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&["https://accounts.google.com", "accounts.google.com"]);
        // Expiry against the service's clock, below.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let claims =
            jsonwebtoken::decode::<PushClaims>(token, &key, &validation).map_err(|_| PushAuthError::Invalid)?;
        if claims.claims.exp.saturating_add(60) < now.timestamp() {
            return Err(PushAuthError::Invalid);
        }
        // Any Google Cloud user can have Google sign a token for our audience:
        // only the push subscription's own service account is let in.
        let expected = &self.config.service_account_email;
        if !claims.claims.email.as_deref().is_some_and(|email| email.eq_ignore_ascii_case(expected))
            || claims.claims.email_verified == Some(false)
        {
            return Err(PushAuthError::Invalid);
        }
        Ok(())
    }
}
