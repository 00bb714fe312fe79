//! `echolia`: the server, and the operator commands that work on its data.
//! This file only parses arguments and maps results to the exit status:
//! 0 success, 1 a difference or a broken chain (or a failure), 2 usage.

#![deny(unsafe_code)]

use std::io::BufWriter;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use echolia::app;
use echolia::cli::backup::{BackupArgs, ReadArgs};
use echolia::cli::{self, audit::AuditArgs, CliError, Job, Outcome, Storage, Target};
use echolia::clock::{parse_rfc3339, SystemClock};
use echolia::config::Config;
use echolia::ops::telemetry;
use echolia::state::AppState;

#[derive(Debug, Parser)]
#[command(name = "echolia", version, about = "Echolia Sync: zero-knowledge sync backend")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the API server (the default).
    Serve,
    #[command(flatten)]
    Operate(Operation),
}

/// The operator commands: same configuration as the server, safe while it runs.
#[derive(Debug, Subcommand)]
enum Operation {
    /// Rebuild every view of a user from its log and swap them in atomically (safe while the server runs).
    Replay {
        #[command(flatten)]
        target: TargetArgs,
        /// Rebuild in memory and compare with the stored views instead; exit 1 on any difference.
        #[arg(long)]
        check: bool,
        /// Users worked on at once with --all.
        #[arg(long, value_name = "N", default_value_t = default_jobs())]
        jobs: NonZeroUsize,
    },
    /// Recompute the hash chain and seq continuity of a user's log; exit 1 naming the first broken seq.
    Verify {
        #[command(flatten)]
        target: TargetArgs,
        /// Users worked on at once with --all.
        #[arg(long, value_name = "N", default_value_t = default_jobs())]
        jobs: NonZeroUsize,
    },
    /// A user's device history: time, device, action, aggregate, result.
    Audit {
        /// The user, by id.
        #[arg(long, value_name = "ID", value_parser = parse_id)]
        user: Uuid,
        /// Only what this device did.
        #[arg(long, value_name = "ID", value_parser = parse_id)]
        device: Option<Uuid>,
        /// Only events received at or after this time (RFC 3339, or a date: midnight UTC).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A user's whole log as NDJSON on stdout, oldest first (as GET /account/export).
    Export {
        /// The user, by id.
        #[arg(long, value_name = "ID", value_parser = parse_id)]
        user: Uuid,
    },
    /// Apply pending migrations to the control database and every user database.
    Migrate,
    /// Back up the control database and every user database (consistent snapshots, safe while the server
    /// runs) to a folder or s3://bucket/prefix, incrementally; or with --check, verify a backup.
    Backup {
        #[command(flatten)]
        mode: BackupMode,
        /// With --to: keep only the newest N backups at the target (files a kept backup needs always stay).
        #[arg(long, value_name = "N")]
        keep: Option<NonZeroUsize>,
        /// With --to: copy every user, even those unchanged since the previous backup at the target (a
        /// backup that shares no file with earlier ones, e.g. after --check found a damaged copy).
        #[arg(long)]
        full: bool,
        /// With --check: the backup to verify, by name (the newest by default).
        #[arg(long, value_name = "BACKUP")]
        at: Option<String>,
        #[command(flatten)]
        common: BackupCommon,
    },
    /// Rebuild a DATA_DIR from a backup: every file's SHA-256 checked, every log's hash chain verified.
    Restore {
        /// The folder or s3://bucket/prefix the backups are in.
        #[arg(long, value_name = "TARGET")]
        from: String,
        /// The backup to restore, by name (the newest by default).
        #[arg(long, value_name = "BACKUP")]
        at: Option<String>,
        /// The DATA_DIR to rebuild: missing or empty, unless --force.
        #[arg(long, value_name = "DATA_DIR")]
        to: PathBuf,
        /// Replace the databases of a DATA_DIR that is not empty (deleted before the first download: restore
        /// into a new folder unless the old one is lost anyway).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: BackupCommon,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct BackupMode {
    /// The folder or s3://bucket/prefix to back up to.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,
    /// Verify a backup at this folder or s3://bucket/prefix without restoring it; exit 1 on any mismatch.
    #[arg(long, value_name = "TARGET")]
    check: Option<String>,
}

#[derive(Debug, Args)]
struct BackupCommon {
    /// A JSON summary on stdout instead of lines.
    #[arg(long)]
    json: bool,
    /// Databases worked on at once.
    #[arg(long, value_name = "N", default_value_t = default_jobs())]
    jobs: NonZeroUsize,
    /// Retries of each request to object storage (with backoff) before the run fails.
    #[arg(long, value_name = "N", default_value_t = 10)]
    retries: usize,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// One user, by id.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    user: Option<Uuid>,
    /// Every user of the control database.
    #[arg(long)]
    all: bool,
}

impl TargetArgs {
    fn target(&self) -> Target {
        match self.user {
            Some(user) => Target::User(user),
            None => Target::All,
        }
    }
}

fn default_jobs() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Ids are parsed before they reach a path.
fn parse_id(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|_| "not an id: expected a UUID such as 6f1c2a9e-3b4d-4c5e-8f70-112233445566".into())
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Some(time) = parse_rfc3339(text) {
        return Ok(time);
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc())
        .ok_or_else(|| "expected an RFC 3339 time (2026-11-29T10:00:00Z) or a date (2026-11-29)".into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("echolia: {err}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    match command {
        Command::Serve => telemetry::init(config.log_format),
        Command::Operate(_) => cli::init_logs(config.log_format),
    }
    echolia::store::memory::limit_malloc_arenas();
    echolia::store::memory::restrict_new_files();
    if let Err(err) = echolia::store::backend::make_private(&config.data_dir, matches!(command, Command::Serve)) {
        eprintln!("echolia: cannot make DATA_DIR {} private (0700): {err}", config.data_dir.display());
        return ExitCode::FAILURE;
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.worker_threads.get()).enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("echolia: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Serve => runtime.block_on(serve(config)),
        Command::Operate(operation) => match runtime.block_on(operate(config, operation)) {
            Ok(Outcome::Success) => ExitCode::SUCCESS,
            Ok(Outcome::Found) => ExitCode::from(1),
            Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("echolia: {err}");
                ExitCode::from(err.exit_code())
            }
        },
    }
}

async fn operate(config: Config, operation: Operation) -> Result<Outcome, CliError> {
    // Backups read their target (and restore writes its own DATA_DIR) before anything else is opened.
    let operation = match operation {
        Operation::Backup { mode, keep, full, at, common } => {
            let BackupCommon { json, jobs, retries } = common;
            return match (mode.to, mode.check) {
                (Some(_), _) if at.is_some() => Err(CliError::Usage("--at goes with --check, not --to".into())),
                (Some(to), _) => {
                    cli::backup::backup(&config, &BackupArgs { to, keep, full, jobs, retries, json }).await
                }
                (None, Some(_)) if keep.is_some() || full => {
                    Err(CliError::Usage("--keep and --full go with --to, not --check".into()))
                }
                (None, Some(from)) => cli::backup::check(&config, &ReadArgs { from, at, jobs, retries, json }).await,
                (None, None) => Err(CliError::Usage("backup needs --to <target> or --check <target>".into())),
            };
        }
        Operation::Restore { from, at, to, force, common } => {
            let BackupCommon { json, jobs, retries } = common;
            return cli::backup::restore(&config, &ReadArgs { from, at, jobs, retries, json }, &to, force).await;
        }
        other => other,
    };
    let storage = Storage::open(&config)?;
    match operation {
        Operation::Replay { target, check, jobs } => {
            let job = if check { Job::Check } else { Job::Replay };
            cli::run_users(&storage, target.target(), jobs.get(), job).await
        }
        Operation::Verify { target, jobs } => cli::run_users(&storage, target.target(), jobs.get(), Job::Verify).await,
        Operation::Audit { user, device, since, json } => {
            let mut out = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
            cli::audit::run(&storage, &AuditArgs { user, device, since, json }, &mut out).await
        }
        Operation::Export { user } => {
            let mut out = BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
            cli::export::run(&storage, user, &mut out).await
        }
        Operation::Migrate => cli::migrate::run(&storage).await,
        Operation::Backup { .. } | Operation::Restore { .. } => Err(CliError::Usage("handled above".into())),
    }
}

/// Raises the open-files limit, warning when it is still short of what
/// `MAX_CONNECTIONS` and `MAX_OPEN_DATABASES` may hold (three files a database:
/// it, its WAL and its shared memory).
fn raise_open_files_limit(config: &Config) {
    let wanted = config.max_connections.get() as u64 + config.max_open_databases.get() as u64 * 3 + 64;
    match echolia::http::conn::raise_open_files_limit() {
        Ok(limit) if limit < wanted => tracing::warn!(
            open_files_limit = limit,
            wanted,
            "the open-files limit is below MAX_CONNECTIONS + 3 x MAX_OPEN_DATABASES: raise it (LimitNOFILE for \
             systemd, ulimits: nofile for compose) or lower those"
        ),
        Ok(limit) => tracing::info!(open_files_limit = limit, "open-files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-files limit"),
    }
}

async fn serve(config: Config) -> ExitCode {
    raise_open_files_limit(&config);
    let state = match AppState::build(config, Arc::new(SystemClock)).await {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            eprintln!("echolia: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let listeners = match app::Listeners::bind(&state.config).await {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!("echolia: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        addr = %state.config.bind_addr,
        metrics_addr = %state.config.metrics_addr,
        environment = ?state.config.environment,
        data_dir = %state.config.data_dir.display(),
        "echolia listening"
    );
    match app::serve(listeners, state, app::shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "server error");
            ExitCode::FAILURE
        }
    }
}
