//! Reading a bundle directory: the only module here that touches the file system. It reads
//! bounded bytes and hands them to the pure checks; it decides nothing itself.
//!
//! ```text
//! BUNDLE/
//!   manifest.json        the signed manifest body
//!   manifest.sig         its signatures
//!   roots/N.root.json    optional: roots the appliance may not have yet, with
//!   roots/N.root.sig       their signatures (N = the root's version)
//!   payloads/NAME        one file per manifest payload; nothing else
//! ```
//!
//! Checks done here run on a directory the caller controls (unpacked into the appliance's
//! data partition); they refuse symbolic links and special files, but do not defend against
//! a concurrent writer changing the directory between checks.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, Payload};
use crate::signed::SignedDocument;
use crate::verify::PayloadVerifier;
use crate::{BundleError, MANIFEST_MAX, ROOT_CHAIN_MAX, ROOT_MAX, SIGNATURES_FILE_MAX};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_SIGNATURES_FILE: &str = "manifest.sig";
pub const ROOTS_DIR: &str = "roots";
pub const PAYLOADS_DIR: &str = "payloads";
/// Most entries walked under `payloads/` when looking for unlisted files.
pub const PAYLOAD_DIR_ENTRIES_MAX: usize = 4096;
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("bundle: {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("bundle: {}: more than the limit of {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: usize },
    #[error("bundle: {}: {reason}", path.display())]
    Unexpected { path: PathBuf, reason: &'static str },
    #[error("{0}")]
    Bundle(#[from] BundleError),
}

/// A bundle directory's signed documents, read; payloads stay on disk until verified.
#[derive(Debug)]
pub struct BundleDir {
    path: PathBuf,
    pub manifest: SignedDocument,
    /// `(N, document)` from `roots/N.root.json`, by N. N is only a file name: the chain check
    /// reads the real version from the signed body.
    pub roots: Vec<(u64, SignedDocument)>,
}

impl BundleDir {
    pub fn open(path: &Path) -> Result<BundleDir, FsError> {
        let body = read_bounded(&path.join(MANIFEST_FILE), MANIFEST_MAX)?;
        let sigs = read_bounded(&path.join(MANIFEST_SIGNATURES_FILE), SIGNATURES_FILE_MAX)?;
        let manifest = SignedDocument::from_files(body, &sigs)?;
        let roots = read_roots(&path.join(ROOTS_DIR))?;
        Ok(BundleDir { path: path.to_path_buf(), manifest, roots })
    }

    /// The roots after `trusted_version`, in order: the chain for
    /// [`crate::verify_root_chain`].
    pub fn root_chain_after(&self, trusted_version: u64) -> Vec<SignedDocument> {
        self.roots
            .iter()
            .filter(|(n, _)| *n > trusted_version)
            .map(|(_, doc)| doc.clone())
            .collect()
    }

    /// Where a payload's file is (its name was checked when the manifest was parsed, so it
    /// stays under `payloads/`).
    pub fn payload_path(&self, payload: &Payload) -> PathBuf {
        self.path.join(PAYLOADS_DIR).join(&payload.name)
    }

    /// Streams every payload of a *verified* manifest through a [`PayloadVerifier`] (reading
    /// at most one byte more than declared), then refuses any file under `payloads/` that the
    /// manifest does not list.
    pub fn verify_payloads(&self, manifest: &Manifest) -> Result<(), FsError> {
        for payload in &manifest.payloads {
            self.verify_payload_file(manifest, payload)?;
        }
        let listed: BTreeSet<PathBuf> =
            manifest.payloads.iter().map(|p| self.payload_path(p)).collect();
        let mut pending = vec![self.path.join(PAYLOADS_DIR)];
        let mut entries = 0usize;
        while let Some(dir) = pending.pop() {
            for entry in
                fs::read_dir(&dir).map_err(|error| FsError::Io { path: dir.clone(), error })?
            {
                let entry = entry.map_err(|error| FsError::Io { path: dir.clone(), error })?;
                entries += 1;
                let path = entry.path();
                if entries > PAYLOAD_DIR_ENTRIES_MAX {
                    return Err(FsError::Unexpected {
                        path,
                        reason: "too many entries under payloads/",
                    });
                }
                let kind =
                    entry.file_type().map_err(|error| FsError::Io { path: path.clone(), error })?;
                if kind.is_dir() {
                    pending.push(path);
                } else if !kind.is_file() {
                    return Err(FsError::Unexpected {
                        path,
                        reason: "not a regular file or directory",
                    });
                } else if !listed.contains(&path) {
                    return Err(FsError::Unexpected {
                        path,
                        reason: "file not listed in the manifest",
                    });
                }
            }
        }
        Ok(())
    }

    fn verify_payload_file(&self, manifest: &Manifest, payload: &Payload) -> Result<(), FsError> {
        // Every directory on the way must be a real directory, and the payload a regular file:
        // a symbolic link could point anywhere.
        let mut at = self.path.join(PAYLOADS_DIR);
        for component in payload.name.split('/') {
            let kind = fs::symlink_metadata(&at)
                .map_err(|error| FsError::Io { path: at.clone(), error })?;
            if !kind.is_dir() {
                return Err(FsError::Unexpected { path: at, reason: "not a directory" });
            }
            at.push(component);
        }
        let kind =
            fs::symlink_metadata(&at).map_err(|error| FsError::Io { path: at.clone(), error })?;
        if !kind.is_file() {
            return Err(FsError::Unexpected { path: at, reason: "not a regular file" });
        }
        let file = File::open(&at).map_err(|error| FsError::Io { path: at.clone(), error })?;
        let mut reader = file.take(payload.size.saturating_add(1));
        let mut verifier = PayloadVerifier::new(manifest, &payload.name)?;
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|error| FsError::Io { path: at.clone(), error })?;
            if read == 0 {
                break;
            }
            verifier.update(&buffer[..read])?;
        }
        verifier.finish()?;
        Ok(())
    }
}

fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, FsError> {
    let file = File::open(path).map_err(|error| FsError::Io { path: path.to_path_buf(), error })?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| FsError::Io { path: path.to_path_buf(), error })?;
    if bytes.len() > limit {
        return Err(FsError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(bytes)
}

fn read_roots(dir: &Path) -> Result<Vec<(u64, SignedDocument)>, FsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(FsError::Io { path: dir.to_path_buf(), error }),
    };
    let mut versions = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|error| FsError::Io { path: dir.to_path_buf(), error })?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_str().unwrap_or("");
        let number = name.strip_suffix(".root.json").or_else(|| name.strip_suffix(".root.sig"));
        match number.and_then(|n| n.parse::<u64>().ok()) {
            Some(version) if versions.len() < ROOT_CHAIN_MAX || versions.contains(&version) => {
                versions.insert(version);
            }
            Some(_) => return Err(FsError::Unexpected { path, reason: "too many roots" }),
            None => {
                return Err(FsError::Unexpected { path, reason: "not N.root.json or N.root.sig" })
            }
        }
    }
    versions
        .into_iter()
        .map(|version| {
            let body = read_bounded(&dir.join(format!("{version}.root.json")), ROOT_MAX)?;
            let sigs = read_bounded(&dir.join(format!("{version}.root.sig")), SIGNATURES_FILE_MAX)?;
            Ok((version, SignedDocument::from_files(body, &sigs)?))
        })
        .collect()
}
