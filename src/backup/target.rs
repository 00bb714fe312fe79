//! Where backups go: a local folder, or S3-compatible object storage through
//! `object_store` (SigV4 signing, multipart uploads, retries). Both hold the
//! same keys: `backups/<name>.json` (the manifests) and `data/<name>/…` (the
//! database copies). Keys are made here or checked by [`super::manifest`]
//! before they reach a path: nothing read from a target names a file outside it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::BackupError;
use crate::config::backup::ObjectStorageConfig;

/// The folder of the manifests.
pub const MANIFESTS: &str = "backups";
/// The folder of the database copies.
pub const DATA: &str = "data";

/// Bytes read or buffered at a time when hashing, copying or uploading.
const CHUNK: usize = 1 << 20;
/// Parts of a multipart upload: 8 MiB each (S3 wants at least 5 MiB), two in flight.
const PART: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;

/// A file's size and SHA-256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    pub size: u64,
    pub sha256: String,
}

pub enum Target {
    Dir(PathBuf),
    Bucket { store: Arc<dyn ObjectStore>, prefix: String, url: String },
}

impl Target {
    /// `s3://bucket[/prefix]`, or a folder (created when missing). `retries`:
    /// attempts after the first for each request to object storage.
    pub fn parse(spec: &str, s3: &ObjectStorageConfig, retries: usize) -> Result<Self, BackupError> {
        let Some(rest) = spec.strip_prefix("s3://") else {
            if spec.is_empty() || spec.contains("://") {
                return Err(BackupError::Usage(format!(
                    "`{spec}` is neither a folder nor an s3://bucket/prefix target"
                )));
            }
            return Ok(Self::Dir(PathBuf::from(spec)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_owned();
        if bucket.is_empty() || prefix.split('/').any(|part| part == "." || part == "..") {
            return Err(BackupError::Usage(format!("`{spec}` is not of the form s3://bucket/prefix")));
        }
        let missing = s3.missing();
        if !missing.is_empty() {
            return Err(BackupError::Usage(format!("an s3:// target needs {} set", missing.join(" and "))));
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: retries,
            retry_timeout: Duration::from_secs(180),
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(s3.region.as_deref().unwrap_or("us-east-1"))
            .with_retry(retry);
        if let Some(key) = &s3.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &s3.secret_access_key {
            builder = builder.with_secret_access_key(String::from_utf8_lossy(secret.expose_secret()));
        }
        if let Some(token) = &s3.session_token {
            builder = builder.with_token(String::from_utf8_lossy(token.expose_secret()));
        }
        if let Some(endpoint) = &s3.endpoint_url {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|err| BackupError::Usage(format!("{spec}: {err}")))?;
        let url = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        Ok(Self::Bucket { store: Arc::new(store), prefix, url })
    }

    /// How reports name the target.
    pub fn describe(&self) -> String {
        match self {
            Self::Dir(root) => root.display().to_string(),
            Self::Bucket { url, .. } => url.clone(),
        }
    }

    /// Makes a folder target's root (a bucket must exist already).
    pub async fn prepare(&self) -> Result<(), BackupError> {
        if let Self::Dir(root) = self {
            for dir in [root.clone(), root.join(MANIFESTS), root.join(DATA)] {
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|err| BackupError::io(format!("creating {}", dir.display()), err))?;
            }
        }
        Ok(())
    }

    /// An exclusive hold for one backup (a lock file, so across processes):
    /// on a folder target, a second backup to it is refused, not
    /// interleaved; with object storage, a second backup of this `DATA_DIR`
    /// (whose staging folders it holds) is.
    pub fn lock(&self, data_dir: &Path) -> Result<std::fs::File, BackupError> {
        let (path, what) = match self {
            Self::Dir(root) => (root.join(".lock"), root.display().to_string()),
            Self::Bucket { .. } => (data_dir.join(".backup.lock"), format!("from {}", data_dir.display())),
        };
        let io = |err| BackupError::io(format!("locking {}", path.display()), err);
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(BackupError::Usage(format!("another backup is writing {what} now")))
            }
            Err(std::fs::TryLockError::Error(err)) => Err(io(err)),
        }
    }

    /// The folder staging folders are made in (see [`Self::staging`]).
    pub fn staging_parent(&self, data_dir: &Path) -> PathBuf {
        match self {
            Self::Dir(root) => root.clone(),
            Self::Bucket { .. } => data_dir.to_path_buf(),
        }
    }

    /// Where a snapshot is written before it is stored: inside a folder
    /// target (stored by a rename), otherwise in `DATA_DIR` (which has room
    /// for the databases it holds), removed when the backup ends.
    pub fn staging(&self, name: &str, data_dir: &Path) -> Result<tempfile::TempDir, BackupError> {
        let parent = self.staging_parent(data_dir);
        let what = if matches!(self, Self::Dir(_)) { "the target" } else { "DATA_DIR" };
        tempfile::Builder::new()
            .prefix(&format!(".staging-{name}-"))
            .tempdir_in(&parent)
            .map_err(|err| BackupError::io(format!("making a staging folder in {what} ({})", parent.display()), err))
    }

    fn object(&self, key: &str) -> ObjectPath {
        match self {
            Self::Bucket { prefix, .. } if !prefix.is_empty() => ObjectPath::from(format!("{prefix}/{key}")),
            _ => ObjectPath::from(key),
        }
    }

    fn remote_error(&self, what: &str, key: &str, err: object_store::Error) -> BackupError {
        BackupError::Target(format!("{what} {}/{key}: {err}", self.describe()))
    }

    /// The names of the backups whose manifest is written, oldest first.
    pub async fn backups(&self) -> Result<Vec<String>, BackupError> {
        let mut names: Vec<String> = self
            .list(MANIFESTS)
            .await?
            .into_iter()
            .filter_map(|key| key.strip_prefix("backups/")?.strip_suffix(".json").map(str::to_owned))
            .filter(|name| super::manifest::valid_name(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every key under `folder` (`backups` or `data`), relative to the target.
    pub async fn list(&self, folder: &str) -> Result<Vec<String>, BackupError> {
        match self {
            Self::Dir(root) => {
                let root = root.clone();
                let folder = folder.to_owned();
                blocking(move || {
                    let mut keys = Vec::new();
                    walk(&root, &root.join(&folder), &mut keys)?;
                    Ok(keys)
                })
                .await
                .map_err(|err| BackupError::io(format!("listing {}", self.describe()), err))
            }
            Self::Bucket { store, prefix, .. } => {
                let base = self.object(folder);
                let mut listing = store.list(Some(&base));
                let mut keys = Vec::new();
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|err| self.remote_error("listing", folder, err))?;
                    let full = meta.location.as_ref();
                    let key = if prefix.is_empty() {
                        Some(full)
                    } else {
                        full.strip_prefix(prefix.as_str()).and_then(|k| k.strip_prefix('/'))
                    };
                    if let Some(key) = key {
                        keys.push(key.to_owned());
                    }
                }
                Ok(keys)
            }
        }
    }

    /// A small object (a manifest), or `None` when it is not there.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        match self {
            Self::Dir(root) => match tokio::fs::read(root.join(key)).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(BackupError::io(format!("reading {}", root.join(key).display()), err)),
            },
            Self::Bucket { store, .. } => match store.get(&self.object(key)).await {
                Ok(got) => Ok(Some(got.bytes().await.map_err(|err| self.remote_error("reading", key, err))?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(self.remote_error("reading", key, err)),
            },
        }
    }

    /// Writes a small object whole (a manifest): a reader sees all of it or nothing.
    pub async fn write(&self, key: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
        match self {
            Self::Dir(root) => {
                let path = root.join(key);
                let io_path = path.clone();
                blocking(move || {
                    let dir = io_path.parent().unwrap_or(Path::new("."));
                    let mut file = tempfile::NamedTempFile::new_in(dir)?;
                    file.write_all(&bytes)?;
                    file.as_file().sync_all()?;
                    file.persist(&io_path).map_err(|err| err.error)?;
                    sync_dir(dir)
                })
                .await
                .map_err(|err| BackupError::io(format!("writing {}", path.display()), err))
            }
            Self::Bucket { store, .. } => {
                store
                    .put(&self.object(key), bytes.into())
                    .await
                    .map_err(|err| self.remote_error("writing", key, err))?;
                Ok(())
            }
        }
    }

    /// Stores a finished snapshot under `key`: renamed into a folder target
    /// (the staging folder is inside it), streamed to object storage.
    pub async fn store_file(&self, local: &Path, key: &str) -> Result<(), BackupError> {
        match self {
            Self::Dir(root) => {
                let (from, to) = (local.to_path_buf(), root.join(key));
                let io_to = to.clone();
                blocking(move || {
                    let dir = io_to.parent().unwrap_or(Path::new("."));
                    std::fs::create_dir_all(dir)?;
                    std::fs::File::open(&from)?.sync_all()?;
                    std::fs::rename(&from, &io_to)?;
                    sync_dir(dir)
                })
                .await
                .map_err(|err| BackupError::io(format!("storing {}", to.display()), err))
            }
            Self::Bucket { store, .. } => {
                let mut file = tokio::fs::File::open(local)
                    .await
                    .map_err(|err| BackupError::io(format!("reading {}", local.display()), err))?;
                let mut writer = BufWriter::with_capacity(store.clone(), self.object(key), PART)
                    .with_max_concurrency(PARTS_IN_FLIGHT);
                let failed =
                    |err: std::io::Error| BackupError::Target(format!("uploading {}/{key}: {err}", self.describe()));
                match tokio::io::copy(&mut file, &mut writer).await {
                    // A failed completion is not aborted (the writer is spent by then): the parts
                    // sent stay an incomplete multipart upload, which a bucket lifecycle rule expires.
                    Ok(_) => writer.shutdown().await.map_err(failed),
                    Err(err) => {
                        // Parts already sent are discarded, not left to linger.
                        let _ = writer.abort().await;
                        Err(failed(err))
                    }
                }
            }
        }
    }

    /// The size and SHA-256 of a stored file, read through; `None` when it is missing.
    pub async fn digest(&self, key: &str) -> Result<Option<Digested>, BackupError> {
        self.fetch(key, None).await
    }

    /// Copies a stored file to `to` (created or replaced) and returns the
    /// size and SHA-256 of what it copied; `None` when it is missing.
    pub async fn download(&self, key: &str, to: &Path) -> Result<Option<Digested>, BackupError> {
        self.fetch(key, Some(to)).await
    }

    async fn fetch(&self, key: &str, to: Option<&Path>) -> Result<Option<Digested>, BackupError> {
        let out = |to: &Path| {
            std::fs::File::create(to).map_err(|err| BackupError::io(format!("creating {}", to.display()), err))
        };
        match self {
            Self::Dir(root) => {
                let from = root.join(key);
                let mut sink = to.map(out).transpose()?;
                let io_from = from.clone();
                let result = blocking(move || {
                    let mut file = match std::fs::File::open(&io_from) {
                        Ok(file) => file,
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(err) => return Err(err),
                    };
                    let mut hasher = Hasher::default();
                    let mut buf = vec![0; CHUNK];
                    loop {
                        let read = file.read(&mut buf)?;
                        if read == 0 {
                            break;
                        }
                        hasher.update(&buf[..read]);
                        if let Some(sink) = sink.as_mut() {
                            sink.write_all(&buf[..read])?;
                        }
                    }
                    if let Some(sink) = sink {
                        sink.sync_all()?;
                    }
                    Ok(Some(hasher.finish()))
                })
                .await;
                result.map_err(|err| BackupError::io(format!("reading {}", from.display()), err))
            }
            Self::Bucket { store, .. } => {
                let got = match store.get(&self.object(key)).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(err) => return Err(self.remote_error("reading", key, err)),
                };
                let mut sink = match to {
                    Some(to) => Some(
                        tokio::fs::File::create(to)
                            .await
                            .map_err(|err| BackupError::io(format!("creating {}", to.display()), err))?,
                    ),
                    None => None,
                };
                let mut hasher = Hasher::default();
                let mut stream = got.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|err| self.remote_error("reading", key, err))?;
                    hasher.update(&chunk);
                    if let Some(sink) = sink.as_mut() {
                        sink.write_all(&chunk)
                            .await
                            .map_err(|err| BackupError::io("writing a downloaded file", err))?;
                    }
                }
                if let Some(sink) = sink {
                    sink.sync_all().await.map_err(|err| BackupError::io("writing a downloaded file", err))?;
                }
                Ok(Some(hasher.finish()))
            }
        }
    }

    /// The size of a stored file, or `None` when it is missing.
    pub async fn size_of(&self, key: &str) -> Result<Option<u64>, BackupError> {
        match self {
            Self::Dir(root) => match tokio::fs::metadata(root.join(key)).await {
                Ok(meta) => Ok(Some(meta.len())),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(BackupError::io(format!("reading {}", root.join(key).display()), err)),
            },
            Self::Bucket { store, .. } => match store.head(&self.object(key)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(self.remote_error("reading", key, err)),
            },
        }
    }

    /// Removes a key; one already gone is fine.
    pub async fn delete(&self, key: &str) -> Result<(), BackupError> {
        match self {
            Self::Dir(root) => match tokio::fs::remove_file(root.join(key)).await {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(BackupError::io(format!("removing {}", root.join(key).display()), err)),
            },
            Self::Bucket { store, .. } => match store.delete(&self.object(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(err) => Err(self.remote_error("removing", key, err)),
            },
        }
    }

    /// Removes the folders a pruned backup leaves empty (a folder target only).
    pub async fn tidy(&self, name: &str) {
        if let Self::Dir(root) = self {
            let dir = root.join(DATA).join(name);
            let _ = tokio::fs::remove_dir(dir.join("users")).await;
            let _ = tokio::fs::remove_dir(dir).await;
        }
    }

    /// The file behind a key on a folder target, to be read in place.
    pub fn local_file(&self, key: &str) -> Option<PathBuf> {
        match self {
            Self::Dir(root) => Some(root.join(key)),
            Self::Bucket { .. } => None,
        }
    }
}

/// The files under `dir`, as keys relative to `root` (`/`-separated).
fn walk(root: &Path, dir: &Path, keys: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, keys)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            let parts: Vec<_> =
                relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
            keys.push(parts.join("/"));
        }
    }
    Ok(())
}

/// A directory's entries made durable (a rename or a new file in it).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// SHA-256 and length of what went through it.
#[derive(Default)]
pub struct Hasher {
    sha: Sha256,
    size: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> Digested {
        Digested { size: self.size, sha256: hex::encode(self.sha.finalize()) }
    }
}

/// The size and SHA-256 of a local file.
pub async fn digest_file(path: &Path) -> Result<Digested, BackupError> {
    let io_path = path.to_path_buf();
    blocking(move || {
        let mut file = std::fs::File::open(&io_path)?;
        let mut hasher = Hasher::default();
        let mut buf = vec![0; CHUNK];
        loop {
            let read = file.read(&mut buf)?;
            if read == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..read]);
        }
    })
    .await
    .map_err(|err| BackupError::io(format!("reading {}", path.display()), err))
}

/// File work off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|join| Err(std::io::Error::other(join)))
}
