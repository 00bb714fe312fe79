//! `DATABASE_BACKEND=sqld`: a libSQL server with namespaces. A user's
//! database is the namespace `user-<uuid>`, the control database the
//! namespace `control`; namespaces are created and deleted through sqld's
//! admin API, data goes through libSQL's remote client (Hrana over HTTP),
//! and the append and pull paths' batches through [`hrana`].
//!
//! Every call has a deadline (`SQLD_TIMEOUT_SECS`): the admin API's through
//! reqwest, libSQL's through [`connector`]'s sockets, [`hrana`]'s through its
//! own. A server that is down, stalled or overloaded is
//! [`StoreError::Unavailable`] (503 `storage_unavailable`), and the next call
//! tries again: nothing needs a restart when it comes back.

#[cfg(feature = "remote-storage")]
pub(super) mod connector;
pub mod hrana;
#[cfg(test)]
mod tests;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::config::SqldConfig;
use hrana::Hrana;

/// The durability every namespace is created with: sqld's `strong` is
/// SQLite's `synchronous = FULL` (a commit is on disk before it is answered).
pub const DURABILITY_MODE: &str = "strong";

/// The namespace of the control database.
pub const CONTROL_NAMESPACE: &str = "control";

/// The namespace of a user's database. The id is a parsed UUID, so nothing
/// a client typed reaches a namespace name.
pub fn user_namespace(user_id: Uuid) -> String {
    format!("user-{}", user_id.as_hyphenated())
}

/// A libSQL server (sqld) with namespaces.
pub struct SqldBackend {
    http: reqwest::Client,
    url: String,
    admin_url: String,
    token: SecretString,
    admin_key: Option<SecretString>,
    timeout: Duration,
}

impl std::fmt::Debug for SqldBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqldBackend")
            .field("url", &self.url)
            .field("admin_url", &self.admin_url)
            .finish_non_exhaustive()
    }
}

fn secret_string(secret: &crate::config::Secret) -> SecretString {
    SecretString::from(String::from_utf8_lossy(secret.expose_secret()).into_owned())
}

impl SqldBackend {
    /// `http` is the process's shared client: every call here sets its own timeout.
    pub fn new(config: &SqldConfig, http: reqwest::Client) -> Self {
        Self {
            http,
            url: config.url.clone(),
            admin_url: config.admin_url.clone(),
            token: secret_string(&config.auth_token),
            admin_key: config.admin_auth_key.as_ref().map(secret_string),
            timeout: config.timeout,
        }
    }

    /// The Hrana client of one namespace (for batches of statements in one round trip).
    pub fn hrana(&self, namespace: &str) -> Hrana {
        Hrana::new(self.http.clone(), &self.url, namespace.to_owned(), self.token.clone(), self.timeout)
    }

    /// Where an embedded replica of `namespace` syncs from: this server, with the same token.
    pub fn replica_target(&self, namespace: &str) -> super::replica::ReplicaTarget {
        super::replica::ReplicaTarget {
            url: self.url.clone(),
            token: self.token.clone(),
            namespace: Some(namespace.to_owned()),
        }
    }

    /// A libSQL database handle on `namespace` (nothing is sent until a connection is used).
    #[cfg(feature = "remote-storage")]
    pub async fn open(&self, namespace: &str) -> StoreResult<libsql::Database> {
        let db = libsql::Builder::new_remote(self.url.clone(), self.token.expose_secret().to_owned())
            .namespace(namespace)
            .connector(connector::TimeoutConnector::new(self.timeout))
            .build()
            .await?;
        Ok(db)
    }

    #[cfg(not(feature = "remote-storage"))]
    pub async fn open(&self, _namespace: &str) -> StoreResult<libsql::Database> {
        Err(StoreError::Unavailable("this build has no remote storage (the `remote-storage` cargo feature)".into()))
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.admin_url)).timeout(self.timeout);
        match &self.admin_key {
            Some(key) => request.header(reqwest::header::AUTHORIZATION, format!("basic {}", key.expose_secret())),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> StoreResult<(reqwest::StatusCode, String)> {
        let unavailable = |err: reqwest::Error| {
            let kind = if err.is_timeout() { "timed out" } else { "failed" };
            StoreError::Unavailable(format!("sqld admin API, {what}: {kind}: {}", err.without_url()))
        };
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        let body = response.text().await.map_err(unavailable)?;
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(StoreError::Unavailable(format!("sqld admin API, {what}: HTTP {status}")));
        }
        // A key it refuses is the configuration's fault, not the request's: 503, named in the log.
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(StoreError::Unavailable(format!(
                "sqld admin API, {what}: HTTP {status} (check SQLD_ADMIN_AUTH_KEY)"
            )));
        }
        Ok((status, body))
    }

    /// Creates `namespace`; one that exists already is fine (a retry).
    ///
    /// With [`DURABILITY_MODE`]: sqld's default (`relaxed`, SQLite's
    /// `synchronous = NORMAL`) acknowledges commits that an OS crash or a
    /// power loss can take back, and an acknowledged event must never be lost
    /// (the local backend commits with `synchronous = FULL` for the same reason).
    pub async fn create_namespace(&self, namespace: &str) -> StoreResult<()> {
        let what = format!("creating {namespace}");
        let request = self
            .admin(reqwest::Method::POST, &format!("/v1/namespaces/{namespace}/create"))
            .json(&serde_json::json!({ "durability_mode": DURABILITY_MODE }));
        match self.send(request, &what).await? {
            (status, _) if status.is_success() => Ok(()),
            (_, body) if body.contains("already exists") => Ok(()),
            (status, body) => Err(admin_error(&what, status, &body)),
        }
    }

    /// Whether `namespace` exists.
    pub async fn namespace_exists(&self, namespace: &str) -> StoreResult<bool> {
        let what = format!("looking up {namespace}");
        match self.send(self.admin(reqwest::Method::GET, &format!("/v1/namespaces/{namespace}/config")), &what).await? {
            (status, _) if status.is_success() => Ok(true),
            (reqwest::StatusCode::NOT_FOUND, _) => Ok(false),
            (status, body) => Err(admin_error(&what, status, &body)),
        }
    }

    /// Deletes `namespace` for good; one already gone is fine (a retry).
    pub async fn delete_namespace(&self, namespace: &str) -> StoreResult<()> {
        let what = format!("deleting {namespace}");
        match self.send(self.admin(reqwest::Method::DELETE, &format!("/v1/namespaces/{namespace}")), &what).await? {
            (status, _) if status.is_success() => Ok(()),
            (reqwest::StatusCode::NOT_FOUND, _) => Ok(()),
            (status, body) => Err(admin_error(&what, status, &body)),
        }
    }

    /// Bytes `namespace`'s database takes on the server (its `stats`).
    pub async fn storage_bytes(&self, namespace: &str) -> StoreResult<u64> {
        #[derive(serde::Deserialize)]
        struct Stats {
            storage_bytes_used: u64,
        }
        let what = format!("reading the stats of {namespace}");
        match self.send(self.admin(reqwest::Method::GET, &format!("/v1/namespaces/{namespace}/stats")), &what).await? {
            (status, body) if status.is_success() => serde_json::from_str::<Stats>(&body)
                .map(|stats| stats.storage_bytes_used)
                .map_err(|err| StoreError::Corrupt(format!("sqld admin API, {what}: {err}"))),
            (reqwest::StatusCode::NOT_FOUND, _) => Ok(0),
            (status, body) => Err(admin_error(&what, status, &body)),
        }
    }
}

fn admin_error(what: &str, status: reqwest::StatusCode, body: &str) -> StoreError {
    let body: String = body.chars().take(300).collect();
    StoreError::Corrupt(format!("sqld admin API, {what}: HTTP {status}: {body}"))
}

/// The HTTP status of an error of libSQL's remote client that is an answer
/// other than 200 (its text holds `status=<status>, body=<body>`).
pub(super) fn http_status(message: &str) -> Option<&str> {
    let at = message.find("status=")? + "status=".len();
    let status = message[at..].split(',').next()?.trim();
    (!status.is_empty()).then_some(status)
}

/// Whether an error of libSQL's remote client means the server cannot be
/// reached or cannot serve now (rather than a statement that failed).
/// A stream the server no longer knows (its baton expired, or the server
/// restarted) is one of these too: the next request opens a new one. So is a
/// namespace said not to exist on a database opened as existing.
pub(super) fn remote_unavailable(message: &str) -> bool {
    message.contains("http error")
        || message.contains("status=5")
        || message.contains("status=429")
        || message.contains("stream closed")
        || message.contains("baton")
        // sqld shutting down answers so for namespaces that exist (see `hrana`).
        || message.contains("doesn't exist")
}
