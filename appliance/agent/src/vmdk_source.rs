//! VMware sources (`--disk NAME=vmdk:PATH`): a VMDK, or the newest link of a snapshot chain,
//! read through the `vmdk` crate. A sync reads the chain's view; a snapshot sync reads only
//! the grains the links added since the last synced link hold, the way an agentless
//! replicator uses changed block tracking.

use std::path::{Path, PathBuf};

use crate::error::AgentError;
use crate::sync::SourceRead;

pub(crate) struct VmdkSource {
    disk: vmdk::Disk,
    path: PathBuf,
}

impl std::fmt::Debug for VmdkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkSource").field("path", &self.path).finish_non_exhaustive()
    }
}

fn vmdk_error(disk: &str) -> impl Fn(vmdk::VmdkError) -> AgentError + '_ {
    move |error| AgentError::Disk { disk: disk.to_string(), reason: error.to_string() }
}

impl VmdkSource {
    pub(crate) fn open(disk: &str, path: &Path) -> Result<VmdkSource, AgentError> {
        let opened = vmdk::fs::open(path).map_err(vmdk_error(disk))?;
        Ok(VmdkSource { disk: opened, path: path.to_path_buf() })
    }

    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.disk.capacity_bytes()
    }

    /// The newest link's content id, as recorded after a sync.
    pub(crate) fn top_cid(&self) -> Option<String> {
        self.disk.chain().first().and_then(|link| link.cid).map(|cid| format!("{cid:08x}"))
    }

    /// The byte ranges the links above the one with content id `synced` hold (their union,
    /// sorted): everything written since that link was synced.
    pub(crate) fn changed_since(
        &self,
        name: &str,
        synced: &str,
    ) -> Result<Vec<(u64, u64)>, AgentError> {
        let chain = self.disk.chain();
        let cid_of = |link: &vmdk::LinkInfo| link.cid.map(|cid| format!("{cid:08x}"));
        let Some(synced_at) = chain.iter().position(|link| cid_of(link).as_deref() == Some(synced))
        else {
            let links: Vec<String> = chain
                .iter()
                .map(|link| {
                    format!("{} (CID {})", link.file, cid_of(link).unwrap_or_else(|| "none".into()))
                })
                .collect();
            return Err(AgentError::Disk {
                disk: name.to_string(),
                reason: format!(
                    "the replica holds link CID {synced}, which is not in the chain of {} ({}); \
                     a checksum resync (agent --once) brings the replica back in step",
                    self.path.display(),
                    links.join(" <- ")
                ),
            });
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for link in &chain[..synced_at] {
            // Each new link on its own: its allocated grains are what changed in it.
            let alone = if link.file == chain[0].file {
                None
            } else {
                Some(vmdk::fs::open(&dir.join(&link.file)).map_err(vmdk_error(name))?)
            };
            let disk = alone.as_ref().unwrap_or(&self.disk);
            for range in disk.allocated_extents().map_err(vmdk_error(name))? {
                ranges.push((range.offset, range.len));
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (offset, len) in ranges {
            match merged.last_mut() {
                Some((start, length)) if offset <= *start + *length => {
                    *length = (*length).max(offset + len - *start);
                }
                _ => merged.push((offset, len)),
            }
        }
        Ok(merged)
    }
}

impl SourceRead for VmdkSource {
    fn read_source_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.disk.read_at(buf, offset).map_err(|error| std::io::Error::other(error.to_string()))
    }
}
