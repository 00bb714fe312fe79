//! `echolia backup --to <target>`: the control database, then every user of
//! its directory (as the control database's copy lists them), each copied by
//! `VACUUM INTO` unless the previous backup at the target already holds the
//! same head and state; then the manifest; then, with `--keep`, pruning.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::manifest::{self, FileEntry, Manifest, UserEntry, FORMAT};
use super::target::{blocking, digest_file, DATA};
use super::{open_copy, read_state, BackupError, DbState, Target};
use crate::clock::rfc3339;
use crate::store::raw::RawConn;
use crate::store::{StoreError, UserDatabases};

/// What a backup did: the `--json` summary.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub name: String,
    pub target: String,
    /// Users in the backup.
    pub users: u64,
    /// Users copied now (changed since the previous backup, or new).
    pub copied: u64,
    /// Users whose earlier copy the manifest points to.
    pub unchanged: u64,
    /// Users of the directory whose database was gone when reached.
    pub missing: u64,
    /// Events the backup holds.
    pub events: u64,
    /// Bytes stored now (the control database and the copied users).
    pub bytes_copied: u64,
    /// Bytes of every file the backup needs.
    pub bytes_total: u64,
    pub seconds: f64,
    /// The backups `--keep` removed, and the files that went with them.
    pub pruned: Vec<String>,
    pub files_removed: u64,
}

pub struct BackupOptions {
    /// Users copied at once.
    pub jobs: NonZeroUsize,
    /// Backups kept at the target, this one included.
    pub keep: Option<NonZeroUsize>,
    /// Copy every user, changed or not.
    pub full: bool,
}

/// The live databases of the `local` backend.
pub struct Source<'a> {
    pub control: PathBuf,
    pub data_dir: &'a Path,
    pub users: Arc<UserDatabases>,
}

enum UserOutcome {
    Copied(UserEntry),
    Unchanged(UserEntry),
    Missing(Uuid),
}

/// Takes one backup. `progress(done, total)` is told after each user.
pub async fn backup(
    source: &Source<'_>,
    target: Arc<Target>,
    options: &BackupOptions,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let name = manifest::name_at(started_at);
    target.prepare().await?;
    let _lock = target.lock(source.data_dir)?;
    if target.read(&Manifest::key(&name)).await?.is_some() {
        return Err(BackupError::Usage(format!("a backup named {name} is at the target already: try again")));
    }
    let previous = if options.full { None } else { latest(&target).await? };
    remove_abandoned_staging(&target.staging_parent(source.data_dir)).await;
    let staging = target.staging(&name, source.data_dir)?;

    // The control database first: its copy's directory is the list of users.
    let staged = staging.path().join("control.db");
    vacuum_into(RawConn::open(&source.control)?, &staged).await?;
    let user_ids = {
        let (_db, conn) = open_copy(&staged, false).await?;
        make_self_contained(&conn).await?;
        let mut rows = conn.query("SELECT user_id FROM users ORDER BY user_id", ()).await.map_err(StoreError::from)?;
        let mut ids = Vec::new();
        while let Some(row) = rows.next().await.map_err(StoreError::from)? {
            let text: String = row.get(0).map_err(StoreError::from)?;
            ids.push(
                Uuid::parse_str(&text)
                    .map_err(|_| StoreError::Corrupt(format!("users directory: `{text}` is not a UUID")))?,
            );
        }
        ids
    };
    let control_digest = digest_file(&staged).await?;
    let control =
        FileEntry { path: manifest::control_key(&name), size: control_digest.size, sha256: control_digest.sha256 };
    target.store_file(&staged, &control.path).await?;
    let bytes_copied = Arc::new(AtomicU64::new(control.size));

    let total = user_ids.len() as u64;
    let previous_users: Arc<HashMap<Uuid, UserEntry>> = Arc::new(
        previous
            .map(|manifest| manifest.users.into_iter().map(|user| (user.user_id, user)).collect())
            .unwrap_or_default(),
    );
    let permits = Arc::new(Semaphore::new(options.jobs.get()));
    let staging_dir: Arc<Path> = staging.path().into();
    let mut tasks = JoinSet::new();
    for user in user_ids {
        let (permits, users, target, previous, staging, name, bytes) = (
            permits.clone(),
            source.users.clone(),
            target.clone(),
            previous_users.clone(),
            staging_dir.clone(),
            name.clone(),
            bytes_copied.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            backup_user(user, &users, &target, previous.get(&user), &staging, &name, &bytes).await
        });
    }
    let (mut entries, mut missing, mut copied, mut done) = (Vec::new(), Vec::new(), 0u64, 0u64);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        done += 1;
        progress(done, total);
        match joined {
            Ok(Ok(UserOutcome::Copied(entry))) => {
                copied += 1;
                entries.push(entry);
            }
            Ok(Ok(UserOutcome::Unchanged(entry))) => entries.push(entry),
            Ok(Ok(UserOutcome::Missing(user))) => missing.push(user),
            Ok(Err(err)) => {
                // The first failure ends the backup: no manifest, so it never counts.
                failure.get_or_insert(err);
                tasks.abort_all();
            }
            Err(join) if join.is_cancelled() => {}
            Err(join) => {
                failure.get_or_insert(BackupError::Io {
                    context: "a backup task failed".into(),
                    source: std::io::Error::other(join),
                });
                tasks.abort_all();
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    entries.sort_by_key(|entry| entry.user_id);
    missing.sort();
    let manifest = Manifest {
        format: FORMAT,
        name: name.clone(),
        started_at: rfc3339(started_at),
        finished_at: rfc3339(Utc::now()),
        version: env!("CARGO_PKG_VERSION").into(),
        control,
        users: entries,
        missing,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|err| BackupError::Manifest(err.to_string()))?;
    // Written last: from here on the backup counts.
    target.write(&Manifest::key(&name), bytes).await?;
    drop(staging);

    let (pruned, files_removed) = match options.keep {
        // The backup counts already: say so, or the operator would take it for lost.
        Some(keep) => prune(&target, &name, keep)
            .await
            .map_err(|err| BackupError::Target(format!("backup {name} is stored, but --keep failed: {err}")))?,
        None => (Vec::new(), 0),
    };
    Ok(BackupSummary {
        name,
        target: target.describe(),
        users: manifest.users.len() as u64,
        copied,
        unchanged: manifest.users.len() as u64 - copied,
        missing: manifest.missing.len() as u64,
        events: manifest.events(),
        bytes_copied: bytes_copied.load(Ordering::Relaxed),
        bytes_total: manifest.files().map(|file| file.size).sum(),
        seconds: started.elapsed().as_secs_f64(),
        pruned,
        files_removed,
    })
}

async fn backup_user(
    user: Uuid,
    users: &UserDatabases,
    target: &Target,
    previous: Option<&UserEntry>,
    staging: &Path,
    name: &str,
    bytes: &AtomicU64,
) -> Result<UserOutcome, BackupError> {
    let db = match users.get(user).await {
        Ok(db) => db,
        Err(StoreError::UserNotFound(_)) => return Ok(UserOutcome::Missing(user)),
        Err(err) => return Err(err.into()),
    };
    if let Some(previous) = previous {
        let live = read_state(&*db.read().await?).await?;
        if same(previous, &live) && target.size_of(&previous.file.path).await? == Some(previous.file.size) {
            return Ok(UserOutcome::Unchanged(previous.clone()));
        }
    }
    let staged = staging.join(format!("{}.db", user.as_hyphenated()));
    let raw = db.open_raw()?;
    vacuum_into(raw, &staged).await?;
    drop(db);
    // What the manifest says is what the copy holds, read from the copy.
    let state = {
        let (_db, conn) = open_copy(&staged, false).await?;
        make_self_contained(&conn).await?;
        read_state(&conn).await?
    };
    let digest = digest_file(&staged).await?;
    let key = manifest::user_key(name, user);
    target.store_file(&staged, &key).await?;
    let _ = tokio::fs::remove_file(&staged).await;
    bytes.fetch_add(digest.size, Ordering::Relaxed);
    Ok(UserOutcome::Copied(UserEntry {
        user_id: user,
        head_seq: state.tip.seq,
        head_hash: state.head_hash(),
        state_sha256: state.state_sha256,
        file: FileEntry { path: key, size: digest.size, sha256: digest.sha256 },
    }))
}

fn same(previous: &UserEntry, live: &DbState) -> bool {
    previous.head_seq == live.tip.seq
        && previous.head_hash == live.head_hash()
        && previous.state_sha256 == live.state_sha256
}

/// `VACUUM INTO`: a compacted copy of the database as one read transaction
/// sees it. On its own connection and a blocking thread; it takes no write lock.
async fn vacuum_into(raw: RawConn, to: &Path) -> Result<(), BackupError> {
    let path = to.to_str().ok_or_else(|| BackupError::Usage(format!("{}: not a UTF-8 path", to.display())))?;
    if path.contains('\0') {
        return Err(BackupError::Usage(format!("{}: a NUL byte in the path", to.display())));
    }
    let sql = format!("VACUUM INTO '{}'", path.replace('\'', "''"));
    tokio::task::spawn_blocking(move || raw.execute_batch(&sql))
        .await
        .map_err(|join| BackupError::io("a snapshot task failed", std::io::Error::other(join)))??;
    Ok(())
}

/// A copy in rollback-journal mode: one file, which opens read-only
/// anywhere without a WAL beside it (restore turns WAL back on).
async fn make_self_contained(conn: &libsql::Connection) -> Result<(), BackupError> {
    let mut rows = conn.query("PRAGMA journal_mode = DELETE", ()).await.map_err(StoreError::from)?;
    while rows.next().await.map_err(StoreError::from)?.is_some() {}
    Ok(())
}

/// The newest backup at the target, if any.
pub async fn latest(target: &Target) -> Result<Option<Manifest>, BackupError> {
    match target.backups().await?.pop() {
        Some(name) => Ok(Some(load(target, &name).await?)),
        None => Ok(None),
    }
}

/// A backup's manifest, read and checked.
pub async fn load(target: &Target, name: &str) -> Result<Manifest, BackupError> {
    if !manifest::valid_name(name) {
        return Err(BackupError::Usage(format!("`{name}` is not a backup name (such as 20261207T050000.000Z)")));
    }
    match target.read(&Manifest::key(name)).await? {
        Some(bytes) => Manifest::parse(name, &bytes),
        None => Err(BackupError::Usage(format!("there is no backup {name} at {}", target.describe()))),
    }
}

/// Keeps the newest `keep` backups. Their manifests name every file they
/// need, wherever it was first stored; a pruned backup's manifest goes
/// first (so it stops counting), then every file under `data/` that no kept
/// backup needs and that no unlisted backup newer than `current` may be writing.
async fn prune(target: &Target, current: &str, keep: NonZeroUsize) -> Result<(Vec<String>, u64), BackupError> {
    // The backup just taken is always kept, even when a clock set back makes it sort before older ones.
    let mut names = target.backups().await?;
    names.retain(|name| name != current);
    names.push(current.to_owned());
    let cut = names.len().saturating_sub(keep.get());
    let (old, kept) = names.split_at(cut);
    let mut needed = HashSet::new();
    for name in kept {
        // A kept manifest that does not read stops the pruning: nothing is removed.
        needed.extend(load(target, name).await?.files().map(|file| file.path.clone()));
    }
    for name in old {
        target.delete(&Manifest::key(name)).await?;
    }
    let mut removed = 0;
    let mut emptied = HashSet::new();
    for key in target.list(DATA).await? {
        let Some(owner) = manifest::owner(&key) else { continue };
        // A backup newer than `current` without a manifest may be one still being written.
        let finished = owner < current || old.iter().any(|name| name == owner);
        if finished && !needed.contains(&key) && !kept.iter().any(|name| name == owner) {
            target.delete(&key).await?;
            emptied.insert(owner.to_owned());
            removed += 1;
        }
    }
    for name in emptied {
        target.tidy(&name).await;
    }
    Ok((old.to_vec(), removed))
}

/// Staging folders a killed backup left (in a folder target, or in
/// `DATA_DIR` for object storage: the lock over them is held, so none is in use).
async fn remove_abandoned_staging(root: &Path) {
    let root = root.to_path_buf();
    let _ = blocking(move || {
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".staging-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, users: &[(Uuid, &str)]) -> Vec<u8> {
        let file = |path: String| FileEntry { path, size: 1, sha256: "ab".repeat(32) };
        let manifest = Manifest {
            format: FORMAT,
            name: name.into(),
            started_at: String::new(),
            finished_at: String::new(),
            version: String::new(),
            control: file(manifest::control_key(name)),
            users: users
                .iter()
                .map(|(user, owner)| UserEntry {
                    user_id: *user,
                    head_seq: 1,
                    head_hash: String::new(),
                    state_sha256: String::new(),
                    file: file(manifest::user_key(owner, *user)),
                })
                .collect(),
            missing: vec![],
        };
        serde_json::to_vec(&manifest).unwrap()
    }

    /// `--keep` keeps what kept manifests point to (files shared with a
    /// pruned backup included), and never the backup just taken, even when
    /// a clock set back makes its name sort before older ones.
    #[tokio::test]
    async fn prune_keeps_the_current_backup_and_every_file_a_kept_one_needs() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Dir(dir.path().to_path_buf());
        target.prepare().await.unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let [first, second, current] = ["20261207T050000.000Z", "20261207T060000.000Z", "20261207T040000.000Z"];
        for (name, users) in [(first, vec![(a, first), (b, first)]), (second, vec![(a, second), (b, first)])] {
            target.write(&Manifest::key(name), manifest(name, &users)).await.unwrap();
            for file in Manifest::parse(name, &manifest(name, &users)).unwrap().files() {
                let path = dir.path().join(&file.path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, b"x").unwrap();
            }
        }
        target.write(&Manifest::key(current), manifest(current, &[(a, current), (b, first)])).await.unwrap();

        let (pruned, _) = prune(&target, current, NonZeroUsize::new(1).unwrap()).await.unwrap();
        assert_eq!(pruned, [first, second], "the backup just taken stays");
        assert_eq!(target.backups().await.unwrap(), [current]);
        assert!(dir.path().join(manifest::user_key(first, b)).exists(), "shared by the kept backup");
        assert!(!dir.path().join(manifest::user_key(first, a)).exists());
    }
}
