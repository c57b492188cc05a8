//! Full sync and checksum resync of one disk. Both read the source in large aligned chunks,
//! classify blocks (zero, data, unchanged) and pack them into `Writes` frames.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use wire::{Compression, DiskStateKind, Extent, Frame, Writes, EXTENT_ZERO};

use crate::error::AgentError;
use crate::link::Link;
use crate::{DiskReport, SyncMode};

/// Extents per frame; well under the protocol's limit so a frame of small runs stays small.
const FRAME_EXTENTS_MAX: usize = 1024;
/// Largest zero extent: long runs of zeros cost one extent per GiB.
const ZERO_EXTENT_BYTES_MAX: u64 = 1 << 30;
/// Checksum requests kept in flight ahead of the reader during a resync.
const CHECKSUM_REQUESTS_AHEAD: usize = 4;
const PROGRESS_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncLimits {
    pub(crate) block_bytes: usize,
    pub(crate) read_chunk_bytes: usize,
    pub(crate) frame_payload_bytes: usize,
}

/// Accumulates extents and payload into one `Writes` frame at a time.
struct FrameBuilder {
    disk: usize,
    extents: Vec<Extent>,
    payload: Vec<u8>,
    payload_max: usize,
}

impl FrameBuilder {
    fn add_zero(&mut self, link: &mut Link, offset: u64, len: u64) -> Result<(), AgentError> {
        if let Some(last) = self.extents.last_mut() {
            let end = last.offset + u64::from(last.len);
            if last.flags == EXTENT_ZERO
                && end == offset
                && u64::from(last.len) + len <= ZERO_EXTENT_BYTES_MAX
            {
                last.len += len as u32;
                return Ok(());
            }
        }
        self.push_extent(link, Extent { offset, len: len as u32, flags: EXTENT_ZERO }, &[])
    }

    fn add_data(&mut self, link: &mut Link, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        if self.payload.len() + data.len() > self.payload_max {
            self.emit(link)?;
        }
        if let Some(last) = self.extents.last_mut() {
            if last.flags == 0 && last.offset + u64::from(last.len) == offset {
                last.len += data.len() as u32;
                self.payload.extend_from_slice(data);
                return Ok(());
            }
        }
        self.push_extent(link, Extent { offset, len: data.len() as u32, flags: 0 }, data)
    }

    fn push_extent(
        &mut self,
        link: &mut Link,
        extent: Extent,
        data: &[u8],
    ) -> Result<(), AgentError> {
        if self.extents.len() >= FRAME_EXTENTS_MAX {
            self.emit(link)?;
        }
        self.extents.push(extent);
        self.payload.extend_from_slice(data);
        Ok(())
    }

    fn emit(&mut self, link: &mut Link) -> Result<(), AgentError> {
        if self.extents.is_empty() {
            return Ok(());
        }
        let seq = link.next_seq(self.disk);
        let mut bytes = link.take_frame_buffer();
        Frame::Writes(Writes {
            disk_id: self.disk as u32,
            seq,
            compression: Compression::None,
            data_len: self.payload.len() as u32,
            extents: std::mem::take(&mut self.extents),
            payload: &self.payload,
        })
        .encode(&mut bytes)?;
        self.payload.clear();
        link.send_sequenced(self.disk, seq, bytes)
    }
}

/// What a sync reads: a raw image or block device, or a VMDK chain's view.
pub(crate) trait SourceRead: Send + Sync {
    fn read_source_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// A sync reads each byte once: a hint that the pages just read are not needed again.
    fn drop_cache(&self, _offset: u64, _len: u64) {}
}

impl SourceRead for File {
    fn read_source_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn drop_cache(&self, offset: u64, len: u64) {
        fsio::drop_cache(self, offset, len);
    }
}

pub(crate) struct DiskSync<'a> {
    pub(crate) link: &'a mut Link,
    pub(crate) disk: usize,
    pub(crate) name: &'a str,
    pub(crate) source: &'a dyn SourceRead,
    pub(crate) size_bytes: u64,
    pub(crate) limits: SyncLimits,
    pub(crate) progress: &'a indicatif::ProgressBar,
    /// Checked between chunks: a shutdown interrupts a long sync.
    pub(crate) stop: &'a std::sync::atomic::AtomicBool,
}

impl DiskSync<'_> {
    pub(crate) fn run(mut self, mode: SyncMode) -> Result<DiskReport, AgentError> {
        let started = Instant::now();
        let mut report = DiskReport::new(self.name, mode, self.size_bytes);
        let mut builder = FrameBuilder {
            disk: self.disk,
            extents: Vec::new(),
            payload: Vec::with_capacity(self.limits.frame_payload_bytes),
            payload_max: self.limits.frame_payload_bytes,
        };
        let state = match mode {
            SyncMode::Full => DiskStateKind::InitialSync,
            SyncMode::Resync => DiskStateKind::Resyncing,
        };
        let mut chunk = vec![0u8; self.limits.read_chunk_bytes];
        let mut last_report = Instant::now() - PROGRESS_REPORT_INTERVAL;
        let blocks_per_chunk = self.limits.read_chunk_bytes / self.limits.block_bytes;
        let mut pending_requests = std::collections::VecDeque::new();
        let mut next_request_offset = 0u64;
        let mut offset = 0u64;
        while offset < self.size_bytes {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(AgentError::Stopped);
            }
            let len = (self.size_bytes - offset).min(chunk.len() as u64) as usize;
            let sums = if mode == SyncMode::Resync {
                while pending_requests.len() < CHECKSUM_REQUESTS_AHEAD
                    && next_request_offset < self.size_bytes
                {
                    let id = self.link.request_checksums(
                        self.disk,
                        next_request_offset,
                        self.limits.block_bytes as u32,
                        blocks_per_chunk as u32,
                    )?;
                    pending_requests.push_back(id);
                    next_request_offset += chunk.len() as u64;
                }
                let id = pending_requests.pop_front().expect("a request covers this chunk");
                Some(self.link.take_checksums(id)?)
            } else {
                None
            };
            self.read_chunk(&mut chunk[..len], offset)?;
            for (index, block) in chunk[..len].chunks(self.limits.block_bytes).enumerate() {
                let block_offset = offset + (index * self.limits.block_bytes) as u64;
                if let Some(sums) = &sums {
                    let theirs = sums.get(index * 16..index * 16 + 16);
                    if theirs == Some(&wire::block_checksum(block)[..]) {
                        report.unchanged_bytes += block.len() as u64;
                        continue;
                    }
                    report.differing_blocks += 1;
                }
                if wire::is_zero(block) {
                    builder.add_zero(self.link, block_offset, block.len() as u64)?;
                    report.zero_bytes += block.len() as u64;
                } else {
                    builder.add_data(self.link, block_offset, block)?;
                    report.data_bytes += block.len() as u64;
                }
            }
            offset += len as u64;
            self.progress.set_position(offset);
            if last_report.elapsed() >= PROGRESS_REPORT_INTERVAL {
                self.report_state(state, offset)?;
                last_report = Instant::now();
            }
        }
        builder.emit(self.link)?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn read_chunk(&self, buf: &mut [u8], offset: u64) -> Result<(), AgentError> {
        self.source.read_source_at(buf, offset).map_err(|source| AgentError::Io {
            action: "read source disk",
            path: self.name.into(),
            source,
        })?;
        // A sync reads each byte once: keep the workload's page cache, not ours.
        self.source.drop_cache(offset, buf.len() as u64);
        Ok(())
    }

    fn report_state(&mut self, state: DiskStateKind, done_bytes: u64) -> Result<(), AgentError> {
        report_state(self.link, self.disk, state, done_bytes, self.size_bytes)
    }
}

/// Sends a consistency marker after everything sent so far on `disk`; returns its sequence.
/// The marker id is `marker_id` (a group's, shared by its disks) or, if 0, the sequence.
pub(crate) fn send_marker(
    link: &mut Link,
    disk: usize,
    kind: wire::MarkerKind,
    marker_id: u64,
) -> Result<u64, AgentError> {
    let seq = link.next_seq(disk);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let mut bytes = link.take_frame_buffer();
    let marker_id = if marker_id == 0 { seq } else { marker_id };
    Frame::Marker(wire::Marker { disk_id: disk as u32, seq, kind, marker_id, time_unix_ms: now })
        .encode(&mut bytes)?;
    link.send_sequenced(disk, seq, bytes)?;
    Ok(seq)
}

/// Sends exactly the byte ranges `ranges` of `source` (a snapshot delta's changed grains),
/// block by block: zero blocks as zero extents, the rest as data. Returns (data bytes, zero
/// bytes) sent.
pub(crate) fn send_ranges(
    link: &mut Link,
    disk: usize,
    source: &dyn SourceRead,
    ranges: &[(u64, u64)],
    limits: SyncLimits,
) -> Result<(u64, u64), AgentError> {
    let mut builder = FrameBuilder {
        disk,
        extents: Vec::new(),
        payload: Vec::with_capacity(limits.frame_payload_bytes),
        payload_max: limits.frame_payload_bytes,
    };
    let mut chunk = vec![0u8; limits.read_chunk_bytes];
    let (mut data_bytes, mut zero_bytes) = (0u64, 0u64);
    for &(start, len) in ranges {
        let end = start + len;
        let mut offset = start;
        while offset < end {
            let take = (end - offset).min(chunk.len() as u64) as usize;
            source.read_source_at(&mut chunk[..take], offset).map_err(|error| AgentError::Io {
                action: "read source disk",
                path: format!("disk {disk}").into(),
                source: error,
            })?;
            for (index, block) in chunk[..take].chunks(limits.block_bytes).enumerate() {
                let at = offset + (index * limits.block_bytes) as u64;
                if wire::is_zero(block) {
                    builder.add_zero(link, at, block.len() as u64)?;
                    zero_bytes += block.len() as u64;
                } else {
                    builder.add_data(link, at, block)?;
                    data_bytes += block.len() as u64;
                }
            }
            offset += take as u64;
        }
    }
    builder.emit(link)?;
    Ok((data_bytes, zero_bytes))
}

/// Tells the relay (and through it `status`) where a disk stands.
pub(crate) fn report_state(
    link: &mut Link,
    disk: usize,
    state: DiskStateKind,
    done_bytes: u64,
    total_bytes: u64,
) -> Result<(), AgentError> {
    link.send_unsequenced(&Frame::DiskState(wire::DiskState {
        disk_id: disk as u32,
        state,
        done_bytes,
        total_bytes,
    }))
}
