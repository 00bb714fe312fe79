//! `DATABASE_BACKEND=turso`: Turso Cloud. A user's database is the Turso
//! database [`user_database`], the control database `TURSO_CONTROL_DATABASE`,
//! all in `TURSO_GROUP`; they are created and deleted through the Platform
//! API ([`platform`]), and reached at the `Hostname` it answers with
//! libSQL's remote client and [`super::hrana`], each carrying a token minted
//! for that database ([`tokens`]).
//!
//! Databases this service makes are either in the users directory or in the
//! provisioning ledger ([`crate::store::provisioning`]), which the sweep
//! finishes; README (Running on Turso) says how to list the group's
//! databases and find any other.

pub mod platform;
pub mod tokens;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use uuid::Uuid;

use super::hrana::Hrana;
use super::{Auth, RemoteDb};
use crate::config::turso::TursoConfig;
use crate::store::{StoreError, StoreResult};
use platform::{DatabaseInfo, Platform};
pub use tokens::DatabaseToken;
use tokens::Tokens;

/// The Turso database of a user: `u-` and the id's 16 bytes in lowercase
/// base32 (RFC 4648, no padding), 28 characters: Turso takes lowercase
/// letters, digits and dashes, at most 32 (a hyphenated UUID is 36). The id
/// is a parsed UUID, so nothing a client typed reaches a name.
pub fn user_database(user_id: Uuid) -> String {
    format!("u-{}", data_encoding::BASE32_NOPAD.encode(user_id.as_bytes()).to_ascii_lowercase())
}

/// The user whose database `name` is, if it is one ([`user_database`]'s inverse).
pub fn user_of_database(name: &str) -> Option<Uuid> {
    let encoded = name.strip_prefix("u-")?.to_ascii_uppercase();
    let bytes = data_encoding::BASE32_NOPAD.decode(encoded.as_bytes()).ok()?;
    Uuid::from_slice(&bytes).ok()
}

pub struct TursoBackend {
    platform: Arc<Platform>,
    tokens: Arc<Tokens>,
    /// The data path's client: the shared one, or one that connects every
    /// host to `connect_to`.
    data_http: reqwest::Client,
    group: String,
    control: String,
    timeout: Duration,
    connect_to: Option<SocketAddr>,
}

impl std::fmt::Debug for TursoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TursoBackend").field("group", &self.group).finish_non_exhaustive()
    }
}

/// Resolves every host name to one address (`TURSO_CONNECT_TO`).
struct ConnectTo(SocketAddr);

impl reqwest::dns::Resolve for ConnectTo {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs) })
    }
}

impl TursoBackend {
    /// `http` is the process's shared client (every call sets its own
    /// timeout); `open_databases` bounds the tokens kept (`MAX_OPEN_DATABASES`,
    /// plus `MAX_OPEN_REPLICAS`: a replica syncs with its database's token
    /// while the database itself may be closed).
    pub fn new(config: &TursoConfig, http: reqwest::Client, open_databases: NonZeroUsize) -> StoreResult<Self> {
        let api_token = SecretString::from(
            String::from_utf8_lossy(secrecy::ExposeSecret::expose_secret(&config.auth_token)).into_owned(),
        );
        let platform = Arc::new(Platform::new(
            http.clone(),
            &config.api_url,
            &config.org,
            api_token,
            config.timeout,
            config.retries,
        ));
        // Twice the open databases: a token outlives its database's eviction for a while.
        let capacity = open_databases.saturating_mul(NonZeroUsize::MIN.saturating_add(1));
        let tokens = Arc::new(Tokens::new(platform.clone(), config.token_expiration.clone(), capacity));
        let data_http = match config.connect_to {
            None => http,
            Some(addr) => reqwest::Client::builder()
                .connect_timeout(config.timeout)
                .dns_resolver(Arc::new(ConnectTo(addr)))
                .build()
                .map_err(|err| StoreError::Corrupt(format!("the HTTP client cannot start: {err}")))?,
        };
        Ok(Self {
            platform,
            tokens,
            data_http,
            group: config.group.clone(),
            control: config.control_database.clone(),
            timeout: config.timeout,
            connect_to: config.connect_to,
        })
    }

    /// The control database, created if it is not there yet.
    pub async fn open_control(&self) -> StoreResult<RemoteDb> {
        let info = self.platform.create_database(&self.control, &self.group).await?;
        self.open(info)
    }

    /// A user's database; `create` decides whether a missing one is made
    /// (registration) or reported as [`StoreError::UserNotFound`].
    pub async fn open_user(&self, user_id: Uuid, create: bool) -> StoreResult<RemoteDb> {
        let name = user_database(user_id);
        let info = if create {
            self.platform.create_database(&name, &self.group).await?
        } else {
            self.platform.get_database(&name).await?.ok_or(StoreError::UserNotFound(user_id))?
        };
        self.open(info)
    }

    /// Deletes a user's database for good (one already gone is fine).
    pub async fn delete_user(&self, user_id: Uuid) -> StoreResult<()> {
        let name = user_database(user_id);
        self.platform.delete_database(&name).await?;
        self.tokens.remove(&name);
        Ok(())
    }

    /// Bytes a user's database takes (its usage, as Turso reports it).
    pub async fn user_storage_bytes(&self, user_id: Uuid) -> StoreResult<u64> {
        self.platform.storage_bytes(&user_database(user_id)).await
    }

    /// Bytes the control database takes (one call per user would not be a metric's cost).
    pub async fn control_storage_bytes(&self) -> StoreResult<u64> {
        self.platform.storage_bytes(&self.control).await
    }

    fn open(&self, info: DatabaseInfo) -> StoreResult<RemoteDb> {
        // It goes into a URL: a host name and nothing else.
        let host = &info.hostname;
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            return Err(StoreError::Unavailable(format!(
                "Turso Platform API: database {} has a Hostname that is not a host name",
                info.name
            )));
        }
        let url = match self.connect_to {
            Some(addr) => format!("http://{host}:{}", addr.port()),
            None => format!("https://{host}"),
        };
        let auth = Auth::Minted(DatabaseToken::new(self.tokens.clone(), &info.name));
        let label = format!("Turso database {}", info.name);
        let hrana = Hrana::new(self.data_http.clone(), &url, None, label, auth, self.timeout);
        super::remote_db(hrana, self.timeout, self.connect_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_database_name_is_within_tursos_rules_and_maps_back() {
        for _ in 0..100 {
            let user = Uuid::new_v4();
            let name = user_database(user);
            assert_eq!(name.len(), 28, "{name}");
            assert!(crate::config::turso::valid_name(&name), "{name}");
            assert_eq!(user_of_database(&name), Some(user));
        }
        assert_eq!(user_of_database("echolia-control"), None);
        assert_eq!(user_of_database("u-notbase32!"), None);
    }
}
