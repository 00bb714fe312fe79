//! `echolia restore` and `echolia backup --check`: every file of a backup
//! read back and its SHA-256 compared with the manifest's, then every user's
//! log verified from seq 1 and its head compared with the manifest's. A
//! restore installs each file that arrived intact into a new `DATA_DIR`.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::manifest::{FileEntry, Manifest, UserEntry};
use super::snapshot::{latest, load};
use super::target::{blocking, Digested};
use super::{open_copy, BackupError, Target};
use crate::events::verify::verify_log;
use crate::store::{Backend, UserDb};

/// What a check or a restore found: the `--json` report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub backup: String,
    pub target: String,
    /// Users whose copy was intact and verified (restored, for a restore).
    pub users: u64,
    /// Events in those users' logs, verified.
    pub events: u64,
    /// Every file or log that is not what the manifest says.
    pub mismatches: Vec<Mismatch>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// The user, or none for the control database.
    pub user_id: Option<Uuid>,
    pub path: String,
    pub problem: String,
}

/// Where a checked file is read: in place (a folder target) or a scratch copy.
enum Scratch {
    InPlace,
    Folder(tempfile::TempDir),
}

/// Verifies a backup (the newest unless `at` names one) without restoring it.
pub async fn check(
    target: Arc<Target>,
    at: Option<&str>,
    jobs: NonZeroUsize,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Report, BackupError> {
    let manifest = pick(&target, at).await?;
    let scratch = match &*target {
        Target::Dir(_) => Arc::new(Scratch::InPlace),
        Target::Bucket { .. } => Arc::new(Scratch::Folder(
            tempfile::tempdir().map_err(|err| BackupError::io("making a scratch folder", err))?,
        )),
    };
    let scratch_for = move |scratch: &Scratch, target: &Target, key: &str, user: Option<Uuid>| -> Option<PathBuf> {
        match scratch {
            Scratch::InPlace => target.local_file(key),
            Scratch::Folder(dir) => Some(dir.path().join(user.map_or("control.db".into(), |u| format!("{u}.db")))),
        }
    };
    run(target, manifest, jobs, progress, move |target, file, user| {
        let scratch = scratch.clone();
        async move {
            let copy = scratch_for(&scratch, &target, &file.path, user)
                .ok_or_else(|| BackupError::Usage("no scratch place for a checked file".into()))?;
            let digested = match &*scratch {
                Scratch::InPlace => target.digest(&file.path).await?,
                Scratch::Folder(_) => target.download(&file.path, &copy).await?,
            };
            let outcome = Fetched { digested, copy: copy.clone(), keep: false };
            Ok::<_, BackupError>((outcome, matches!(*scratch, Scratch::Folder(_))))
        }
    })
    .await
}

/// Restores a backup (the newest unless `at` names one) into `to`, which
/// must be empty or missing unless `force` (then its databases are replaced).
pub async fn restore(
    target: Arc<Target>,
    at: Option<&str>,
    to: &Path,
    force: bool,
    jobs: NonZeroUsize,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Report, BackupError> {
    let manifest = pick(&target, at).await?;
    prepare_data_dir(to, force).await?;
    let data_dir = to.display().to_string();
    let to: Arc<Path> = to.into();
    let report = run(target, manifest, jobs, progress, move |target, file, user| {
        let to = to.clone();
        async move {
            let installed = match user {
                Some(user) => to.join("users").join(format!("{}.db", user.as_hyphenated())),
                None => to.join("control.db"),
            };
            let part = PathBuf::from(format!("{}.part", installed.display()));
            let digested = target.download(&file.path, &part).await?;
            Ok::<_, BackupError>((Fetched { digested, copy: part, keep: true }, true))
        }
    })
    .await
    .map_err(|err| BackupError::Incomplete { data_dir, source: Box::new(err) })?;
    Ok(report)
}

/// A file read back: its digest (none when missing) and where its bytes are.
struct Fetched {
    digested: Option<Digested>,
    copy: PathBuf,
    /// Restore: an intact copy is moved into place (its name without `.part`).
    keep: bool,
}

async fn pick(target: &Target, at: Option<&str>) -> Result<Manifest, BackupError> {
    match at {
        Some(name) => load(target, name).await,
        None => latest(target)
            .await?
            .ok_or_else(|| BackupError::Usage(format!("there is no backup at {}", target.describe()))),
    }
}

/// The shared walk of check and restore: the control database, then the
/// users, `jobs` at a time. `fetch` reads a file back; the bool it returns
/// says whether the copy is scratch to remove after.
async fn run<F, Fut>(
    target: Arc<Target>,
    manifest: Manifest,
    jobs: NonZeroUsize,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
    fetch: F,
) -> Result<Report, BackupError>
where
    F: Fn(Arc<Target>, FileEntry, Option<Uuid>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(Fetched, bool), BackupError>> + Send,
{
    let started = Instant::now();
    let mut mismatches = Vec::new();
    let (fetched, scratch) = fetch(target.clone(), manifest.control.clone(), None).await?;
    match compare(&manifest.control, &fetched) {
        Some(problem) => {
            discard(&fetched.copy, fetched.keep || scratch).await;
            mismatches.push(Mismatch { user_id: None, path: manifest.control.path.clone(), problem });
        }
        None if fetched.keep => install(&fetched.copy).await?,
        None => {}
    }

    let total = manifest.users.len() as u64;
    let permits = Arc::new(Semaphore::new(jobs.get()));
    let mut tasks = JoinSet::new();
    for user in manifest.users.iter().cloned() {
        let (permits, target, fetch) = (permits.clone(), target.clone(), fetch.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let (fetched, scratch) = fetch(target, user.file.clone(), Some(user.user_id)).await?;
            let outcome = match compare(&user.file, &fetched) {
                Some(problem) => {
                    discard(&fetched.copy, fetched.keep || scratch).await;
                    Err(problem)
                }
                None => {
                    let verified = verify_copy(&fetched.copy, &user).await;
                    if scratch && !fetched.keep {
                        discard(&fetched.copy, true).await;
                    }
                    if fetched.keep {
                        // Intact bytes are installed even when their log does not verify:
                        // they are exactly what the server held, and the report says so.
                        install(&fetched.copy).await?;
                        open_restored(&fetched.copy, user.user_id).await?;
                    }
                    verified?
                }
            };
            Ok::<_, BackupError>((user, outcome))
        });
    }
    let (mut users, mut events, mut done) = (0u64, 0u64, 0u64);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        done += 1;
        progress(done, total);
        match joined {
            Ok(Ok((_, Ok(verified)))) => {
                users += 1;
                events += verified;
            }
            Ok(Ok((user, Err(problem)))) => {
                mismatches.push(Mismatch { user_id: Some(user.user_id), path: user.file.path, problem })
            }
            Ok(Err(err)) => {
                failure.get_or_insert(err);
            }
            Err(join) => {
                failure.get_or_insert(BackupError::io("a restore task failed", std::io::Error::other(join)));
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    mismatches.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Report {
        backup: manifest.name,
        target: target.describe(),
        users,
        events,
        mismatches,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Why a file read back is not the manifest's, if it is not.
fn compare(expected: &FileEntry, fetched: &Fetched) -> Option<String> {
    match &fetched.digested {
        None => Some("missing from the target".into()),
        Some(got) if got.size != expected.size || got.sha256 != expected.sha256 => Some(format!(
            "SHA-256 mismatch: {} bytes with SHA-256 {}, the manifest says {} bytes with {}",
            got.size, got.sha256, expected.size, expected.sha256
        )),
        Some(_) => None,
    }
}

/// Recomputes a copy's hash chain (read-only) and compares its head with
/// the manifest's: `Ok(events)`, or what is wrong.
async fn verify_copy(copy: &Path, user: &UserEntry) -> Result<Result<u64, String>, BackupError> {
    let (db, conn) = open_copy(copy, true).await?;
    let report = verify_log(&conn, &|_| {}).await;
    drop((conn, db));
    let report = match report {
        Ok(report) => report,
        Err(err) => return Ok(Err(format!("the copy does not read as a user database: {err}"))),
    };
    if let Some(broken) = &report.broken {
        return Ok(Err(format!("chain broken at seq {}: {broken}", broken.seq())));
    }
    let (seq, hash) = report.head;
    if seq != user.head_seq || hex::encode(hash) != user.head_hash {
        return Ok(Err(format!(
            "head is seq {seq} hash {}, the manifest says seq {} hash {}",
            hex::encode(hash),
            user.head_seq,
            user.head_hash
        )));
    }
    Ok(Ok(report.events))
}

/// Removes a copy that is scratch or not intact.
async fn discard(copy: &Path, remove: bool) {
    if remove {
        let _ = tokio::fs::remove_file(copy).await;
    }
}

/// Moves `<file>.part` to `<file>`.
async fn install(part: &Path) -> Result<(), BackupError> {
    let installed = part.with_extension("");
    tokio::fs::rename(part, &installed)
        .await
        .map_err(|err| BackupError::io(format!("installing {}", installed.display()), err))
}

/// Opens a restored user database as the server will: WAL mode back on,
/// any migration newer than the backup applied.
async fn open_restored(part: &Path, user: Uuid) -> Result<(), BackupError> {
    let installed = part.with_extension("");
    let Some(data_dir) = installed.parent().and_then(Path::parent) else {
        return Err(BackupError::Usage(format!("{}: not inside a DATA_DIR", installed.display())));
    };
    drop(UserDb::open(&Backend::local(data_dir), user, false).await?);
    Ok(())
}

/// A `DATA_DIR` to restore into: missing or empty, or emptied of its
/// databases with `force` (other files, such as a generated JWT secret, stay).
async fn prepare_data_dir(to: &Path, force: bool) -> Result<(), BackupError> {
    let to = to.to_path_buf();
    let context = format!("preparing {}", to.display());
    let refused = blocking(move || {
        let mut entries = match std::fs::read_dir(&to) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                crate::store::backend::make_private(&to, true)?;
                std::fs::create_dir_all(to.join("users"))?;
                return Ok(false);
            }
            Err(err) => return Err(err),
        };
        if entries.next().is_some() {
            if !force {
                return Ok(true);
            }
            for suffix in ["", "-wal", "-shm"] {
                match std::fs::remove_file(to.join(format!("control.db{suffix}"))) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
            }
            match std::fs::remove_dir_all(to.join("users")) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        crate::store::backend::make_private(&to, false)?;
        std::fs::create_dir_all(to.join("users"))?;
        Ok(false)
    })
    .await
    .map_err(|err| BackupError::io(context, err))?;
    if refused {
        return Err(BackupError::Usage(
            "the DATA_DIR to restore into is not empty: restore into an empty folder, or pass --force to replace \
             its databases"
                .into(),
        ));
    }
    Ok(())
}
