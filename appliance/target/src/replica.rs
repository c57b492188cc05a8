//! One replicated disk at the recovery site: its redo journal, its sparse raw image and the
//! metadata that says how far the image has caught up with the journal.
//!
//! Layout under the data directory:
//! - `replicas/NAME.img`: the replica, a sparse raw image a user can compare or mount;
//! - `disks/NAME/meta.json`: generation, size, and the sequence applied and synced into the image;
//! - `disks/NAME/journal/seg-*.log`: records durable but maybe not yet synced into the image.
//!
//! Write path: append records to the journal, fdatasync, ack, then apply them to the image.
//! A checkpoint syncs the image, records `applied_seq` in the metadata, and deletes the journal
//! segment. After a crash, `open` replays the journal into the image (idempotent) before serving.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wire::{FrameType, Generation, WireError};

use crate::error::TargetError;

/// Journal bytes after which the image is synced and the journal segment dropped. The image
/// may lag the journal (design.md §5: the journal is the durable copy), so syncing it rarely
/// lets the page cache absorb the replica writes instead of forcing them to disk per batch.
pub(crate) const CHECKPOINT_JOURNAL_BYTES: u64 = 1 << 30;

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    generation: String,
    size_bytes: u64,
    applied_seq: u64,
    /// The newest crash-consistent boundary (a client FLUSH at the source) in the journal.
    #[serde(default)]
    consistent: Option<ConsistentPoint>,
}

/// A position in the disk's write stream where the source had flushed: the replica as of
/// this sequence is a crash-consistent image (design.md invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsistentPoint {
    pub(crate) seq: u64,
    pub(crate) marker_id: u64,
    pub(crate) time_unix_ms: u64,
}

#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) generation: Generation,
    pub(crate) size_bytes: u64,
    pub(crate) image_path: PathBuf,
    image: File,
    disk_dir: PathBuf,
    journal_file: File,
    journal_index: u64,
    journal_len: u64,
    /// Highest sequence durable in the journal (what we ack).
    pub(crate) durable_seq: u64,
    /// Highest sequence staged or durable: the next accepted frame must follow it.
    pub(crate) staged_seq: u64,
    /// Highest sequence synced into the image and recorded in the metadata.
    pub(crate) applied_seq: u64,
    pub(crate) bytes_applied: u64,
    /// The newest durable consistency boundary, and the one staged after it.
    pub(crate) consistent: Option<ConsistentPoint>,
    staged_consistent: Option<ConsistentPoint>,
    /// Boundaries made durable since the target started.
    pub(crate) consistent_points: u64,
    /// Records staged for the next journal write.
    pending: Vec<u8>,
    /// Writes of the staged records, decompressed and checked, waiting for durability.
    staged_writes: PendingWrites,
    /// Writes durable in the journal and not yet in the image.
    durable_writes: PendingWrites,
}

/// Extents and their data, ready to be written into the image.
#[derive(Debug, Default)]
struct PendingWrites {
    extents: Vec<wire::Extent>,
    data: Vec<u8>,
}

impl PendingWrites {
    fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    fn append(&mut self, other: &mut PendingWrites) {
        if self.is_empty() {
            std::mem::swap(self, other);
        } else {
            self.extents.append(&mut other.extents);
            self.data.extend_from_slice(&other.data);
            other.data.clear();
        }
    }

    fn clear(&mut self) {
        self.extents.clear();
        self.data.clear();
    }
}

pub(crate) fn image_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("replicas").join(format!("{name}.img"))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TargetError {
    let path = path.to_path_buf();
    move |source| TargetError::Io { action, path, source }
}

impl Replica {
    /// Opens an existing disk (replaying its journal) or returns `None` if it does not exist.
    pub(crate) fn open_existing(
        data_dir: &Path,
        name: &str,
    ) -> Result<Option<Replica>, TargetError> {
        let disk_dir = data_dir.join("disks").join(name);
        let meta_path = disk_dir.join("meta.json");
        let text = match fs::read_to_string(&meta_path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("read", &meta_path)(error)),
        };
        let meta: Meta = serde_json::from_str(&text).map_err(|error| TargetError::Metadata {
            path: meta_path.clone(),
            reason: error.to_string(),
        })?;
        let generation =
            wire::generation_from_hex(&meta.generation).ok_or_else(|| TargetError::Metadata {
                path: meta_path.clone(),
                reason: "generation is not 32 hex digits".into(),
            })?;
        let image_path = image_path(data_dir, name);
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image_path)
            .map_err(io_error("open", &image_path))?;
        let mut replica =
            Replica::assemble(name, generation, meta.size_bytes, image_path, image, disk_dir)?;
        replica.applied_seq = meta.applied_seq;
        replica.durable_seq = meta.applied_seq;
        replica.consistent = meta.consistent;
        replica.replay_journal()?;
        replica.staged_seq = replica.durable_seq;
        Ok(Some(replica))
    }

    pub(crate) fn create(
        data_dir: &Path,
        name: &str,
        generation: Generation,
        size_bytes: u64,
    ) -> Result<Replica, TargetError> {
        let disk_dir = data_dir.join("disks").join(name);
        let replicas_dir = data_dir.join("replicas");
        for dir in [&disk_dir.join("journal"), &replicas_dir] {
            fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        }
        let image_path = image_path(data_dir, name);
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image_path)
            .map_err(io_error("create", &image_path))?;
        image.set_len(size_bytes).map_err(io_error("resize", &image_path))?;
        image.sync_all().map_err(io_error("fsync", &image_path))?;
        fsio::fsync_dir(&replicas_dir).map_err(io_error("fsync", &replicas_dir))?;
        let replica = Replica::assemble(name, generation, size_bytes, image_path, image, disk_dir)?;
        replica.write_meta()?;
        log::info!(
            "created replica {} ({} bytes) at {}",
            name,
            size_bytes,
            replica.image_path.display()
        );
        Ok(replica)
    }

    fn assemble(
        name: &str,
        generation: Generation,
        size_bytes: u64,
        image_path: PathBuf,
        image: File,
        disk_dir: PathBuf,
    ) -> Result<Replica, TargetError> {
        let journal_dir = disk_dir.join("journal");
        fs::create_dir_all(&journal_dir).map_err(io_error("create directory", &journal_dir))?;
        let journal_index = list_segments(&journal_dir)?.last().map_or(0, |last| last + 1);
        let journal_path = journal_dir.join(journal::segment_file_name(journal_index));
        let journal_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&journal_path)
            .map_err(io_error("create", &journal_path))?;
        Ok(Replica {
            name: name.to_string(),
            generation,
            size_bytes,
            image_path,
            image,
            disk_dir,
            journal_file,
            journal_index,
            journal_len: 0,
            durable_seq: 0,
            staged_seq: 0,
            applied_seq: 0,
            bytes_applied: 0,
            consistent: None,
            staged_consistent: None,
            consistent_points: 0,
            pending: Vec::new(),
            staged_writes: PendingWrites::default(),
            durable_writes: PendingWrites::default(),
        })
    }

    fn journal_dir(&self) -> PathBuf {
        self.disk_dir.join("journal")
    }

    fn write_meta(&self) -> Result<(), TargetError> {
        let meta = Meta {
            generation: wire::generation_to_hex(&self.generation),
            size_bytes: self.size_bytes,
            applied_seq: self.applied_seq,
            consistent: self.consistent,
        };
        let path = self.disk_dir.join("meta.json");
        let text = serde_json::to_string_pretty(&meta).expect("meta serializes");
        fsio::write_atomic(&path, text.as_bytes()).map_err(io_error("write", &path))
    }

    /// Applies every journal record newer than the metadata into the image, then checkpoints.
    /// Only the newest segment may end in a torn record (the crash interrupted its append).
    fn replay_journal(&mut self) -> Result<(), TargetError> {
        let journal_dir = self.journal_dir();
        let mut segments = list_segments(&journal_dir)?;
        segments.retain(|index| *index != self.journal_index);
        for (position, index) in segments.iter().enumerate() {
            let path = journal_dir.join(journal::segment_file_name(*index));
            let bytes = fs::read(&path).map_err(io_error("read", &path))?;
            let recovery = journal::recover(&bytes)
                .map_err(|source| TargetError::Journal { path: path.clone(), source })?;
            let is_newest = position + 1 == segments.len();
            if recovery.valid_len != bytes.len() as u64 && !is_newest {
                return Err(TargetError::Metadata {
                    path,
                    reason: "torn record in a journal segment that is not the newest".into(),
                });
            }
            for (_, record) in journal::records(&bytes[..recovery.valid_len as usize]) {
                let Ok(frame_type) = FrameType::from_u8(record.kind) else { continue };
                let (_, seq) = wire::disk_scoped_prefix(record.body)
                    .map_err(|source| TargetError::Wire { disk: self.name.clone(), source })?;
                if seq > self.applied_seq {
                    self.check_and_queue(frame_type, record.body, seq)?;
                    if let Some(point) = self.staged_consistent.take() {
                        self.consistent = Some(point);
                    }
                    let mut queued = std::mem::take(&mut self.staged_writes);
                    self.write_image(&mut queued)?;
                    self.durable_seq = self.durable_seq.max(seq);
                }
            }
        }
        if !segments.is_empty() {
            log::info!(
                "replica {}: replayed journal up to sequence {}",
                self.name,
                self.durable_seq
            );
        }
        self.checkpoint()
    }

    /// Syncs the image, records how far it is, and drops the journal segments before the
    /// current one.
    pub(crate) fn checkpoint(&mut self) -> Result<(), TargetError> {
        self.apply_durable()?;
        self.image.sync_data().map_err(io_error("fsync", &self.image_path))?;
        self.applied_seq = self.durable_seq;
        self.write_meta()?;
        let journal_dir = self.journal_dir();
        for index in list_segments(&journal_dir)? {
            if index != self.journal_index {
                let path = journal_dir.join(journal::segment_file_name(index));
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        if self.journal_len > 0 {
            self.journal_index += 1;
            let path = journal_dir.join(journal::segment_file_name(self.journal_index));
            self.journal_file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(io_error("create", &path))?;
            self.journal_len = 0;
            let old = journal_dir.join(journal::segment_file_name(self.journal_index - 1));
            fs::remove_file(&old).map_err(io_error("remove", &old))?;
        }
        fsio::fsync_dir(&journal_dir).map_err(io_error("fsync", &journal_dir))
    }

    /// A new generation replaces this replica's history (`agent --take-over`): everything
    /// journaled goes into the image first, then the sequence restarts at 0. The data stays;
    /// the agent's checksum resync fixes what differs.
    pub(crate) fn take_over(&mut self, generation: Generation) -> Result<(), TargetError> {
        self.checkpoint()?;
        log::warn!(
            "replica {}: generation {} takes over from {} (agent --take-over)",
            self.name,
            wire::generation_to_hex(&generation),
            wire::generation_to_hex(&self.generation)
        );
        self.generation = generation;
        self.durable_seq = 0;
        self.staged_seq = 0;
        self.applied_seq = 0;
        self.consistent = None;
        self.staged_consistent = None;
        self.write_meta()
    }

    /// Adopts a new disk size announced by the source.
    pub(crate) fn resize(&mut self, size_bytes: u64) -> Result<(), TargetError> {
        if size_bytes == self.size_bytes {
            return Ok(());
        }
        log::warn!(
            "replica {}: size changes from {} to {} bytes",
            self.name,
            self.size_bytes,
            size_bytes
        );
        self.image.set_len(size_bytes).map_err(io_error("resize", &self.image_path))?;
        self.size_bytes = size_bytes;
        self.checkpoint()
    }

    /// Staged bytes of decompressed write data, for the caller's group-commit bound.
    pub(crate) fn staged_data_bytes(&self) -> usize {
        self.staged_writes.data.len()
    }

    /// Checks a frame completely (decodes, bounds, decompresses) and queues it for the next
    /// journal flush. Checked before journaling, so nothing acked can fail to apply.
    pub(crate) fn stage(
        &mut self,
        frame_type: FrameType,
        body: &[u8],
        seq: u64,
    ) -> Result<(), TargetError> {
        assert_eq!(seq, self.staged_seq + 1, "the caller checked the sequence");
        self.check_and_queue(frame_type, body, seq)?;
        journal::encode_record(frame_type as u8, body, &mut self.pending)
            .map_err(|source| TargetError::Journal { path: self.journal_dir(), source })?;
        self.staged_seq = seq;
        Ok(())
    }

    /// Decodes a journaled frame body and appends its writes to `staged_writes`.
    fn check_and_queue(
        &mut self,
        frame_type: FrameType,
        body: &[u8],
        seq: u64,
    ) -> Result<(), TargetError> {
        let wire_error = |source: WireError| TargetError::Wire { disk: self.name.clone(), source };
        if frame_type == FrameType::Marker {
            let wire::Frame::Marker(marker) =
                wire::RawFrame { frame_type, body }.decode().map_err(wire_error)?
            else {
                unreachable!("frame type checked above");
            };
            if marker.kind == wire::MarkerKind::Crash {
                self.staged_consistent = Some(ConsistentPoint {
                    seq,
                    marker_id: marker.marker_id,
                    time_unix_ms: marker.time_unix_ms,
                });
            }
            return Ok(());
        }
        if frame_type != FrameType::Writes {
            return Ok(());
        }
        let wire::Frame::Writes(writes) =
            wire::RawFrame { frame_type, body }.decode().map_err(wire_error)?
        else {
            unreachable!("frame type checked above");
        };
        for extent in &writes.extents {
            let end = extent.offset + u64::from(extent.len);
            if end > self.size_bytes {
                let size = self.size_bytes;
                return Err(TargetError::BeyondEnd { disk: self.name.clone(), end, size });
            }
        }
        wire::append_writes_data(&writes, &mut self.staged_writes.data).map_err(wire_error)?;
        self.staged_writes.extents.extend_from_slice(&writes.extents);
        Ok(())
    }

    /// Makes the staged records durable: one write and one fdatasync for the whole batch.
    pub(crate) fn flush_journal(&mut self) -> Result<(), TargetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.journal_dir().join(journal::segment_file_name(self.journal_index));
        self.journal_file
            .write_all_at(&self.pending, self.journal_len)
            .map_err(io_error("append", &path))?;
        self.journal_file.sync_data().map_err(io_error("fdatasync", &path))?;
        self.journal_len += self.pending.len() as u64;
        self.pending.clear();
        self.durable_writes.append(&mut self.staged_writes);
        if let Some(point) = self.staged_consistent.take() {
            self.consistent = Some(point);
            self.consistent_points += 1;
        }
        assert!(self.staged_seq >= self.durable_seq, "durable sequence never goes back");
        self.durable_seq = self.staged_seq;
        Ok(())
    }

    pub(crate) fn wants_checkpoint(&self) -> bool {
        self.journal_len >= CHECKPOINT_JOURNAL_BYTES
    }

    pub(crate) fn has_journal(&self) -> bool {
        self.journal_len > 0
    }

    /// Writes everything durable into the image.
    pub(crate) fn apply_durable(&mut self) -> Result<(), TargetError> {
        let mut durable = std::mem::take(&mut self.durable_writes);
        let result = self.write_image(&mut durable);
        self.durable_writes = durable;
        result
    }

    fn write_image(&mut self, writes: &mut PendingWrites) -> Result<(), TargetError> {
        let mut data_at = 0usize;
        for extent in &writes.extents {
            if extent.has_payload() {
                let bytes = &writes.data[data_at..data_at + extent.len as usize];
                self.image
                    .write_all_at(bytes, extent.offset)
                    .map_err(io_error("write", &self.image_path))?;
                data_at += extent.len as usize;
            } else {
                fsio::zero_range(&self.image, extent.offset, u64::from(extent.len))
                    .map_err(io_error("zero", &self.image_path))?;
            }
            self.bytes_applied += u64::from(extent.len);
        }
        assert_eq!(data_at, writes.data.len(), "extents account for every data byte");
        writes.clear();
        Ok(())
    }

    /// Checksums of `count` blocks from `offset`, clipped at the disk size (design.md §3).
    pub(crate) fn checksums(
        &self,
        offset: u64,
        block_bytes: u32,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), TargetError> {
        let mut block = vec![0u8; block_bytes as usize];
        for index in 0..u64::from(count) {
            let start = offset.saturating_add(index * u64::from(block_bytes));
            let len = self.size_bytes.saturating_sub(start).min(u64::from(block_bytes)) as usize;
            fsio::read_at_padded(&self.image, &mut block[..len], start)
                .map_err(io_error("read", &self.image_path))?;
            out.extend_from_slice(&wire::block_checksum(&block[..len]));
        }
        Ok(())
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, TargetError> {
    fsio::list_indexed(dir, journal::parse_segment_file_name).map_err(io_error("list", dir))
}
