//! The remote backends: what they share ([`RemoteDb`]: libSQL's remote
//! client and [`hrana`] on one database, [`Auth`]), and sqld's.
//!
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
pub mod turso;

use std::sync::atomic::{AtomicU64, Ordering};
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

/// Tokens libSQL's remote client has seen refused (401) in this process. It
/// does not say whose, so every minted token older than the last refusal is
/// minted again ([`turso::tokens`]): after `turso db tokens invalidate` (or a
/// group's), one mint per database in use, rather than refusals until each
/// token's renewal. Counted at most once per [`REFUSAL_EVERY`], so a
/// database that keeps refusing cannot have every token minted again and again.
static REFUSALS: AtomicU64 = AtomicU64::new(0);
static LAST_REFUSAL: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
const REFUSAL_EVERY: Duration = Duration::from_secs(1);

/// A token was refused on libSQL's remote client (its error says only the status).
pub(super) fn note_refusal() {
    let mut last = LAST_REFUSAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if last.is_none_or(|at| at.elapsed() >= REFUSAL_EVERY) {
        *last = Some(std::time::Instant::now());
        REFUSALS.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many refusals [`note_refusal`] has counted.
pub fn refusals() -> u64 {
    REFUSALS.load(Ordering::Relaxed)
}

/// How requests to a remote database are authorized.
#[derive(Clone)]
pub enum Auth {
    /// One token for every database (`SQLD_AUTH_TOKEN`).
    Fixed(SecretString),
    /// A token minted for the database, renewed before it expires (Turso).
    Minted(turso::DatabaseToken),
}

impl Auth {
    /// The token to send now.
    pub async fn token(&self) -> StoreResult<SecretString> {
        match self {
            Self::Fixed(token) => Ok(token.clone()),
            Self::Minted(minted) => minted.get().await,
        }
    }

    /// The server refused `token` (401, 403): what the log should say. A
    /// minted one is forgotten, so the next request mints another.
    pub fn refused(&self, token: &SecretString) -> &'static str {
        match self {
            Self::Fixed(_) => " (check SQLD_AUTH_TOKEN)",
            Self::Minted(minted) => {
                minted.forget(token);
                " (the database token was refused; the next request mints another)"
            }
        }
    }
}

/// Whether two tokens are the same, in constant time (as every comparison of a secret here).
pub fn same_token(a: &SecretString, b: &SecretString) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.expose_secret().as_bytes().ct_eq(b.expose_secret().as_bytes()))
}

/// One database over the network: libSQL's remote client for statements
/// one at a time and transactions, [`Hrana`] for batches in one round trip.
/// Both take the token [`Hrana`]'s [`Auth`] gives at the time.
pub struct RemoteDb {
    hrana: Hrana,
    #[cfg(feature = "remote-storage")]
    connector: connector::TimeoutConnector,
    /// Every host reached at this address instead ([`TursoConfig::connect_to`]).
    ///
    /// [`TursoConfig::connect_to`]: crate::config::turso::TursoConfig::connect_to
    connect_to: Option<std::net::SocketAddr>,
}

impl RemoteDb {
    /// A fresh connection (nothing is sent until it runs a statement).
    /// libSQL's remote client takes its token when built, and builds a
    /// client of its own for every connection anyway: so one is built here
    /// per connection, with the token current now.
    #[cfg(feature = "remote-storage")]
    pub async fn connect(&self) -> StoreResult<libsql::Connection> {
        let token = self.hrana.token().await?;
        let mut builder = libsql::Builder::new_remote(self.hrana.url().to_owned(), token.expose_secret().to_owned());
        if let Some(namespace) = self.hrana.namespace() {
            builder = builder.namespace(namespace);
        }
        let db = builder.connector(self.connector.clone()).build().await?;
        Ok(db.connect()?)
    }

    #[cfg(not(feature = "remote-storage"))]
    pub async fn connect(&self) -> StoreResult<libsql::Connection> {
        Err(no_remote_storage())
    }

    pub fn hrana(&self) -> &Hrana {
        &self.hrana
    }

    /// Where an embedded replica of this database syncs from: the URL,
    /// namespace, token source and connection its data path uses.
    pub fn replica_target(&self) -> super::replica::ReplicaTarget {
        super::replica::ReplicaTarget { hrana: self.hrana.clone(), connect_to: self.connect_to }
    }
}

#[cfg(not(feature = "remote-storage"))]
fn no_remote_storage() -> StoreError {
    StoreError::Unavailable("this build has no remote storage (the `remote-storage` cargo feature)".into())
}

/// The database `hrana` names, connected as `connect_to` says ([`TursoConfig::connect_to`]).
///
/// [`TursoConfig::connect_to`]: crate::config::turso::TursoConfig::connect_to
#[cfg(feature = "remote-storage")]
fn remote_db(hrana: Hrana, timeout: Duration, connect_to: Option<std::net::SocketAddr>) -> StoreResult<RemoteDb> {
    Ok(RemoteDb { hrana, connector: connector::TimeoutConnector::new(timeout, connect_to), connect_to })
}

#[cfg(not(feature = "remote-storage"))]
fn remote_db(_hrana: Hrana, _timeout: Duration, _connect_to: Option<std::net::SocketAddr>) -> StoreResult<RemoteDb> {
    Err(no_remote_storage())
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
        let label = format!("sqld namespace {namespace}");
        let auth = Auth::Fixed(self.token.clone());
        Hrana::new(self.http.clone(), &self.url, Some(namespace.to_owned()), label, auth, self.timeout)
    }

    /// The database `namespace` (nothing is sent until a connection is used).
    pub async fn open(&self, namespace: &str) -> StoreResult<RemoteDb> {
        remote_db(self.hrana(namespace), self.timeout, None)
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
