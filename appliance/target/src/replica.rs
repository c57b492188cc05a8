//! One replicated disk at the recovery site: its redo journal, its base image, its recovery
//! points and the metadata that says how far the base has caught up (design.md §5).
//!
//! Layout under the data directory:
//! - `replicas/NAME.img`: the base image, a sparse raw image: the disk as of `base_seq`, the
//!   oldest retained point (with the shortest retention, the newest point);
//! - `disks/NAME/meta.json`: generation, size, `base_seq` (as `applied_seq`), next point id;
//! - `disks/NAME/journal/seg-*.log`: every frame newer than the base, uncompressed, in order;
//! - `disks/NAME/points.log`: the retained recovery points.
//!
//! Write path: append records to the journal, fdatasync, ack. Nothing is written to the base
//! then: a point is read as the base overlaid with the journal's extents up to it (see
//! `index.rs`). Pruning (`maintain`) drops the points retention no longer keeps, then applies
//! the journal up to the oldest remaining point into the base, in steps, each step synced and
//! recorded before the segments it emptied are deleted. A crash anywhere in between leaves a
//! base that holds at most writes the journal still has, so every retained point reads the
//! same before and after.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use points::retention::{Kind, Policy};
use points::StoredPoint;
use serde::{Deserialize, Serialize};
use wire::{FrameType, Generation, WireError};

use crate::error::TargetError;
use crate::index::{IndexedExtent, JournalIndex, Location, PointView, Segment};
use crate::pointlog::{MarkerEntry, PointLog, POINTS_MAX};

/// Journal bytes per segment: pruning frees whole segments.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// Journaled extents indexed in memory per disk (about 50 bytes each, so at most ~200 MiB);
/// beyond it the oldest points go early, as for `journal_bytes_max`.
pub(crate) const JOURNAL_EXTENTS_MAX: usize = 4 << 20;
/// Write bytes one maintenance step applies into the base before it syncs and records it.
pub(crate) const PRUNE_STEP_BYTES: u64 = 256 << 20;
/// Format 2: uncompressed journal kept for recovery points. Format 1 (no field) journals
/// compressed frames only until the next checkpoint; opening one applies it all first.
const META_FORMAT: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    generation: String,
    size_bytes: u64,
    /// The base image holds every write up to this sequence.
    applied_seq: u64,
    /// The newest consistency boundary (a marker) in the journal.
    #[serde(default)]
    consistent: Option<ConsistentPoint>,
    #[serde(default)]
    format: u32,
    #[serde(default)]
    next_point_id: u64,
    /// The id of the key the journal's records are sealed with; absent: not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
}

/// A position in the disk's write stream where the source was consistent (a marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsistentPoint {
    pub(crate) seq: u64,
    pub(crate) marker_id: u64,
    pub(crate) time_unix_ms: u64,
}

/// A disk failed over at the recovery site (`disks/NAME/failover.json`): replication to it
/// has stopped, and the chosen point is served read-write until commit makes it the disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FailoverRecord {
    /// `unplanned` or `planned`.
    pub(crate) kind: String,
    pub(crate) point: u64,
    pub(crate) point_seq: u64,
    pub(crate) point_time_unix_ms: u64,
    pub(crate) point_kind: String,
    /// Where the failed-over disk is served (NBD).
    pub(crate) nbd_listen: String,
    pub(crate) phase: FailoverPhase,
    pub(crate) log: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FailoverPhase {
    /// Served from the point plus an overlay; the point may still be changed.
    FailedOver,
    /// Commit started: the point and the overlay are being written into the base.
    Committing,
    /// The base image is the disk; its history is gone.
    Committed,
    /// Committed, and no longer served: an agent protects the image now (reprotect). A
    /// take-over by an agent replicating into it again ends the failover.
    Released,
}

impl FailoverPhase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailoverPhase::FailedOver => "failed-over",
            FailoverPhase::Committing => "committing",
            FailoverPhase::Committed => "committed",
            FailoverPhase::Released => "released",
        }
    }
}

/// What a target keeps of each disk's history.
#[derive(Debug, Clone, Copy)]
pub struct RetentionOptions {
    pub policy: Policy,
    /// Minimum time between two crash-consistent points.
    pub point_interval_ms: u64,
    /// Journal bytes per disk beyond which the oldest points are dropped early.
    pub journal_bytes_max: u64,
}

#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) generation: Generation,
    pub(crate) size_bytes: u64,
    pub(crate) image_path: PathBuf,
    base: Arc<File>,
    disk_dir: PathBuf,
    journal_file: File,
    journal_index: u64,
    journal_len: u64,
    /// Highest sequence durable in the journal (what we ack).
    pub(crate) durable_seq: u64,
    /// Highest sequence staged or durable: the next accepted frame must follow it.
    pub(crate) staged_seq: u64,
    /// Highest sequence the base image holds (synced and recorded in the metadata).
    pub(crate) base_seq: u64,
    pub(crate) bytes_applied: u64,
    /// The newest durable consistency boundary.
    pub(crate) consistent: Option<ConsistentPoint>,
    /// Boundaries made durable since the target started.
    pub(crate) consistent_points: u64,
    /// Records staged for the next journal write, with their extents and markers.
    pending: Vec<u8>,
    staged_extents: Vec<IndexedExtent>,
    staged_markers: Vec<MarkerEntry>,
    index: JournalIndex,
    pub(crate) points: PointLog,
    /// Points a test failover or materialize reads: retention keeps them.
    pins: std::collections::BTreeMap<u64, usize>,
    retention: RetentionOptions,
    scratch: Vec<u8>,
    pub(crate) failover: Option<FailoverRecord>,
}

pub(crate) fn image_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("replicas").join(format!("{name}.img"))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TargetError {
    let path = path.to_path_buf();
    move |source| TargetError::Io { action, path, source }
}

impl MarkerEntry {
    /// A marker frame, journaled at `seq`.
    fn from_wire(seq: u64, marker: &wire::Marker) -> MarkerEntry {
        let kind = match marker.kind {
            wire::MarkerKind::Crash => Kind::Crash,
            wire::MarkerKind::App => Kind::App,
            wire::MarkerKind::Group => Kind::Group,
        };
        MarkerEntry { seq, kind, marker_id: marker.marker_id, time_unix_ms: marker.time_unix_ms }
    }

    /// The consistency boundary this marker makes.
    fn boundary(&self) -> ConsistentPoint {
        ConsistentPoint {
            seq: self.seq,
            marker_id: self.marker_id,
            time_unix_ms: self.time_unix_ms,
        }
    }
}

impl Replica {
    /// Opens an existing disk (rebuilding its journal index) or returns `None` if there is none.
    pub(crate) fn open_existing(
        data_dir: &Path,
        name: &str,
        retention: RetentionOptions,
        key: Option<Arc<journal::RecordKey>>,
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
        if meta.format > META_FORMAT {
            return Err(TargetError::Metadata {
                path: meta_path,
                reason: format!(
                    "format {} is newer than this target's {META_FORMAT}; run a newer target",
                    meta.format
                ),
            });
        }
        let image_path = image_path(data_dir, name);
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image_path)
            .map_err(io_error("open", &image_path))?;
        if meta.format < META_FORMAT {
            legacy::apply_journal(&disk_dir, name, &image, &image_path, meta.applied_seq)?;
        }
        // A journal with no records yet is simply kept under this start's key from now on.
        if let Err(journal::KeyMismatch { held, started }) =
            journal::check_key(meta.key_id.as_deref(), key.as_deref())
        {
            if journal_holds_records(&disk_dir.join("journal"))? {
                return Err(TargetError::Metadata {
                    path: meta_path,
                    reason: format!("its journal holds {held}, and this target was started {started}; start it as the journal was written ([security] encrypt_at_rest and at_rest_key_file)"),
                });
            }
        }
        let mut replica = Replica::assemble(
            name,
            generation,
            meta.size_bytes,
            image_path,
            image,
            disk_dir,
            retention,
            meta.next_point_id,
            key,
        )?;
        replica.base_seq = meta.applied_seq;
        replica.durable_seq = meta.applied_seq;
        replica.consistent = meta.consistent;
        replica.rebuild_index()?;
        replica.staged_seq = replica.durable_seq;
        replica.write_meta()?;
        replica.load_failover()?;
        Ok(Some(replica))
    }

    pub(crate) fn create(
        data_dir: &Path,
        name: &str,
        generation: Generation,
        size_bytes: u64,
        retention: RetentionOptions,
        key: Option<Arc<journal::RecordKey>>,
    ) -> Result<Replica, TargetError> {
        let disk_dir = data_dir.join("disks").join(name);
        let replicas_dir = data_dir.join("replicas");
        for dir in [&disk_dir.join("journal"), &replicas_dir] {
            fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        }
        // A points log left by a removed disk of the same name must not resurrect its points.
        let stale = disk_dir.join("points.log");
        if stale.exists() {
            fs::remove_file(&stale).map_err(io_error("remove", &stale))?;
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
        let replica = Replica::assemble(
            name, generation, size_bytes, image_path, image, disk_dir, retention, 1, key,
        )?;
        replica.write_meta()?;
        log::info!(
            "created replica {} ({} bytes) at {}",
            name,
            size_bytes,
            replica.image_path.display()
        );
        Ok(replica)
    }

    /// See `crate::adopt`: links `image` in as the base and records an unknown generation.
    pub(crate) fn adopt(
        data_dir: &Path,
        name: &str,
        image: &Path,
        size_bytes: u64,
    ) -> Result<(), TargetError> {
        let disk_dir = data_dir.join("disks").join(name);
        let replicas_dir = data_dir.join("replicas");
        for dir in [&disk_dir.join("journal"), &replicas_dir] {
            fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        }
        let link = image_path(data_dir, name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).map_err(io_error("remove", &link))?;
        }
        std::os::unix::fs::symlink(image, &link).map_err(io_error("link", &link))?;
        fsio::fsync_dir(&replicas_dir).map_err(io_error("fsync", &replicas_dir))?;
        let meta = Meta {
            generation: wire::generation_to_hex(&[0; 16]),
            size_bytes,
            applied_seq: 0,
            consistent: None,
            format: META_FORMAT,
            next_point_id: 1,
            key_id: None,
        };
        let path = disk_dir.join("meta.json");
        let text = serde_json::to_string_pretty(&meta).expect("meta serializes");
        fsio::write_atomic(&path, text.as_bytes()).map_err(io_error("write", &path))?;
        log::info!("disk {name}: adopted {} as its replica", image.display());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        name: &str,
        generation: Generation,
        size_bytes: u64,
        image_path: PathBuf,
        image: File,
        disk_dir: PathBuf,
        retention: RetentionOptions,
        next_point_id: u64,
        key: Option<Arc<journal::RecordKey>>,
    ) -> Result<Replica, TargetError> {
        let journal_dir = disk_dir.join("journal");
        fs::create_dir_all(&journal_dir).map_err(io_error("create directory", &journal_dir))?;
        let journal_index = list_segments(&journal_dir)?.last().map_or(0, |last| last + 1);
        let points = PointLog::open(&disk_dir, next_point_id)?;
        let mut replica = Replica {
            name: name.to_string(),
            generation,
            size_bytes,
            image_path,
            base: Arc::new(image),
            journal_file: File::open("/dev/null")
                .map_err(io_error("open", Path::new("/dev/null")))?,
            disk_dir,
            journal_index,
            journal_len: 0,
            durable_seq: 0,
            staged_seq: 0,
            base_seq: 0,
            bytes_applied: 0,
            consistent: None,
            consistent_points: 0,
            pending: Vec::new(),
            staged_extents: Vec::new(),
            staged_markers: Vec::new(),
            index: JournalIndex::new(key),
            points,
            pins: Default::default(),
            retention,
            scratch: Vec::new(),
            failover: None,
        };
        replica.open_segment(journal_index)?;
        Ok(replica)
    }

    fn journal_dir(&self) -> PathBuf {
        self.disk_dir.join("journal")
    }

    /// Starts segment `index` for appends and registers it for reads.
    fn open_segment(&mut self, index: u64) -> Result<(), TargetError> {
        let path = self.journal_dir().join(journal::segment_file_name(index));
        self.journal_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        let reader = File::open(&path).map_err(io_error("open", &path))?;
        self.index.segments.insert(
            index,
            Segment { file: Arc::new(reader), path, last_seq: self.durable_seq, bytes: 0 },
        );
        self.journal_index = index;
        self.journal_len = 0;
        Ok(())
    }

    fn write_meta(&self) -> Result<(), TargetError> {
        let meta = Meta {
            generation: wire::generation_to_hex(&self.generation),
            size_bytes: self.size_bytes,
            applied_seq: self.base_seq,
            consistent: self.consistent,
            format: META_FORMAT,
            next_point_id: self.points.next_id,
            key_id: self.index.key().map(|key| key.id().to_string()),
        };
        let path = self.disk_dir.join("meta.json");
        let text = serde_json::to_string_pretty(&meta).expect("meta serializes");
        fsio::write_atomic(&path, text.as_bytes()).map_err(io_error("write", &path))
    }

    /// Indexes every journal record newer than the base, and takes the points of markers the
    /// points log does not have yet. Only the newest segment may end in a torn record.
    fn rebuild_index(&mut self) -> Result<(), TargetError> {
        let journal_dir = self.journal_dir();
        let mut segments = list_segments(&journal_dir)?;
        segments.retain(|index| *index != self.journal_index);
        // Segments a crash left empty (started, never written) would hide which one is newest.
        let mut kept = Vec::with_capacity(segments.len());
        for segment_id in segments {
            let path = journal_dir.join(journal::segment_file_name(segment_id));
            let len = fs::metadata(&path).map_err(io_error("stat", &path))?.len();
            if len == 0 {
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            } else {
                kept.push(segment_id);
            }
        }
        let segments = kept;
        let mut markers = Vec::new();
        for (position, &segment_id) in segments.iter().enumerate() {
            let path = journal_dir.join(journal::segment_file_name(segment_id));
            let bytes = fs::read(&path).map_err(io_error("read", &path))?;
            let recovery = journal::recover(&bytes)
                .map_err(|source| TargetError::Journal { path: path.clone(), source })?;
            let is_newest = position + 1 == segments.len();
            if recovery.valid_len != bytes.len() as u64 {
                if !is_newest {
                    return Err(TargetError::Metadata {
                        path,
                        reason: "torn record in a journal segment that is not the newest".into(),
                    });
                }
                // The append a crash interrupted was never acked: cut it off for good, so
                // this segment is clean once newer ones follow it.
                log::warn!(
                    "replica {}: cutting a torn record off {} at byte {}",
                    self.name,
                    path.display(),
                    recovery.valid_len
                );
                let file =
                    OpenOptions::new().write(true).open(&path).map_err(io_error("open", &path))?;
                file.set_len(recovery.valid_len).map_err(io_error("truncate", &path))?;
                file.sync_all().map_err(io_error("fsync", &path))?;
            }
            let valid = &bytes[..recovery.valid_len as usize];
            let mut last_seq = 0;
            let mut plain = Vec::new();
            for (record_at, record) in journal::records(valid) {
                let Ok(frame_type) = FrameType::from_u8(record.kind) else { continue };
                let body =
                    match self.index.key() {
                        None => record.body,
                        Some(key) => key
                            .decrypt_body(record.kind, record.body, &mut plain)
                            .map_err(|error| TargetError::Metadata {
                                path: path.clone(),
                                reason: format!("record at byte {record_at}: {error}"),
                            })?,
                    };
                let (_, seq) = wire::disk_scoped_prefix(body).map_err(self.wire_error())?;
                last_seq = last_seq.max(seq);
                if seq <= self.base_seq {
                    continue;
                }
                let body_at = record_at + journal::limits::RECORD_HEADER_BYTES as u64;
                self.index_record(frame_type, body, seq, segment_id, body_at, &mut markers)?;
                self.durable_seq = self.durable_seq.max(seq);
            }
            let file = File::open(&path).map_err(io_error("open", &path))?;
            let segment =
                Segment { file: Arc::new(file), path, last_seq, bytes: recovery.valid_len };
            self.index.segments.insert(segment_id, segment);
        }
        for extent in std::mem::take(&mut self.staged_extents) {
            self.index.push(extent);
        }
        let logged = self.points.points.last().map_or(0, |point| point.seq);
        for marker in markers {
            self.consistent = Some(marker.boundary());
            if marker.seq > logged {
                self.points.on_marker(&marker, self.retention.point_interval_ms, |_| false)?;
            }
        }
        let base_seq = self.base_seq;
        let below_base = self.points.points.iter().filter(|p| p.seq < base_seq).count();
        if below_base > 0 {
            log::warn!(
                "replica {}: {below_base} recovery points are older than the base image and \
                 cannot be read any more; dropping them",
                self.name
            );
            self.points.retain(|point| point.seq >= base_seq)?;
        }
        if !segments.is_empty() {
            log::info!(
                "replica {}: journal holds sequences {}..={} ({} extents, {} points)",
                self.name,
                self.base_seq + 1,
                self.durable_seq,
                self.index.extents.len(),
                self.points.points.len()
            );
        }
        Ok(())
    }

    /// Indexes one journaled record (its body at `body_at` in `segment`) into `staged_extents`
    /// and `markers`.
    fn index_record(
        &mut self,
        frame_type: FrameType,
        body: &[u8],
        seq: u64,
        segment: u64,
        body_at: u64,
        markers: &mut Vec<MarkerEntry>,
    ) -> Result<(), TargetError> {
        let record_at = body_at - journal::limits::RECORD_HEADER_BYTES as u64;
        let frame = wire::RawFrame { frame_type, body }.decode().map_err(self.wire_error())?;
        match frame {
            wire::Frame::Marker(marker) => markers.push(MarkerEntry::from_wire(seq, &marker)),
            wire::Frame::Writes(writes) => {
                if writes.compression != wire::Compression::None {
                    return Err(TargetError::Metadata {
                        path: self.journal_dir(),
                        reason: format!("record {seq} is compressed in a format-2 journal"),
                    });
                }
                // The payload is a sub-slice of the body: its distance is its file position.
                let payload_at =
                    body_at + (writes.payload.as_ptr() as usize - body.as_ptr() as usize) as u64;
                self.index_extents(&writes.extents, seq, segment, payload_at, record_at);
            }
            _ => {}
        }
        Ok(())
    }

    /// Stages a record whose body is `body` as it is (sealed when the journal is encrypted).
    fn append_record(
        &mut self,
        frame_type: FrameType,
        body: &[u8],
    ) -> Result<(), journal::JournalError> {
        let start = journal::begin_record(frame_type as u8, &mut self.pending);
        self.pending.extend_from_slice(body);
        if let Some(key) = self.index.key() {
            key.encrypt_body(&mut self.pending, start);
        }
        journal::seal_record(&mut self.pending, start)
    }

    fn index_extents(
        &mut self,
        extents: &[wire::Extent],
        seq: u64,
        segment: u64,
        data_at: u64,
        record: u64,
    ) {
        let mut pos = data_at;
        for extent in extents {
            let zero = !extent.has_payload();
            self.staged_extents.push(IndexedExtent {
                offset: extent.offset,
                len: extent.len,
                location: Location { seq, segment, pos, record, zero },
            });
            if !zero {
                pos += u64::from(extent.len);
            }
        }
    }

    fn wire_error(&self) -> impl Fn(WireError) -> TargetError + '_ {
        |source| TargetError::Wire { disk: self.name.clone(), source }
    }

    /// A new generation replaces this replica's history (`agent --take-over`): the whole
    /// journal goes into the base and the old generation's points are dropped (they belong to
    /// a history that no longer continues), then the sequence restarts at 0.
    pub(crate) fn take_over(&mut self, generation: Generation) -> Result<(), TargetError> {
        let dropped = self.collapse_history()?;
        log::warn!(
            "replica {}: generation {} takes over from {} (agent --take-over); {dropped} \
             recovery points of the old generation dropped",
            self.name,
            wire::generation_to_hex(&generation),
            wire::generation_to_hex(&self.generation)
        );
        self.generation = generation;
        self.durable_seq = 0;
        self.staged_seq = 0;
        self.base_seq = 0;
        self.consistent = None;
        for segment in self.index.segments.values_mut() {
            segment.last_seq = 0;
        }
        self.write_meta()
    }

    /// Applies the whole journal into the base and drops every point; returns how many.
    fn collapse_history(&mut self) -> Result<usize, TargetError> {
        self.flush_journal()?;
        let dropped = self.points.retain(|_| false)?;
        if self.journal_len > 0 {
            self.open_segment(self.journal_index + 1)?;
        }
        self.apply_through(self.durable_seq, u64::MAX)?;
        Ok(dropped)
    }

    /// Adopts a new disk size announced by the source. Growing keeps every point (their
    /// extra bytes read as zeroes); shrinking would cut data off older points, so it applies
    /// the journal and drops them.
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
        if size_bytes < self.size_bytes && !self.points.points.is_empty() {
            let dropped = self.collapse_history()?;
            log::warn!("replica {}: the disk shrank; {dropped} recovery points dropped", self.name);
        }
        self.base.set_len(size_bytes).map_err(io_error("resize", &self.image_path))?;
        self.base.sync_all().map_err(io_error("fsync", &self.image_path))?;
        self.size_bytes = size_bytes;
        self.write_meta()
    }

    /// Staged journal bytes, for the caller's group-commit bound.
    pub(crate) fn staged_data_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Checks a frame completely (decodes, bounds, decompresses) and stages it, uncompressed,
    /// for the next journal flush. Checked before journaling, so nothing acked can fail to
    /// apply.
    pub(crate) fn stage(
        &mut self,
        frame_type: FrameType,
        body: &[u8],
        seq: u64,
    ) -> Result<(), TargetError> {
        assert_eq!(seq, self.staged_seq + 1, "the caller checked the sequence");
        let journal_path = self.journal_dir();
        let journal_error = |source| TargetError::Journal { path: journal_path.clone(), source };
        let frame = wire::RawFrame { frame_type, body }.decode().map_err(self.wire_error())?;
        match frame {
            wire::Frame::Writes(writes) => {
                for extent in &writes.extents {
                    let end = extent.offset + u64::from(extent.len);
                    if end > self.size_bytes {
                        let size = self.size_bytes;
                        return Err(TargetError::BeyondEnd { disk: self.name.clone(), end, size });
                    }
                }
                let data: &[u8] = if writes.compression == wire::Compression::None {
                    writes.payload
                } else {
                    self.scratch.clear();
                    wire::append_writes_data(&writes, &mut self.scratch)
                        .map_err(self.wire_error())?;
                    &self.scratch
                };
                let start = journal::begin_record(frame_type as u8, &mut self.pending);
                let record_at = self.journal_len + start as u64;
                wire::encode_writes_head(&writes, wire::Compression::None, &mut self.pending);
                let data_at = self.journal_len + self.pending.len() as u64;
                self.pending.extend_from_slice(data);
                if let Some(key) = self.index.key() {
                    key.encrypt_body(&mut self.pending, start);
                }
                if let Err(source) = journal::seal_record(&mut self.pending, start) {
                    return Err(journal_error(source));
                }
                let segment = self.journal_index;
                self.index_extents(&writes.extents, seq, segment, data_at, record_at);
            }
            wire::Frame::Marker(marker) => {
                self.staged_markers.push(MarkerEntry::from_wire(seq, &marker));
                self.append_record(frame_type, body).map_err(journal_error)?;
            }
            _ => {
                self.append_record(frame_type, body).map_err(journal_error)?;
            }
        }
        self.staged_seq = seq;
        Ok(())
    }

    /// Makes the staged records durable: one write and one fdatasync for the whole batch;
    /// then indexes them and takes the points their markers call for.
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
        assert!(self.staged_seq >= self.durable_seq, "durable sequence never goes back");
        self.durable_seq = self.staged_seq;
        let segment = self.index.segments.get_mut(&self.journal_index).expect("current segment");
        segment.bytes = self.journal_len;
        segment.last_seq = self.durable_seq;
        for extent in std::mem::take(&mut self.staged_extents) {
            self.index.push(extent);
        }
        for marker in std::mem::take(&mut self.staged_markers) {
            self.consistent = Some(marker.boundary());
            self.consistent_points += 1;
            let pins = &self.pins;
            let interval = self.retention.point_interval_ms;
            if let Some(point) =
                self.points.on_marker(&marker, interval, |id| pins.contains_key(&id))?
            {
                log::debug!("replica {}: point {} at sequence {}", self.name, point.id, point.seq);
            }
        }
        if self.journal_len >= SEGMENT_BYTES {
            self.open_segment(self.journal_index + 1)?;
        }
        Ok(())
    }

    /// One step of retention and pruning at `now_unix_ms`; true if more work is left.
    pub(crate) fn maintain(&mut self, now_unix_ms: u64) -> Result<bool, TargetError> {
        self.apply_retention(now_unix_ms)?;
        let target = match self.points.points.first() {
            Some(oldest) => oldest.seq,
            None => self.consistent.map_or(self.base_seq, |point| point.seq),
        };
        self.apply_through(target.min(self.durable_seq), PRUNE_STEP_BYTES)
    }

    fn apply_retention(&mut self, now_unix_ms: u64) -> Result<(), TargetError> {
        let all: Vec<_> = self.points.points.iter().map(StoredPoint::retention_point).collect();
        let mut keep: std::collections::BTreeSet<u64> =
            points::retention::keep(&all, &self.retention.policy, now_unix_ms)
                .into_iter()
                .collect();
        keep.extend(self.pins.keys());
        // Over a limit, the oldest unpinned points go first, never the newest.
        let mut over_count = keep.len().saturating_sub(POINTS_MAX);
        let mut over_bytes = self.index.bytes() > self.retention.journal_bytes_max
            || self.index.extents.len() > JOURNAL_EXTENTS_MAX;
        let newest = self.points.points.last().map(|point| point.id);
        for point in &self.points.points {
            if !(over_count > 0 || over_bytes) || Some(point.id) == newest {
                break;
            }
            if keep.contains(&point.id) && !self.pins.contains_key(&point.id) {
                keep.remove(&point.id);
                over_count = over_count.saturating_sub(1);
                over_bytes = false;
                log::warn!(
                    "replica {}: point {} dropped early: the journal is over \
                     target.journal_bytes_max or {JOURNAL_EXTENTS_MAX} extents, or the disk has \
                     over {POINTS_MAX} points",
                    self.name,
                    point.id
                );
            }
        }
        let dropped = self.points.retain(|point| keep.contains(&point.id))?;
        if dropped > 0 {
            log::info!("replica {}: retention dropped {dropped} recovery points", self.name);
            self.write_meta()?;
        }
        Ok(())
    }

    /// Applies journal frames up to `target` (a sequence) into the base, whole frames only,
    /// stopping after about `budget` bytes; syncs the base, records how far it is and deletes
    /// the segments it no longer needs. True if frames up to `target` are left.
    fn apply_through(&mut self, target: u64, budget: u64) -> Result<bool, TargetError> {
        if target <= self.base_seq {
            return Ok(false);
        }
        let mut applied_bytes = 0u64;
        let mut applied_through = self.base_seq;
        let mut at = 0usize;
        while let Some(first) = self.index.extents.get(at).copied() {
            let seq = first.location.seq;
            if seq > target || applied_bytes >= budget {
                break;
            }
            while let Some(extent) = self.index.extents.get(at).copied() {
                if extent.location.seq != seq {
                    break;
                }
                self.apply_extent(&extent)?;
                applied_bytes += u64::from(extent.len);
                at += 1;
            }
            applied_through = seq;
        }
        let finished = self.index.extents.get(at).is_none_or(|next| next.location.seq > target);
        if finished {
            applied_through = target;
        }
        if applied_through == self.base_seq {
            return Ok(!finished);
        }
        self.base.sync_data().map_err(io_error("fsync", &self.image_path))?;
        self.base_seq = applied_through;
        self.write_meta()?;
        self.index.drop_through(self.base_seq);
        let obsolete: Vec<u64> = self
            .index
            .segments
            .iter()
            .filter(|(&id, segment)| id != self.journal_index && segment.last_seq <= self.base_seq)
            .map(|(&id, _)| id)
            .collect();
        for id in &obsolete {
            let segment = self.index.segments.remove(id).expect("listed above");
            fs::remove_file(&segment.path).map_err(io_error("remove", &segment.path))?;
        }
        if !obsolete.is_empty() {
            let dir = self.journal_dir();
            fsio::fsync_dir(&dir).map_err(io_error("fsync", &dir))?;
        }
        Ok(!finished)
    }

    fn apply_extent(&mut self, extent: &IndexedExtent) -> Result<(), TargetError> {
        let len = u64::from(extent.len);
        if extent.location.zero {
            fsio::zero_range(&self.base, extent.offset, len)
                .map_err(io_error("zero", &self.image_path))?;
        } else {
            let segment = &self.index.segments[&extent.location.segment];
            self.scratch.resize(extent.len as usize, 0);
            self.index
                .read_stored(&segment.file, &extent.location, &mut self.scratch)
                .map_err(io_error("read", &segment.path))?;
            self.base
                .write_all_at(&self.scratch, extent.offset)
                .map_err(io_error("write", &self.image_path))?;
        }
        self.bytes_applied += len;
        Ok(())
    }

    /// The disk as of `seq`, readable without copying. `seq` must not be older than the base.
    pub(crate) fn view(&self, seq: u64) -> PointView {
        assert!(seq >= self.base_seq, "a point older than the base cannot be read");
        self.index.view(seq, self.base.clone(), self.size_bytes)
    }

    /// Keeps point `id` (and so everything it needs) until `unpin`.
    pub(crate) fn pin(&mut self, id: u64) {
        *self.pins.entry(id).or_default() += 1;
    }

    pub(crate) fn unpin(&mut self, id: u64) {
        if let Some(count) = self.pins.get_mut(&id) {
            *count -= 1;
            if *count == 0 {
                self.pins.remove(&id);
            }
        }
    }

    pub(crate) fn journal_bytes(&self) -> u64 {
        self.index.bytes()
    }

    /// Checksums of `count` blocks from `offset` of the disk as it is now, clipped at the disk
    /// size (design.md §3).
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
            self.index
                .read_head(&self.base, &mut block[..len], start)
                .map_err(io_error("read", &self.image_path))?;
            out.extend_from_slice(&wire::block_checksum(&block[..len]));
        }
        Ok(())
    }
}

impl Replica {
    fn failover_path(&self) -> PathBuf {
        self.disk_dir.join("failover.json")
    }

    /// Where a failed-over disk keeps its overlay (writes since failover) until commit.
    pub(crate) fn failover_dir(&self) -> PathBuf {
        self.disk_dir.join("failover")
    }

    fn load_failover(&mut self) -> Result<(), TargetError> {
        let path = self.failover_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("read", &path)(error)),
        };
        let record: FailoverRecord = serde_json::from_str(&text)
            .map_err(|error| TargetError::Metadata { path, reason: error.to_string() })?;
        if record.phase == FailoverPhase::FailedOver {
            self.pin(record.point);
        }
        self.failover = Some(record);
        Ok(())
    }

    pub(crate) fn save_failover(&self) -> Result<(), TargetError> {
        let path = self.failover_path();
        match &self.failover {
            Some(record) => {
                let text = serde_json::to_string_pretty(record).expect("record serializes");
                fsio::write_atomic(&path, text.as_bytes()).map_err(io_error("write", &path))
            }
            None => match fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_error("remove", &path)(error))
                }
                _ => Ok(()),
            },
        }
    }

    /// Makes the failed-over point, with the writes its overlay took, the disk itself: the
    /// journal up to the point and then the overlay go into the base; the rest of the history
    /// (later journal, every point) is dropped. Idempotent: a crash midway redoes it on start.
    pub(crate) fn commit_failover(&mut self) -> Result<(), TargetError> {
        let Some(mut record) = self.failover.clone() else {
            unreachable!("the caller checked that the disk is failed over")
        };
        record.phase = FailoverPhase::Committing;
        self.failover = Some(record.clone());
        self.save_failover()?;
        if record.point_seq > self.base_seq {
            self.apply_through(record.point_seq, u64::MAX)?;
        }
        let dir = self.failover_dir();
        let overlay_path = dir.join("overlay.img");
        if overlay_path.exists() {
            let overlay = File::open(&overlay_path).map_err(io_error("open", &overlay_path))?;
            let map = crate::failover::read_map(&dir.join("overlay.map"))
                .map_err(io_error("read", &dir))?;
            let mut buf = Vec::new();
            for (offset, len) in map {
                let len = len.min(self.size_bytes.saturating_sub(offset));
                buf.resize(len as usize, 0);
                fsio::read_at_padded(&overlay, &mut buf, offset)
                    .map_err(io_error("read", &overlay_path))?;
                self.base
                    .write_all_at(&buf, offset)
                    .map_err(io_error("write", &self.image_path))?;
            }
        }
        self.base.sync_data().map_err(io_error("fsync", &self.image_path))?;
        // The history after the point is given up: journal, points, pins.
        self.points.retain(|_| false)?;
        self.pins.clear();
        let journal_dir = self.journal_dir();
        for id in list_segments(&journal_dir)? {
            let path = journal_dir.join(journal::segment_file_name(id));
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
        self.index = JournalIndex::new(self.index.key().cloned());
        self.base_seq = record.point_seq;
        self.durable_seq = record.point_seq;
        self.staged_seq = record.point_seq;
        self.consistent = None;
        self.open_segment(self.journal_index + 1)?;
        fsio::fsync_dir(&journal_dir).map_err(io_error("fsync", &journal_dir))?;
        self.write_meta()?;
        record.phase = FailoverPhase::Committed;
        record.log.push(format!("committed point {}: the replica image is the disk", record.point));
        self.failover = Some(record);
        self.save_failover()?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_error("remove", &dir))?;
        }
        Ok(())
    }
}

/// Whether any journal segment in `dir` has bytes.
fn journal_holds_records(dir: &Path) -> Result<bool, TargetError> {
    for index in list_segments(dir)? {
        let path = dir.join(journal::segment_file_name(index));
        if fs::metadata(&path).map_err(io_error("stat", &path))?.len() > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, TargetError> {
    fsio::list_indexed(dir, journal::parse_segment_file_name).map_err(io_error("list", dir))
}

/// Format-1 disks: their journal holds compressed frames newer than `applied_seq` that were
/// applied to the image only up to the last checkpoint. Applying them all brings the image
/// to the journal's end, which format 2 then takes as its base.
mod legacy {
    use super::*;

    pub(super) fn apply_journal(
        disk_dir: &Path,
        name: &str,
        image: &File,
        image_path: &Path,
        applied_seq: u64,
    ) -> Result<(), TargetError> {
        let journal_dir = disk_dir.join("journal");
        let segments = list_segments(&journal_dir)?;
        let mut data = Vec::new();
        let wire_error = |source| TargetError::Wire { disk: name.to_string(), source };
        for index in &segments {
            let path = journal_dir.join(journal::segment_file_name(*index));
            let bytes = fs::read(&path).map_err(io_error("read", &path))?;
            let recovery = journal::recover(&bytes)
                .map_err(|source| TargetError::Journal { path: path.clone(), source })?;
            for (_, record) in journal::records(&bytes[..recovery.valid_len as usize]) {
                let Ok(frame_type) = FrameType::from_u8(record.kind) else { continue };
                let body = record.body;
                let Ok(wire::Frame::Writes(writes)) =
                    (wire::RawFrame { frame_type, body }).decode()
                else {
                    continue;
                };
                if writes.seq <= applied_seq {
                    continue;
                }
                data.clear();
                wire::append_writes_data(&writes, &mut data).map_err(wire_error)?;
                let mut at = 0usize;
                for extent in &writes.extents {
                    if extent.has_payload() {
                        let bytes = &data[at..at + extent.len as usize];
                        image
                            .write_all_at(bytes, extent.offset)
                            .map_err(io_error("write", image_path))?;
                        at += extent.len as usize;
                    } else {
                        fsio::zero_range(image, extent.offset, u64::from(extent.len))
                            .map_err(io_error("zero", image_path))?;
                    }
                }
            }
        }
        image.sync_data().map_err(io_error("fsync", image_path))?;
        for index in &segments {
            let path = journal_dir.join(journal::segment_file_name(*index));
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
        log::info!("replica {name}: format-1 journal applied; now keeping recovery points");
        Ok(())
    }
}
