//! The operator commands: `echolia replay | verify | audit | export | migrate |
//! backup | restore`.
//!
//! They read the same configuration and open the same storage as the server,
//! and are safe while it runs (reads use snapshots; writes take the user's
//! write transaction). Results go to stdout, progress and errors to stderr.
//! `main.rs` parses arguments and turns what these return into the exit
//! status: 0 fine, 1 a check found a difference or a broken chain (or storage
//! failed), 2 usage (a bad or unknown id, a missing `DATA_DIR`).

pub mod audit;
pub mod backup;
pub mod export;
pub mod migrate;
pub mod progress;
pub mod replay;
pub mod verify;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::{BackendKind, Config, LogFormat};
use crate::events::read_tip;
use crate::replay::sorted_log;
use crate::store::{Backend, ControlDb, StoreError, StoreResult, UserDatabases, UserDb};
use progress::Progress;

/// Which users a command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(Uuid),
    /// Every user of the control database's directory.
    All,
}

/// How a command that ran to its end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Success,
    /// A difference, a broken chain, or a user that failed: exit status 1.
    Found,
}

/// Why a command could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments or the configuration name something that is not there: exit status 2.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("{context}: {source}")]
    Io { context: &'static str, source: std::io::Error },
    /// A backup, restore or check that could not run to its end.
    #[error("{0}")]
    Backup(String),
}

impl From<StoreError> for CliError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::UserNotFound(id) => Self::Usage(format!("unknown user {id}: there is no database for it")),
            other => Self::Store(other),
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Whoever read stdout went away (`| head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub fn stdout(source: std::io::Error) -> Self {
        Self::Io { context: "writing to stdout", source }
    }
}

/// Logs of the operator commands: on stderr (stdout carries results, e.g.
/// NDJSON), warnings and errors unless `RUST_LOG` says otherwise.
pub fn init_logs(format: LogFormat) {
    let filter = crate::ops::telemetry::filter_or("warn");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    let _ = installed;
}

/// Storage opened as the server opens it.
pub struct Storage {
    pub backend: Backend,
    pub users: Arc<UserDatabases>,
}

impl Storage {
    /// A missing `DATA_DIR` is a usage error: the server would create
    /// `./data`, but an operator command must not invent an empty data
    /// directory and then report it clean.
    pub fn open(config: &Config) -> Result<Self, CliError> {
        let backend = match &config.database_backend {
            BackendKind::Local => {
                if !config.data_dir.is_dir() {
                    return Err(CliError::Usage(format!(
                        "DATA_DIR `{}` does not exist or is not a directory",
                        config.data_dir.display()
                    )));
                }
                Backend::local(&config.data_dir)
            }
            BackendKind::Sqld(_) | BackendKind::Turso(_) => {
                let http = reqwest::Client::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .build()
                    .map_err(|err| CliError::Usage(format!("the HTTP client cannot start: {err}")))?;
                Backend::from_config(config, &http)?
            }
        };
        let users = Arc::new(
            UserDatabases::new(backend.clone(), config.max_open_databases)
                .with_id_index_budget(config.id_index_max_events)
                .with_replicas(crate::store::replica::Replicas::from_config(config)?),
        );
        Ok(Self { backend, users })
    }

    /// The control database. Unless `create`, it must exist already: a
    /// directory without one is not a data directory.
    pub async fn control(&self, create: bool) -> Result<ControlDb, CliError> {
        match &self.backend {
            Backend::Local(local) if !create && !local.control_path().is_file() => {
                return Err(CliError::Usage(format!(
                    "DATA_DIR `{}` holds no control database (control.db): is it the right directory?",
                    local.data_dir().display()
                )))
            }
            Backend::Local(_) | Backend::Sqld(_) | Backend::Turso(_) => {}
        }
        Ok(ControlDb::open(&self.backend).await?)
    }

    /// The database of one user; an unknown user is a usage error.
    pub async fn user(&self, user: Uuid) -> Result<Arc<UserDb>, CliError> {
        Ok(self.users.get(user).await?)
    }

    /// The users a target names.
    pub async fn user_ids(&self, target: Target) -> Result<Vec<Uuid>, CliError> {
        match target {
            Target::User(user) => Ok(vec![user]),
            Target::All => Ok(self.control(false).await?.user_ids().await?),
        }
    }
}

/// The per-user work of `replay`, `replay --check` and `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Replay,
    Check,
    Verify,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Check => "check",
            Self::Verify => "verify",
        }
    }
}

/// What a job did for one user.
#[derive(Debug, Clone)]
pub struct Done {
    /// The result, for stdout.
    pub line: String,
    /// A difference or a broken chain.
    pub found: bool,
    /// Events read.
    pub events: u64,
}

/// `scanners`: threads that read the log of one replay or check.
async fn run_job(
    job: Job,
    user: Uuid,
    db: &Arc<UserDb>,
    scanners: u64,
    progress: &crate::replay::OnProgress<'_>,
) -> StoreResult<Done> {
    match job {
        Job::Replay => replay::rebuild_one(user, db, scanners, progress).await,
        Job::Check => replay::check_one(user, db, scanners, progress).await,
        Job::Verify => verify::verify_one(user, db, progress).await,
    }
}

/// Runs `job` for the users of `target`: one with a progress bar of its
/// events, or all of them, `jobs` at a time, with a bar of users and a
/// summary line at the end.
pub async fn run_users(storage: &Storage, target: Target, jobs: usize, job: Job) -> Result<Outcome, CliError> {
    let started = Instant::now();
    if let Target::User(user) = target {
        let db = storage.user(user).await?;
        let head = read_tip(&*db.read().await?).await?.seq;
        let progress = Progress::new(format!("{} {user}", job.name()), head, "events");
        let done = run_job(job, user, &db, sorted_log::scanners(), &|events| progress.set(events)).await;
        progress.finish();
        let done = done?;
        println!("{}", done.line);
        return Ok(if done.found { Outcome::Found } else { Outcome::Success });
    }

    let users = storage.user_ids(target).await?;
    let progress = Progress::new(format!("{} --all", job.name()), users.len() as u64, "users");
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    // Users run side by side: the cores are shared out between them.
    let scanners = sorted_log::scanners_for(jobs);
    let mut tasks = JoinSet::new();
    for user in users.iter().copied() {
        let (dbs, permits) = (storage.users.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let done = match dbs.get(user).await {
                Ok(db) => run_job(job, user, &db, scanners, &|_| {}).await,
                Err(err) => Err(err),
            };
            (user, done)
        });
    }
    let (mut finished, mut events, mut found, mut failed, mut skipped) = (0u64, 0u64, 0u64, 0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        finished += 1;
        progress.set(finished);
        match joined {
            Ok((_, Ok(done))) => {
                events += done.events;
                found += u64::from(done.found);
                progress.println(&done.line);
            }
            Ok((user, Err(StoreError::UserNotFound(_)))) => {
                skipped += 1;
                progress.println(&format!("user {user}: in the directory but without a database (skipped)"));
            }
            Ok((user, Err(err))) => {
                failed += 1;
                progress.println(&format!("user {user}: FAILED: {err}"));
            }
            Err(err) => {
                failed += 1;
                progress.println(&format!("a {} task failed: {err}", job.name()));
            }
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    let what = match job {
        Job::Replay => "replayed",
        Job::Check => "checked",
        Job::Verify => "verified",
    };
    let problem = match job {
        Job::Replay => String::new(),
        Job::Check => format!("{found} with views that differ, "),
        Job::Verify => format!("{found} with a broken chain, "),
    };
    println!(
        "{} --all: {what} {} users, {events} events in {secs:.2} s ({:.0} events/s); {problem}{failed} failed, {skipped} skipped",
        job.name(),
        users.len(),
        per_second(events, secs),
    );
    Ok(if found + failed > 0 { Outcome::Found } else { Outcome::Success })
}

fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}
