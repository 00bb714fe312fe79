//! A backup's manifest, `backups/<name>.json`: written last, so a backup
//! counts only once every file it names is stored. For each file its size
//! and SHA-256; for each user, also the head of its log (seq and hash) as the
//! copy holds it, and a digest of its state outside the log.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::target::{DATA, MANIFESTS};
use super::BackupError;

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The backup's name: its start time, `YYYYMMDDTHHMMSS.mmmZ` (UTC), so names sort by time.
    pub name: String,
    pub started_at: String,
    pub finished_at: String,
    /// The `echolia` version that wrote it.
    pub version: String,
    pub control: FileEntry,
    pub users: Vec<UserEntry>,
    /// Users of the control database's directory whose database was gone
    /// when the backup reached them (deleted accounts meanwhile).
    #[serde(default)]
    pub missing: Vec<Uuid>,
}

/// A stored file: its key (which may belong to an earlier backup), size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    pub user_id: Uuid,
    pub head_seq: u64,
    /// Hex of the log's last hash (all zeros for an empty log).
    pub head_hash: String,
    /// SHA-256 of what the database holds besides the log and its views
    /// (refresh tokens, sessions, key envelopes, usage): with the head, what
    /// decides whether a later backup may point here instead of copying.
    pub state_sha256: String,
    #[serde(flatten)]
    pub file: FileEntry,
}

impl Manifest {
    pub fn key(name: &str) -> String {
        format!("{MANIFESTS}/{name}.json")
    }

    /// Every file the backup needs, the control database first.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        std::iter::once(&self.control).chain(self.users.iter().map(|user| &user.file))
    }

    /// Events the backup holds (the sum of the heads).
    pub fn events(&self) -> u64 {
        self.users.iter().map(|user| user.head_seq).sum()
    }

    /// Reads and checks a manifest: its format, name, and that every path
    /// is one a backup writes (so none leads outside the target or the
    /// restored `DATA_DIR`).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Self, BackupError> {
        let bad = |why: String| BackupError::Manifest(format!("backup {name}: {why}"));
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|err| bad(format!("not a manifest: {err}")))?;
        if manifest.format != FORMAT {
            return Err(bad(format!("format {} is not the {FORMAT} this build reads", manifest.format)));
        }
        if manifest.name != name {
            return Err(bad(format!("it names itself {}", manifest.name)));
        }
        if parse_control_key(&manifest.control.path).is_none() {
            return Err(bad(format!("`{}` is not a control database copy", manifest.control.path)));
        }
        let mut seen = std::collections::HashSet::new();
        for user in &manifest.users {
            // Two entries for one user would be restored into one file at once.
            if !seen.insert(user.user_id) {
                return Err(bad(format!("user {} is listed twice", user.user_id)));
            }
            if parse_user_key(&user.file.path) != Some(user.user_id) {
                return Err(bad(format!("`{}` is not a copy of user {}", user.file.path, user.user_id)));
            }
        }
        for file in manifest.files() {
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("`{}`: `{}` is not a SHA-256", file.path, file.sha256)));
            }
        }
        Ok(manifest)
    }
}

/// The key of a backup's copy of the control database.
pub fn control_key(name: &str) -> String {
    format!("{DATA}/{name}/control.db")
}

/// The key of a backup's copy of a user's database.
pub fn user_key(name: &str, user: Uuid) -> String {
    format!("{DATA}/{name}/users/{}.db", user.as_hyphenated())
}

/// The backup a `data/<name>/…` key belongs to.
pub fn owner(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(DATA)?.strip_prefix('/')?;
    let (name, _) = rest.split_once('/')?;
    valid_name(name).then_some(name)
}

fn parse_control_key(key: &str) -> Option<&str> {
    let name = owner(key)?;
    (key == control_key(name)).then_some(name)
}

fn parse_user_key(key: &str) -> Option<Uuid> {
    let name = owner(key)?;
    let file = key.strip_prefix(&format!("{DATA}/{name}/users/"))?.strip_suffix(".db")?;
    let user = Uuid::parse_str(file).ok()?;
    (user.as_hyphenated().to_string() == file).then_some(user)
}

/// A backup name exactly as [`name_at`] makes it.
pub fn valid_name(name: &str) -> bool {
    name.len() == "20261207T050000.000Z".len()
        && chrono::NaiveDateTime::parse_from_str(name, "%Y%m%dT%H%M%S%.3fZ")
            .is_ok_and(|time| name_at(time.and_utc()) == name)
}

/// The name of a backup started at `time`.
pub fn name_at(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let user = Uuid::new_v4();
        let file = |path: String| FileEntry { path, size: 1, sha256: "ab".repeat(32) };
        Manifest {
            format: FORMAT,
            name: "20261207T050000.000Z".into(),
            started_at: String::new(),
            finished_at: String::new(),
            version: String::new(),
            control: file(control_key("20261207T050000.000Z")),
            users: vec![UserEntry {
                user_id: user,
                head_seq: 3,
                head_hash: String::new(),
                state_sha256: String::new(),
                file: file(user_key("20261206T050000.000Z", user)),
            }],
            missing: vec![],
        }
    }

    #[test]
    fn a_manifest_round_trips_and_its_paths_are_checked() {
        let good = manifest();
        let bytes = serde_json::to_vec(&good).unwrap();
        assert_eq!(Manifest::parse(&good.name, &bytes).unwrap(), good);
        assert!(Manifest::parse("20261208T050000.000Z", &bytes).is_err(), "a manifest under another name");

        for path in ["data/x/../../etc/passwd", "/etc/passwd", "data/20261207T050000.000Z/users/../control.db"] {
            let mut bad = good.clone();
            bad.users[0].file.path = path.into();
            let bytes = serde_json::to_vec(&bad).unwrap();
            assert!(Manifest::parse(&bad.name, &bytes).is_err(), "{path}");
        }
        let mut twice = good.clone();
        twice.users.push(twice.users[0].clone());
        assert!(Manifest::parse(&good.name, &serde_json::to_vec(&twice).unwrap()).is_err(), "a user listed twice");
        let mut control = good.clone();
        control.control.path = "/etc/passwd".into();
        assert!(Manifest::parse(&good.name, &serde_json::to_vec(&control).unwrap()).is_err(), "an absolute path");
        let mut other_user = good.clone();
        other_user.users[0].file.path = user_key(&good.name, Uuid::new_v4());
        assert!(Manifest::parse(&good.name, &serde_json::to_vec(&other_user).unwrap()).is_err());
    }

    #[test]
    fn names_sort_by_time_and_keys_name_their_backup() {
        let early = name_at(chrono::DateTime::from_timestamp(1_000_000_000, 5_000_000).unwrap());
        let late = name_at(chrono::DateTime::from_timestamp(1_000_000_001, 0).unwrap());
        assert_eq!(early, "20010909T014640.005Z");
        assert!(early < late && valid_name(&early));
        assert_eq!(owner(&user_key(&early, Uuid::nil())), Some(early.as_str()));
        assert_eq!(owner("data/../x"), None);
        for name in ["..", "....................", "20261207T050000.000", "20261207T050000Z"] {
            assert!(!valid_name(name), "{name}");
        }
    }
}
