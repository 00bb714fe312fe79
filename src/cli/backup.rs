//! `echolia backup --to <target> [--keep <n>]`, `echolia backup --check
//! <target> [--at <backup>]` and `echolia restore --from <target> [--at
//! <backup>] --to <data_dir> [--force]`: the work is [`crate::backup`]; this
//! checks the backend, draws progress and formats the reports.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::progress::Progress;
use super::{CliError, Outcome, Storage};
use crate::backup::restore::{self, Report};
use crate::backup::snapshot::{self, BackupOptions, BackupSummary, Source};
use crate::backup::{BackupError, Target};
use crate::config::{BackendKind, Config};
use crate::store::Backend;

impl From<BackupError> for CliError {
    fn from(err: BackupError) -> Self {
        match err {
            BackupError::Usage(message) => Self::Usage(message),
            BackupError::Store(err) => err.into(),
            other => Self::Backup(other.to_string()),
        }
    }
}

/// Why `backup` refuses a remote backend: its databases are not files here.
pub fn remote_refusal(backend: &str) -> String {
    format!(
        "echolia backup copies the database files of the local backend; with DATABASE_BACKEND={backend} the databases \
         live on a libSQL server: use its own point-in-time recovery (sqld: its snapshots and bottomless \
         replication; Turso: point-in-time restore with `turso db create --from-db <db> --timestamp <time>`)"
    )
}

pub struct BackupArgs {
    pub to: String,
    pub keep: Option<NonZeroUsize>,
    pub full: bool,
    pub jobs: NonZeroUsize,
    pub retries: usize,
    pub json: bool,
}

/// `backup` works on the local backend's files only: any other backend is
/// refused before anything is opened.
pub fn require_local(backend: &BackendKind) -> Result<(), CliError> {
    match backend {
        BackendKind::Local => Ok(()),
        BackendKind::Sqld(_) => Err(CliError::Usage(remote_refusal("sqld"))),
        BackendKind::Turso(_) => Err(CliError::Usage(remote_refusal("turso"))),
    }
}

pub async fn backup(config: &Config, args: &BackupArgs) -> Result<Outcome, CliError> {
    require_local(&config.database_backend)?;
    let storage = Storage::open(config)?;
    let local = match &storage.backend {
        Backend::Local(local) => local.clone(),
        Backend::Sqld(_) => return Err(CliError::Usage(remote_refusal("sqld"))),
        Backend::Turso(_) => return Err(CliError::Usage(remote_refusal("turso"))),
    };
    // Refuses a directory that is not a data directory, as the other commands do.
    drop(storage.control(false).await?);
    let target = Arc::new(Target::parse(&args.to, &config.object_storage, args.retries)?);
    let source = Source { control: local.control_path(), data_dir: local.data_dir(), users: storage.users.clone() };
    let progress = LazyProgress::new(format!("backup to {}", target.describe()));
    let summary = snapshot::backup(
        &source,
        target,
        &BackupOptions { jobs: args.jobs, keep: args.keep, full: args.full },
        &|done, total| progress.set(done, total),
    )
    .await;
    progress.finish();
    let summary = summary?;
    if args.json {
        print_json(&summary)?;
    } else {
        println!("{}", describe_backup(&summary));
    }
    Ok(Outcome::Success)
}

fn describe_backup(summary: &BackupSummary) -> String {
    let pruned = if summary.pruned.is_empty() {
        String::new()
    } else {
        format!("; pruned {} backups ({} files removed)", summary.pruned.len(), summary.files_removed)
    };
    format!(
        "backup {} to {}: {} users ({} copied, {} unchanged, {} missing), {} events, {} of {} bytes stored, in {:.2} s{pruned}",
        summary.name,
        summary.target,
        summary.users,
        summary.copied,
        summary.unchanged,
        summary.missing,
        summary.events,
        summary.bytes_copied,
        summary.bytes_total,
        summary.seconds,
    )
}

pub struct ReadArgs {
    pub from: String,
    pub at: Option<String>,
    pub jobs: NonZeroUsize,
    pub retries: usize,
    pub json: bool,
}

/// `backup --check`.
pub async fn check(config: &Config, args: &ReadArgs) -> Result<Outcome, CliError> {
    let target = Arc::new(Target::parse(&args.from, &config.object_storage, args.retries)?);
    let progress = LazyProgress::new(format!("check {}", target.describe()));
    let report = restore::check(target, args.at.as_deref(), args.jobs, &|done, total| progress.set(done, total)).await;
    progress.finish();
    report_outcome("check", &report?, args.json, None)
}

/// `restore`.
pub async fn restore(config: &Config, args: &ReadArgs, to: &Path, force: bool) -> Result<Outcome, CliError> {
    let target = Arc::new(Target::parse(&args.from, &config.object_storage, args.retries)?);
    let progress = LazyProgress::new(format!("restore from {}", target.describe()));
    let report =
        restore::restore(target, args.at.as_deref(), to, force, args.jobs, &|done, total| progress.set(done, total))
            .await;
    progress.finish();
    report_outcome("restore", &report?, args.json, Some(to))
}

fn report_outcome(what: &str, report: &Report, json: bool, to: Option<&Path>) -> Result<Outcome, CliError> {
    if let (Some(to), false) = (to, report.mismatches.is_empty()) {
        eprintln!(
            "{} lacks the mismatched files: do not start a server on it; restore another backup (--at) with --force",
            to.display()
        );
    }
    if json {
        print_json(report)?;
    } else {
        for mismatch in &report.mismatches {
            let whose = mismatch.user_id.map_or("control database".to_owned(), |user| format!("user {user}"));
            println!("{whose}: MISMATCH in {}: {}", mismatch.path, mismatch.problem);
        }
        let into = to.map(|to| format!(" into {}", to.display())).unwrap_or_default();
        println!(
            "{what} of backup {} from {}{into}: {} users, {} events verified; {} mismatches, in {:.2} s",
            report.backup,
            report.target,
            report.users,
            report.events,
            report.mismatches.len(),
            report.seconds
        );
    }
    Ok(if report.mismatches.is_empty() { Outcome::Success } else { Outcome::Found })
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let line = serde_json::to_string(value).map_err(|err| CliError::Backup(err.to_string()))?;
    println!("{line}");
    Ok(())
}

/// A bar of users, made once the number of users is known.
struct LazyProgress {
    label: String,
    bar: OnceLock<Progress>,
}

impl LazyProgress {
    fn new(label: String) -> Self {
        Self { label, bar: OnceLock::new() }
    }

    fn set(&self, done: u64, total: u64) {
        self.bar.get_or_init(|| Progress::new(self.label.clone(), total, "users")).set(done);
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_backend_is_refused_with_the_way_to_its_own_recovery() {
        assert!(require_local(&BackendKind::Local).is_ok());
        let message = remote_refusal("sqld");
        assert!(message.contains("DATABASE_BACKEND=sqld") && message.contains("point-in-time"), "{message}");
    }
}
