//! The Oblivious HTTP gateway's key (RFC 9458): X25519 HPKE with
//! HKDF-SHA256 and AES-128-GCM or ChaCha20-Poly1305, derived from a 32-byte
//! seed that comes from `OHTTP_KEY_SEED`/`OHTTP_KEY_ID` or from
//! `DATA_DIR/ohttp_key` (generated on first start, mode 0600).
//!
//! Rotation: rename `ohttp_key` to `ohttp_key.previous` and restart; the new
//! key takes the previous id + 1, so clients holding the old configuration
//! get the RFC's key error and fetch `GET /llm/ohttp-keys` again. (With
//! `OHTTP_KEY_SEED`, set a new seed and a new `OHTTP_KEY_ID`.)

use std::io::Write;
use std::path::Path;

use ohttp::hpke::{Aead, Kdf, Kem};
use ohttp::{KeyConfig, SymmetricSuite};
use rand::RngCore;
use secrecy::ExposeSecret;

use crate::config::llm::OhttpKeySource;
use crate::store::{StoreError, StoreResult};

pub const FILE_NAME: &str = "ohttp_key";
pub const PREVIOUS_FILE_NAME: &str = "ohttp_key.previous";

/// The gateway's key, and its configuration as served (`application/ohttp-keys`).
pub struct OhttpKey {
    pub server: ohttp::Server,
    pub key_id: u8,
    /// `KeyConfig::encode_list` of the one current key.
    pub encoded_list: Vec<u8>,
}

fn suites() -> Vec<SymmetricSuite> {
    vec![
        SymmetricSuite::new(Kdf::HkdfSha256, Aead::Aes128Gcm),
        SymmetricSuite::new(Kdf::HkdfSha256, Aead::ChaCha20Poly1305),
    ]
}

impl OhttpKey {
    pub fn from_seed(key_id: u8, seed: &[u8]) -> StoreResult<Self> {
        let broken = |err: ohttp::Error| StoreError::Corrupt(format!("the OHTTP key cannot be derived: {err}"));
        let config = KeyConfig::derive(key_id, Kem::X25519Sha256, suites(), seed).map_err(broken)?;
        let encoded_list = KeyConfig::encode_list(&[&config]).map_err(broken)?;
        Ok(Self { server: ohttp::Server::new(config).map_err(broken)?, key_id, encoded_list })
    }

    pub fn load(source: &OhttpKeySource, data_dir: &Path) -> StoreResult<Self> {
        match source {
            OhttpKeySource::Configured { key_id, seed } => Self::from_seed(*key_id, seed.expose_secret()),
            OhttpKeySource::DataDir => {
                let (key_id, seed) = load_or_create(data_dir)?;
                Self::from_seed(key_id, &seed)
            }
        }
    }
}

/// `<key id> <seed hex>` on one line.
fn parse(text: &str) -> Option<(u8, Vec<u8>)> {
    let (id, seed) = text.trim().split_once(' ')?;
    let seed = hex::decode(seed.trim()).ok().filter(|seed| seed.len() == 32)?;
    Some((id.parse().ok()?, seed))
}

fn load_or_create(data_dir: &Path) -> StoreResult<(u8, Vec<u8>)> {
    std::fs::create_dir_all(data_dir).map_err(|err| StoreError::io(format!("creating {}", data_dir.display()), err))?;
    let path = data_dir.join(FILE_NAME);
    let corrupt = |path: &Path| {
        StoreError::Corrupt(format!(
            "{} is not `<key id> <64 hex digits>`; move it away to generate a new key",
            path.display()
        ))
    };
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|err| StoreError::io(format!("reading {}", path.display()), err))
    };
    if path.exists() {
        return parse(&read(&path)?).ok_or_else(|| corrupt(&path));
    }
    let previous = data_dir.join(PREVIOUS_FILE_NAME);
    let key_id = if previous.exists() {
        parse(&read(&previous)?).ok_or_else(|| corrupt(&previous))?.0.wrapping_add(1)
    } else {
        1
    };
    let mut seed = vec![0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(format!("{key_id} {}\n", hex::encode(&seed)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|err| StoreError::io(format!("writing {}", path.display()), err))?;
            tracing::info!(key_id, path = %path.display(), "generated an OHTTP gateway key");
            Ok((key_id, seed))
        }
        // Another process made it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            parse(&read(&path)?).ok_or_else(|| corrupt(&path))
        }
        Err(err) => Err(StoreError::io(format!("creating {}", path.display()), err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_and_rotated_to_the_next_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = OhttpKey::load(&OhttpKeySource::DataDir, dir.path()).unwrap();
        assert_eq!(first.key_id, 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = OhttpKey::load(&OhttpKeySource::DataDir, dir.path()).unwrap();
        assert_eq!(again.encoded_list, first.encoded_list);
        std::fs::rename(dir.path().join(FILE_NAME), dir.path().join(PREVIOUS_FILE_NAME)).unwrap();
        let rotated = OhttpKey::load(&OhttpKeySource::DataDir, dir.path()).unwrap();
        assert_eq!(rotated.key_id, 2);
        assert_ne!(rotated.encoded_list, first.encoded_list);
    }
}
