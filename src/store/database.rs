//! An open database of any backend, and what differs between a file here
//! and a database over the network: how a connection is made, what may be
//! kept between units of work, how migrations reach it. Every remote
//! backend (sqld, Turso) is the one [`Db::Remote`] case, so the callers
//! ([`super::UserDb`], [`super::ControlDb`]) branch on nothing.

use libsql::Connection;

use super::migrations::{self, Migration};
use super::remote::RemoteDb;
use super::{connect, memory, StoreResult};

pub enum Db {
    /// A libSQL file on this machine (boxed: with the `embedded-replicas`
    /// feature libSQL's handle is over 600 bytes).
    Local(Box<libsql::Database>),
    /// A database reached over HTTP (Hrana): a sqld namespace or a Turso database.
    Remote(RemoteDb),
}

impl Db {
    /// A fresh connection for one unit of work: a local one with the
    /// settings every local connection needs, a remote one with none.
    pub async fn connect(&self) -> StoreResult<Connection> {
        match self {
            Self::Local(db) => connect(db).await,
            Self::Remote(remote) => remote.connect().await,
        }
    }

    /// A fresh connection for reads: a local one with its page cache sized
    /// to the memory budget ([`memory::size_reader_cache`]).
    pub async fn connect_reader(&self) -> StoreResult<Connection> {
        let conn = self.connect().await?;
        if let Self::Local(_) = self {
            memory::size_reader_cache(&conn).await?;
        }
        Ok(conn)
    }

    /// Whether a connection may be kept between units of work, and
    /// prepared statements between transactions: not a remote one, which
    /// holds a stream (a baton) the server forgets after a while idle, or
    /// when it restarts, and whose statements belong to that stream.
    pub fn keeps_connections(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    /// The Hrana client of a remote database: the append and pull paths
    /// batch their statements through it.
    pub fn hrana(&self) -> Option<&super::remote::hrana::Hrana> {
        match self {
            Self::Local(_) => None,
            Self::Remote(remote) => Some(remote.hrana()),
        }
    }

    /// Where an embedded replica of it syncs from, on a remote database:
    /// what opening it learned (URL, namespace, token source), so opening a
    /// replica asks the backend nothing more.
    pub fn replica_target(&self) -> Option<super::replica::ReplicaTarget> {
        match self {
            Self::Local(_) => None,
            Self::Remote(remote) => Some(remote.replica_target()),
        }
    }

    /// Brings the database up to date with `set`: through Hrana on a
    /// remote one (one round trip per migration), else on a connection of its own.
    pub async fn migrate(&self, set: &[Migration]) -> StoreResult<Vec<&'static str>> {
        match self {
            Self::Local(db) => migrations::apply(&connect(db).await?, set).await,
            Self::Remote(remote) => migrations::apply_remote(remote.hrana(), set).await,
        }
    }

    /// Sets SQLite's process-wide soft heap limit through this database, if
    /// it is a local one (a remote database's memory is its server's).
    pub async fn set_memory_limit(&self, bytes: u64) -> StoreResult<()> {
        match self {
            Self::Local(db) => memory::set_soft_limit(&connect(db).await?, bytes).await,
            Self::Remote(_) => Ok(()),
        }
    }
}
