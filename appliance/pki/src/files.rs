//! Small file helpers: private files are created 0600, every write replaces the file
//! atomically (temporary file, fsync, rename), so a crash leaves the old or the new file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;

/// Largest file read here (a registry with thousands of certificates fits).
const FILE_BYTES_MAX: u64 = 16 << 20;

pub(crate) fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir)
        .map_err(|error| PkiError::io(dir, "create the directory", error))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|error| PkiError::io(dir, "restrict the directory", error))
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|error| PkiError::io(path, "write", error))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, bytes, 0o600)
}

pub(crate) fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, bytes, 0o644)
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), PkiError> {
    let mut text = serde_json::to_string_pretty(value).expect("PKI records serialize");
    text.push('\n');
    write_atomic(path, text.as_bytes(), 0o600)
}

pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    let len = std::fs::metadata(path).map_err(|error| PkiError::io(path, "read", error))?.len();
    if len > FILE_BYTES_MAX {
        return Err(PkiError::bad(path, format!("{len} bytes, more than {FILE_BYTES_MAX}")));
    }
    std::fs::read_to_string(path).map_err(|error| PkiError::io(path, "read", error))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PkiError> {
    serde_json::from_str(&read_text(path)?).map_err(|error| PkiError::bad(path, error.to_string()))
}

pub(crate) fn read_cert(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let text = read_text(path)?;
    CertificateDer::from_pem_slice(text.as_bytes())
        .map_err(|error| PkiError::bad(path, format!("not a PEM certificate: {error}")))
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let text = read_text(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|error| PkiError::bad(path, format!("not a PEM private key: {error}")))
}

/// An exclusive lock held until the returned file is dropped.
pub(crate) fn lock(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, PkiError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|error| PkiError::io(path, "open the lock", error))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| PkiError::io(path, "lock", errno.into()))
}
