//! The relay's durable cache journal: append-only segment files of CRC-checked records
//! (crate `journal`), each record a disk-scoped frame body stored with its disk's identity.
//!
//! Life of a record: staged in `pending`; written and fdatasync'ed as part of a group commit
//! (only then acked to the agent); read back and forwarded to the target; once the target acked
//! every record of a segment, the segment file is deleted. `cache.state` remembers each disk's
//! replicated sequence, so deleting segments never forgets where a disk stands.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::disks::Disks;
use crate::error::{io_error, RelayError};

/// Bytes read at a time by the recovery scan: keeps start-up memory flat whatever the segment size.
const SCAN_CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) index: u64,
    pub(crate) file: File,
    /// Bytes written or being written.
    pub(crate) len: u64,
    /// Bytes known durable: only these are forwarded.
    pub(crate) durable_len: u64,
    /// Highest sequence per disk in this segment; the segment may go once all are replicated.
    pub(crate) max_seq: HashMap<usize, u64>,
}

#[derive(Debug)]
pub(crate) struct Cache {
    pub(crate) dir: PathBuf,
    pub(crate) segment_bytes_max: u64,
    pub(crate) bytes_max: u64,
    /// Oldest first; the last one takes appends.
    pub(crate) segments: VecDeque<Segment>,
    /// Records waiting for the next group commit, and the highest sequence each disk has there.
    pub(crate) pending: Vec<u8>,
    pub(crate) pending_seqs: HashMap<usize, u64>,
    /// The other group-commit buffer, idle while `pending` fills.
    pub(crate) spare: Vec<u8>,
    /// Encrypts records at rest (`[security] encrypt_at_rest`).
    pub(crate) key: Option<Arc<journal::RecordKey>>,
}

/// The layout of cache records (stored `DiskInfo` + frame body). Bumped whenever a record
/// written by one build could be misread by another; a cache of another format is refused.
const CACHE_FORMAT: u32 = 2;

#[derive(Debug, Serialize, Deserialize, Default)]
struct StateFile {
    /// Absent in caches written before formats were recorded (format 1).
    #[serde(default = "first_format")]
    format: u32,
    /// The id of the key the records are encrypted with; absent: not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    disks: Vec<DiskState>,
}

fn first_format() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
struct DiskState {
    name: String,
    generation: String,
    size_bytes: u64,
    replicated_seq: u64,
}

impl Cache {
    /// Opens the cache directory: loads the state, scans every segment (truncating a torn tail
    /// of the newest one), and rebuilds each disk's positions.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes_max: u64,
        bytes_max: u64,
        disks: &mut Disks,
        key: Option<Arc<journal::RecordKey>>,
    ) -> Result<Cache, RelayError> {
        std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        let (format, key_id) = load_state(dir, disks)?;
        let indexes = list_segments(dir)?;
        let holds_records = indexes.iter().any(|&index| {
            std::fs::metadata(dir.join(journal::segment_file_name(index)))
                .is_ok_and(|meta| meta.len() > 0)
        });
        let checked = journal::check_key(key_id.as_deref(), key.as_deref());
        if let (true, Err(journal::KeyMismatch { held, started })) = (holds_records, checked) {
            return Err(RelayError::CacheKey {
                dir: dir.to_path_buf(),
                reason: format!("it holds {held}, and this relay was started {started}. Start it as the cache was written ([security] encrypt_at_rest and at_rest_key_file) so it delivers them, or move the cache directory away to start over (its unforwarded writes are then lost and the agents resync)"),
            });
        }
        let key_id = key.as_ref().map(|key| key.id());
        match format {
            Some(CACHE_FORMAT) => {}
            None if indexes.is_empty() => store_state(dir, disks, key_id)?,
            other => {
                let found =
                    other.map_or("an unrecorded format".to_string(), |f| format!("format {f}"));
                return Err(RelayError::State {
                    path: state_path(dir),
                    reason: format!("the cache holds records in {found}, written by another siterelay version; this build reads format {CACHE_FORMAT}. Let the version that wrote it deliver them, or remove the cache directory to start over (the agents then resync)"),
                });
            }
        }
        let mut segments = VecDeque::with_capacity(indexes.len() + 1);
        for (position, index) in indexes.iter().enumerate() {
            let is_newest = position + 1 == indexes.len();
            segments.push_back(scan_segment(dir, *index, is_newest, disks, key.as_deref())?);
        }
        let mut cache = Cache {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            bytes_max,
            segments,
            pending: Vec::new(),
            pending_seqs: HashMap::new(),
            spare: Vec::new(),
            key,
        };
        // Records the key (or none) the cache is written with from now on.
        cache.store_state(disks)?;
        if cache.segments.back().is_none_or(|last| last.len >= segment_bytes_max) {
            cache.add_segment()?;
        }
        let records: u64 = cache.segments.iter().map(|segment| segment.len).sum();
        log::info!(
            "cache {}: {} segments, {} bytes to forward",
            dir.display(),
            cache.segments.len(),
            records
        );
        Ok(cache)
    }

    pub(crate) fn bytes_used(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len).sum::<u64>() + self.pending.len() as u64
    }

    pub(crate) fn active(&mut self) -> &mut Segment {
        self.segments.back_mut().expect("the cache always has an active segment")
    }

    /// Stages one encoded journal record for the next group commit. Records reach the
    /// segment in staging order; `start_flush` notes their sequences in the segment.
    pub(crate) fn stage(&mut self, disk: usize, seq: Option<u64>, record: &[u8]) {
        // Exact growth: the buffer settles at one group plus one record instead of doubling.
        self.pending.reserve_exact(record.len());
        self.pending.extend_from_slice(record);
        if let Some(seq) = seq {
            self.pending_seqs.insert(disk, seq);
        }
    }

    /// Starts a new active segment once the current one is full. Called between group commits.
    pub(crate) fn rotate_if_full(&mut self) -> Result<(), RelayError> {
        if self.active().len >= self.segment_bytes_max {
            self.add_segment()?;
        }
        Ok(())
    }

    fn add_segment(&mut self) -> Result<(), RelayError> {
        let index = self.segments.back().map_or(0, |last| last.index + 1);
        let path = self.dir.join(journal::segment_file_name(index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        fsio::fsync_dir(&self.dir).map_err(io_error("fsync", &self.dir))?;
        self.segments.push_back(Segment {
            index,
            file,
            len: 0,
            durable_len: 0,
            max_seq: HashMap::new(),
        });
        Ok(())
    }

    /// Deletes sealed segments whose every record the target has acked and the forwarder has
    /// passed. Persists the disks' positions first, so the deletion never loses them.
    pub(crate) fn free_replicated(
        &mut self,
        disks: &Disks,
        forward_segment: u64,
    ) -> Result<u64, RelayError> {
        let mut freeable = 0;
        for segment in self.segments.iter().take(self.segments.len().saturating_sub(1)) {
            let replicated =
                segment.max_seq.iter().all(|(disk, seq)| disks.list[*disk].replicated_seq >= *seq);
            if !replicated || segment.index >= forward_segment {
                break;
            }
            freeable += 1;
        }
        if freeable == 0 {
            return Ok(0);
        }
        store_state(&self.dir, disks, self.key.as_ref().map(|key| key.id()))?;
        let mut freed = 0;
        for _ in 0..freeable {
            let segment = self.segments.pop_front().expect("counted above");
            let path = self.dir.join(journal::segment_file_name(segment.index));
            std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
            freed += segment.len;
        }
        Ok(freed)
    }

    /// Persists every disk's identity and replicated position now (a take-over).
    pub(crate) fn store_state(&self, disks: &Disks) -> Result<(), RelayError> {
        store_state(&self.dir, disks, self.key.as_ref().map(|key| key.id()))
    }

    pub(crate) fn segment_path(&self, index: u64) -> PathBuf {
        self.dir.join(journal::segment_file_name(index))
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("cache.state")
}

/// Loads `cache.state` into `disks`; returns its format (`None` without a state file) and the
/// id of the key its records are encrypted with.
fn load_state(dir: &Path, disks: &mut Disks) -> Result<(Option<u32>, Option<String>), RelayError> {
    let path = state_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
        Err(error) => return Err(io_error("read", &path)(error)),
    };
    let state: StateFile = serde_json::from_str(&text)
        .map_err(|error| RelayError::State { path: path.clone(), reason: error.to_string() })?;
    for disk in state.disks {
        let generation =
            wire::generation_from_hex(&disk.generation).ok_or_else(|| RelayError::State {
                path: path.clone(),
                reason: format!("disk {}: bad generation", disk.name),
            })?;
        disks.insert(&disk.name, generation, disk.size_bytes, disk.replicated_seq);
    }
    Ok((Some(state.format), state.key_id))
}

fn store_state(dir: &Path, disks: &Disks, key_id: Option<&str>) -> Result<(), RelayError> {
    let state = StateFile {
        format: CACHE_FORMAT,
        key_id: key_id.map(str::to_string),
        disks: disks
            .list
            .iter()
            .map(|disk| DiskState {
                name: disk.name.clone(),
                generation: wire::generation_to_hex(&disk.generation),
                size_bytes: disk.size_bytes,
                replicated_seq: disk.replicated_seq,
            })
            .collect(),
    };
    let path = state_path(dir);
    let text = serde_json::to_string_pretty(&state).expect("state serializes");
    fsio::write_atomic(&path, text.as_bytes()).map_err(io_error("write", &path))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, RelayError> {
    fsio::list_indexed(dir, journal::parse_segment_file_name).map_err(io_error("list", dir))
}

/// Scans one segment in chunks, registering its records with `disks`. A damaged tail is
/// truncated if it is the newest segment's and nothing valid follows it.
fn scan_segment(
    dir: &Path,
    index: u64,
    is_newest: bool,
    disks: &mut Disks,
    key: Option<&journal::RecordKey>,
) -> Result<Segment, RelayError> {
    let mut plain = Vec::new();
    let path = dir.join(journal::segment_file_name(index));
    let mut file =
        OpenOptions::new().read(true).write(true).open(&path).map_err(io_error("open", &path))?;
    let file_len = file.metadata().map_err(io_error("stat", &path))?.len();
    let mut max_seq = HashMap::new();
    let mut buf: Vec<u8> = Vec::with_capacity(SCAN_CHUNK_BYTES);
    let mut buf_offset = 0u64; // file offset of buf[0]
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
    let mut eof = false;
    let valid_len = loop {
        let mut consumed = 0usize;
        let stop = loop {
            match journal::decode_record(&buf[consumed..], buf_offset + consumed as u64) {
                Ok(Some((record, used))) => {
                    let offset = buf_offset + consumed as u64;
                    let record = open_record(key, record, &mut plain, &path, offset)?;
                    register_record(&path, offset, record, disks, &mut max_seq)?;
                    consumed += used;
                }
                Ok(None) => break None,
                Err(error) => break Some(error),
            }
        };
        buf.drain(..consumed);
        buf_offset += consumed as u64;
        if stop.is_some() || eof {
            if buf.is_empty() {
                break buf_offset;
            }
            // Damage or a torn write at buf_offset: decide with the whole remainder.
            let mut rest = Vec::new();
            rest.extend_from_slice(&buf);
            file.read_to_end(&mut rest).map_err(io_error("read", &path))?;
            return finish_damaged_segment(
                path, file, index, is_newest, buf_offset, &rest, max_seq,
            );
        }
        let read = file.read(&mut chunk).map_err(io_error("read", &path))?;
        eof = read == 0;
        buf.extend_from_slice(&chunk[..read]);
    };
    assert_eq!(valid_len, file_len, "a clean scan covers the whole file");
    Ok(Segment { index, file, len: valid_len, durable_len: valid_len, max_seq })
}

fn finish_damaged_segment(
    path: PathBuf,
    file: File,
    index: u64,
    is_newest: bool,
    offset: u64,
    rest: &[u8],
    max_seq: HashMap<usize, u64>,
) -> Result<Segment, RelayError> {
    match journal::recover(rest) {
        Err(source) => Err(RelayError::Journal { path, source }),
        Ok(recovery) if !is_newest => Err(RelayError::DamagedSealedSegment {
            path,
            offset,
            reason: format!("{:?}", recovery.tail),
        }),
        Ok(recovery) => {
            assert_eq!(recovery.valid_len, 0, "records were consumed up to the damage");
            log::warn!("cache segment {}: truncating a torn tail of {} bytes at byte {offset} (an unacknowledged write interrupted by a crash)", path.display(), rest.len());
            file.set_len(offset).map_err(io_error("truncate", &path))?;
            file.sync_all().map_err(io_error("fsync", &path))?;
            Ok(Segment { index, file, len: offset, durable_len: offset, max_seq })
        }
    }
}

/// The record as written, decrypted when the cache is encrypted.
pub(crate) fn open_record<'a>(
    key: Option<&journal::RecordKey>,
    record: journal::RecordRef<'a>,
    scratch: &'a mut Vec<u8>,
    path: &Path,
    offset: u64,
) -> Result<journal::RecordRef<'a>, RelayError> {
    let Some(key) = key else { return Ok(record) };
    let body = key
        .decrypt_body(record.kind, record.body, scratch)
        .map_err(|source| RelayError::Sealed { path: path.to_path_buf(), offset, source })?;
    Ok(journal::RecordRef { kind: record.kind, body })
}

fn register_record(
    path: &Path,
    offset: u64,
    record: journal::RecordRef<'_>,
    disks: &mut Disks,
    max_seq: &mut HashMap<usize, u64>,
) -> Result<(), RelayError> {
    let record_error = |source| RelayError::Record { path: path.to_path_buf(), offset, source };
    let frame_type = wire::FrameType::from_u8(record.kind).map_err(record_error)?;
    let (info, body) = wire::decode_stored(record.body).map_err(record_error)?;
    let disk = disks.insert(info.name, info.generation, info.size_bytes, 0);
    if disks.list[disk].generation != info.generation {
        // Left behind by a take-over (cache.state has the new generation): delivered before
        // the take-over was allowed, and never forwarded again.
        return Ok(());
    }
    disks.list[disk].size_bytes = info.size_bytes;
    if matches!(frame_type, wire::FrameType::Writes | wire::FrameType::Marker) {
        let (_, seq) = wire::disk_scoped_prefix(body).map_err(record_error)?;
        let entry = &mut disks.list[disk];
        entry.cache_seq = entry.cache_seq.max(seq);
        entry.received_seq = entry.cache_seq;
        let slot = max_seq.entry(disk).or_insert(0);
        *slot = (*slot).max(seq);
    }
    Ok(())
}
