//! The development JWT secret: generated once into `DATA_DIR/jwt_secret`
//! and reused on every start, so tokens survive restarts.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

use crate::config::{Secret, MIN_JWT_SECRET_BYTES};
use crate::store::{StoreError, StoreResult};

const FILE_NAME: &str = "jwt_secret";

pub fn load_or_create(data_dir: &Path) -> StoreResult<Secret> {
    std::fs::create_dir_all(data_dir).map_err(|err| StoreError::io(format!("creating {}", data_dir.display()), err))?;
    let path = data_dir.join(FILE_NAME);
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    let fresh = hex::encode(bytes);
    match create_private(&path) {
        Ok(mut file) => {
            file.write_all(fresh.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|err| StoreError::io(format!("writing {}", path.display()), err))?;
            tracing::info!(path = %path.display(), "generated a development JWT secret");
            Ok(Secret::from(fresh.into_bytes()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let stored =
                std::fs::read(&path).map_err(|err| StoreError::io(format!("reading {}", path.display()), err))?;
            let trimmed = stored.trim_ascii().to_vec();
            if trimmed.len() < MIN_JWT_SECRET_BYTES {
                return Err(StoreError::Corrupt(format!(
                    "{} holds fewer than {MIN_JWT_SECRET_BYTES} bytes; delete it to generate a new one",
                    path.display()
                )));
            }
            Ok(Secret::from(trimmed))
        }
        Err(err) => Err(StoreError::io(format!("creating {}", path.display()), err)),
    }
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        use secrecy::ExposeSecret;

        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert!(first.expose_secret().len() >= MIN_JWT_SECRET_BYTES);
        assert_eq!(load_or_create(dir.path()).unwrap().expose_secret(), first.expose_secret());
    }
}
