//! What the agent remembers per disk between runs: the replication generation (invariant 5)
//! and whether a sync has been attempted, which decides full sync versus checksum resync.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wire::Generation;

use crate::error::AgentError;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DiskStateFile {
    pub(crate) generation: String,
    pub(crate) source: PathBuf,
    /// True once a sync of this generation completed: the replica then matches a past state.
    #[serde(default)]
    pub(crate) synced: bool,
    /// Set by a clean shutdown of continuous capture (the bitmap then lists every write the
    /// relay does not hold), cleared when capture starts: false after a crash.
    #[serde(default)]
    pub(crate) clean_shutdown: bool,
    /// The source's size when capture last ran; a change forces a resync.
    #[serde(default)]
    pub(crate) size_bytes: Option<u64>,
    /// Nothing of this generation was sent yet; cleared (durably) before the first frame.
    #[serde(default)]
    pub(crate) fresh: bool,
    /// A VMDK source: the content id of the chain's newest link when it was last synced; a
    /// snapshot sync sends what the links above it hold.
    #[serde(default)]
    pub(crate) synced_link: Option<String>,
}

impl DiskStateFile {
    pub(crate) fn new(source: PathBuf, size_bytes: u64) -> DiskStateFile {
        DiskStateFile {
            generation: wire::generation_to_hex(&new_generation()),
            source,
            synced: false,
            clean_shutdown: false,
            size_bytes: Some(size_bytes),
            fresh: true,
            synced_link: None,
        }
    }

    pub(crate) fn generation_bytes(&self, path: &Path) -> Result<Generation, AgentError> {
        wire::generation_from_hex(&self.generation).ok_or_else(|| AgentError::State {
            path: path.to_path_buf(),
            reason: "generation is not 32 hex digits".into(),
        })
    }
}

pub(crate) fn state_path(state_dir: &Path, disk: &str) -> PathBuf {
    state_dir.join(format!("{disk}.json"))
}

/// Records that the generation is about to send its first frame (see `fresh`).
pub(crate) fn mark_sent(path: &Path, state: &mut DiskStateFile) -> Result<(), AgentError> {
    if !state.fresh {
        return Ok(());
    }
    state.fresh = false;
    store(path, state)
}

/// The persistent dirty bitmap of a disk (see `dirtymap`).
pub(crate) fn bitmap_path(state_dir: &Path, disk: &str) -> PathBuf {
    state_dir.join(format!("{disk}.dirty"))
}

pub(crate) fn load(path: &Path) -> Result<Option<DiskStateFile>, AgentError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AgentError::Io { action: "read", path: path.to_path_buf(), source })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| AgentError::State { path: path.to_path_buf(), reason: error.to_string() })
}

pub(crate) fn store(path: &Path, state: &DiskStateFile) -> Result<(), AgentError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    fsio::write_atomic(path, text.as_bytes()).map_err(|source| AgentError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Starts a new generation for a source whose replica history the operator replaces; stored
/// before anything is sent, like every generation.
pub(crate) fn take_over(
    path: &Path,
    source: &crate::DiskSource,
    size_bytes: u64,
) -> Result<DiskStateFile, AgentError> {
    let fresh = DiskStateFile::new(source.path.clone(), size_bytes);
    log::warn!(
        "disk {}: taking over the replica with new generation {}; the replica is resynced by checksums",
        source.name,
        fresh.generation
    );
    store(path, &fresh)?;
    Ok(fresh)
}

pub(crate) fn new_generation() -> Generation {
    let mut generation = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut generation)
        .expect("system random source");
    generation[6] = (generation[6] & 0x0f) | 0x40; // UUID version 4
    generation[8] = (generation[8] & 0x3f) | 0x80;
    generation
}
