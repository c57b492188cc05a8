//! Consistency-group points the relay confirmed (`DATA_DIR/groups.json`): a group marker is
//! a group point only once every disk of the group had its marker queued while the relay
//! held their writes (see the relay's `groups.rs`). Until then, and if confirmation never
//! comes, it is a crash-consistent point of its own disk.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Confirmations kept; older ones go first (their points are long pruned by then).
const CONFIRMED_MAX: usize = 65_536;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// Marker id -> group name.
    confirmed: BTreeMap<u64, String>,
}

#[derive(Debug)]
pub(crate) struct ConfirmedGroups {
    path: PathBuf,
    stored: Stored,
}

impl ConfirmedGroups {
    pub(crate) fn open(data_dir: &Path) -> io::Result<ConfirmedGroups> {
        let path = data_dir.join("groups.json");
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Stored::default(),
            Err(error) => return Err(error),
        };
        Ok(ConfirmedGroups { path, stored })
    }

    pub(crate) fn group_of(&self, marker_id: u64) -> Option<&str> {
        self.stored.confirmed.get(&marker_id).map(String::as_str)
    }

    /// Records the confirmation durably.
    pub(crate) fn confirm(
        &mut self,
        group: &str,
        marker_id: u64,
        disks: &[String],
    ) -> io::Result<()> {
        self.stored.confirmed.insert(marker_id, group.to_string());
        while self.stored.confirmed.len() > CONFIRMED_MAX {
            self.stored.confirmed.pop_first();
        }
        let text = serde_json::to_string(&self.stored).expect("groups serialize");
        fsio::write_atomic(&self.path, text.as_bytes())?;
        log::debug!("group {group}: point {marker_id} confirmed for {}", disks.join(", "));
        Ok(())
    }
}
