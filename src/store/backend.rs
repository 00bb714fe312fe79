//! Where databases live. `local` keeps libSQL files under `DATA_DIR`;
//! `sqld` keeps them as namespaces of a libSQL server ([`super::remote`]);
//! `turso` as Turso Cloud databases ([`super::remote::turso`]). What an open
//! database does differently on each is [`Db`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use libsql::{Builder, Database, OpenFlags};
use uuid::Uuid;

use super::database::Db;
use super::remote::turso::TursoBackend;
use super::remote::{self, SqldBackend};
use super::{connect, StoreError, StoreResult};

#[derive(Debug, Clone)]
pub enum Backend {
    Local(LocalBackend),
    Sqld(Arc<SqldBackend>),
    Turso(Arc<TursoBackend>),
}

impl Backend {
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Self::Local(LocalBackend { data_dir: data_dir.into() })
    }

    /// The backend `config` names; `http` is the process's shared client.
    pub fn from_config(config: &crate::config::Config, http: &reqwest::Client) -> StoreResult<Self> {
        Ok(match &config.database_backend {
            crate::config::BackendKind::Local => Self::local(&config.data_dir),
            crate::config::BackendKind::Sqld(sqld) => Self::Sqld(Arc::new(SqldBackend::new(sqld, http.clone()))),
            crate::config::BackendKind::Turso(turso) => {
                let replicas = config.replicas.as_ref().map_or(0, |replicas| replicas.max_open.get());
                let open = config.max_open_databases.saturating_add(replicas);
                Self::Turso(Arc::new(TursoBackend::new(turso, http.clone(), open)?))
            }
        })
    }

    /// Opens (creating when needed) the control database.
    pub async fn open_control(&self) -> StoreResult<Db> {
        match self {
            Self::Local(local) => Ok(Db::Local(Box::new(local.open_control().await?))),
            Self::Sqld(sqld) => {
                sqld.create_namespace(remote::CONTROL_NAMESPACE).await?;
                Ok(Db::Remote(sqld.open(remote::CONTROL_NAMESPACE).await?))
            }
            Self::Turso(turso) => Ok(Db::Remote(turso.open_control().await?)),
        }
    }

    /// Opens a user's database; `create` decides whether a missing one is
    /// made (registration) or reported as [`StoreError::UserNotFound`].
    pub async fn open_user(&self, user_id: Uuid, create: bool) -> StoreResult<Db> {
        match self {
            Self::Local(local) => Ok(Db::Local(Box::new(local.open_user(user_id, create).await?))),
            Self::Sqld(sqld) => {
                let namespace = remote::user_namespace(user_id);
                if create {
                    sqld.create_namespace(&namespace).await?;
                } else if !sqld.namespace_exists(&namespace).await? {
                    return Err(StoreError::UserNotFound(user_id));
                }
                Ok(Db::Remote(sqld.open(&namespace).await?))
            }
            Self::Turso(turso) => Ok(Db::Remote(turso.open_user(user_id, create).await?)),
        }
    }

    /// The file of a user's database, for a backend that keeps one here.
    pub fn user_file(&self, user_id: Uuid) -> Option<PathBuf> {
        match self {
            Self::Local(local) => Some(local.user_path(user_id)),
            Self::Sqld(_) | Self::Turso(_) => None,
        }
    }

    /// Bytes a user's database takes (with its WAL).
    pub async fn user_storage_bytes(&self, user_id: Uuid) -> StoreResult<u64> {
        match self {
            Self::Local(local) => Ok(local.storage_bytes(user_id).await),
            Self::Sqld(sqld) => sqld.storage_bytes(&remote::user_namespace(user_id)).await,
            Self::Turso(turso) => turso.user_storage_bytes(user_id).await,
        }
    }

    /// Bytes every database takes: the control database and all user
    /// databases, with their WALs. Walks the directory: callers cache it.
    /// On sqld and Turso, the control database's alone (sqld cannot list
    /// namespaces, and one call per user would not be a metric's cost).
    pub async fn total_storage_bytes(&self) -> StoreResult<u64> {
        match self {
            Self::Local(local) => local.total_storage_bytes().await,
            Self::Sqld(sqld) => sqld.storage_bytes(remote::CONTROL_NAMESPACE).await,
            Self::Turso(turso) => turso.control_storage_bytes().await,
        }
    }

    /// Removes a user's database for good (one already gone is fine).
    pub async fn delete_user(&self, user_id: Uuid) -> StoreResult<()> {
        match self {
            Self::Local(local) => local.delete_user(user_id).await,
            Self::Sqld(sqld) => sqld.delete_namespace(&remote::user_namespace(user_id)).await,
            Self::Turso(turso) => turso.delete_user(user_id).await,
        }
    }
}

/// Appended to a user's database file to name the file a rebuild locks
/// ([`super::UserDb::lock_replay`]).
pub const REPLAY_LOCK_SUFFIX: &str = "-replay";

#[derive(Debug, Clone)]
pub struct LocalBackend {
    data_dir: PathBuf,
}

impl LocalBackend {
    /// `DATA_DIR`: the operator commands check it exists before opening anything.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The control database file.
    pub fn control_path(&self) -> PathBuf {
        self.data_dir.join("control.db")
    }

    fn users_dir(&self) -> PathBuf {
        self.data_dir.join("users")
    }

    /// The file of one user. The id is a parsed UUID, so nothing a client
    /// typed can reach the path.
    fn user_path(&self, user_id: Uuid) -> PathBuf {
        self.users_dir().join(format!("{}.db", user_id.as_hyphenated()))
    }

    async fn open_control(&self) -> StoreResult<Database> {
        create_dir(&self.users_dir()).await?;
        open_file(&self.control_path(), OpenFlags::default()).await
    }

    async fn open_user(&self, user_id: Uuid, create: bool) -> StoreResult<Database> {
        let path = self.user_path(user_id);
        let flags = if create {
            create_dir(&self.users_dir()).await?;
            OpenFlags::default()
        } else {
            // Without CREATE, SQLite refuses a missing file instead of making one.
            if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Err(StoreError::UserNotFound(user_id));
            }
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        open_file(&path, flags).await
    }

    /// The database file and its companions (the last, replay's lock file).
    fn user_files(&self, user_id: Uuid) -> [PathBuf; 4] {
        let path = self.user_path(user_id);
        ["", "-wal", "-shm", REPLAY_LOCK_SUFFIX].map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())))
    }

    async fn storage_bytes(&self, user_id: Uuid) -> u64 {
        let [db, wal, ..] = self.user_files(user_id);
        let mut total = 0;
        for file in [db, wal] {
            total += tokio::fs::metadata(&file).await.map_or(0, |meta| meta.len());
        }
        total
    }

    async fn total_storage_bytes(&self) -> StoreResult<u64> {
        let (control, users) = (self.control_path(), self.users_dir());
        let walk = move || -> std::io::Result<u64> {
            let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
            let mut total = size(&control) + size(&PathBuf::from(format!("{}-wal", control.display())));
            for entry in std::fs::read_dir(&users)? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".db") || name.ends_with(".db-wal") {
                    // A file deleted since the listing counts as empty.
                    total += entry.metadata().map_or(0, |meta| meta.len());
                }
            }
            Ok(total)
        };
        let context = || format!("measuring {}", self.users_dir().display());
        match tokio::task::spawn_blocking(walk).await {
            Ok(result) => result.map_err(|err| StoreError::io(context(), err)),
            Err(join) => Err(StoreError::io(context(), std::io::Error::other(join))),
        }
    }

    async fn delete_user(&self, user_id: Uuid) -> StoreResult<()> {
        for file in self.user_files(user_id) {
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::io(format!("removing {}", file.display()), err)),
            }
        }
        Ok(())
    }
}

/// Makes `DATA_DIR` readable by the server's user only (0700), creating it
/// if `create` (the server does; operator commands refuse a missing one): it
/// holds every user's database and the JWT secret.
pub fn make_private(data_dir: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if create {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir)?;
    } else if !data_dir.exists() {
        return Ok(());
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
}

async fn create_dir(dir: &Path) -> StoreResult<()> {
    tokio::fs::create_dir_all(dir).await.map_err(|err| StoreError::io(format!("creating {}", dir.display()), err))
}

async fn open_file(path: &Path, flags: OpenFlags) -> StoreResult<Database> {
    super::memory::configure_once();
    let db = Builder::new_local(path).flags(flags).build().await?;
    // WAL is a property of the file: set once, it stays.
    let conn = connect(&db).await?;
    let mut rows = conn.query("PRAGMA journal_mode = WAL", ()).await?;
    let mode: String = match rows.next().await? {
        Some(row) => row.get(0)?,
        None => String::new(),
    };
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!("{}: journal_mode is `{mode}`, not wal", path.display())));
    }
    Ok(db)
}
