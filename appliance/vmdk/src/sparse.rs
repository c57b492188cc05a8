//! A hosted sparse extent (plain or streamOptimized): grain directory, grain tables (cached,
//! checked when loaded) and grains (read in place or inflated).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flate2::{Decompress, FlushDecompress, Status};

use crate::header::{
    parse_stream_tail, u64_at, SparseHeader, GD_AT_END, GRAIN_MARKER_LEN, STREAM_TAIL_LEN,
};
use crate::{Source, VmdkError, SECTOR};

/// Grain tables kept in memory per extent (with 512 entries, 2 KiB each; 16 GiB of disk at
/// 64 KiB grains).
const TABLE_CACHE: usize = 512;

/// Grain table entry: grain not allocated here (read the parent).
const GTE_UNALLOCATED: u32 = 0;
/// Grain table entry: grain of zeros (with the zeroed-GTE flag; treated alike without it, as
/// sector 1 is never grain data).
const GTE_ZEROED: u32 = 1;

/// What a grain table entry says about a grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grain {
    Unallocated,
    Zero,
    /// Sector of the grain (of its marker, when compressed).
    At(u64),
}

fn classify(entry: u32) -> Grain {
    match entry {
        GTE_UNALLOCATED => Grain::Unallocated,
        GTE_ZEROED => Grain::Zero,
        sector => Grain::At(u64::from(sector)),
    }
}

type Table = Arc<[u32]>;

/// Where reads of unallocated grains go: (buffer, extent byte offset).
pub(crate) type Parent<'a> = dyn FnMut(&mut [u8], u64) -> Result<(), VmdkError> + 'a;

#[derive(Debug)]
struct State {
    tables: Vec<(usize, Table)>,
    victim: usize,
    /// The last inflated grain: (grain index, bytes).
    grain: Option<(u64, Vec<u8>)>,
    compressed: Vec<u8>,
    inflater: Option<Decompress>,
}

pub(crate) struct SparseExtent {
    file: String,
    source: Box<dyn Source>,
    file_len: u64,
    header: SparseHeader,
    /// Bytes of disk this extent provides (from the descriptor; at most the header capacity).
    extent_bytes: u64,
    grain_bytes: u64,
    gtes: u64,
    /// Only the entries covering `extent_bytes`.
    gd: Vec<u32>,
    compressed: bool,
    state: Mutex<State>,
}

impl std::fmt::Debug for SparseExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseExtent")
            .field("file", &self.file)
            .field("header", &self.header)
            .field("extent_bytes", &self.extent_bytes)
            .finish_non_exhaustive()
    }
}

fn ranges_overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl SparseExtent {
    /// `first` is the header at sector 0 (already parsed); `extent_sectors` what the descriptor
    /// says the extent holds.
    pub(crate) fn open(
        file: &str,
        source: Box<dyn Source>,
        file_len: u64,
        first: SparseHeader,
        extent_sectors: u64,
    ) -> Result<SparseExtent, VmdkError> {
        let header = if first.gd_offset == GD_AT_END {
            let need = SECTOR + STREAM_TAIL_LEN;
            if file_len < need {
                return Err(VmdkError::truncated(file, "streamOptimized file", need, file_len));
            }
            let mut tail = vec![0u8; STREAM_TAIL_LEN as usize];
            source
                .read_exact_at(&mut tail, file_len - STREAM_TAIL_LEN)
                .map_err(|e| VmdkError::io(file, "cannot read the streamOptimized footer", e))?;
            parse_stream_tail(file, &tail)?
        } else {
            first
        };
        if extent_sectors > header.capacity {
            return Err(VmdkError::corrupt(
                file,
                format!(
                    "the descriptor gives the extent {extent_sectors} sectors, its header only {}",
                    header.capacity
                ),
            ));
        }
        let grain_bytes = header.grain_bytes();
        let gtes = u64::from(header.gtes_per_gt);
        let extent_bytes = extent_sectors * SECTOR;
        let entries = extent_sectors.div_ceil(header.grain_size * gtes);

        // The grain directory: inside the file, then read.
        let gd_start = header.gd_offset * SECTOR;
        let gd_end = gd_start.saturating_add(entries * 4);
        if entries > 0 && (gd_start == 0 || gd_end > file_len) {
            return Err(VmdkError::corrupt(
                file,
                format!(
                    "grain directory ({entries} entries at sector {}) lies outside the file ({file_len} bytes)",
                    header.gd_offset
                ),
            ));
        }
        let mut raw = vec![0u8; (entries * 4) as usize];
        source
            .read_exact_at(&mut raw, gd_start)
            .map_err(|e| VmdkError::io(file, "cannot read the grain directory", e))?;
        let gd: Vec<u32> =
            raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        drop(raw);

        // Grain tables: inside the file, clear of the header, the embedded descriptor, the
        // directory and each other (a table over metadata is how loops are built).
        let gt_bytes = gtes * 4;
        let descriptor = (header.descriptor_offset != 0).then(|| {
            let start = header.descriptor_offset * SECTOR;
            (start, start.saturating_add(header.descriptor_size * SECTOR))
        });
        let mut tables: Vec<(u32, u32)> = Vec::new();
        for (index, &sector) in gd.iter().enumerate() {
            if sector == 0 {
                continue;
            }
            let start = u64::from(sector) * SECTOR;
            let range = (start, start + gt_bytes);
            let what = if range.1 > file_len {
                Some(format!("lies past the end of the file ({file_len} bytes)"))
            } else if ranges_overlap(range, (0, SECTOR)) {
                Some("overlaps the header".to_owned())
            } else if ranges_overlap(range, (gd_start, gd_end)) {
                Some("overlaps the grain directory".to_owned())
            } else if descriptor.is_some_and(|d| ranges_overlap(range, d)) {
                Some("overlaps the embedded descriptor".to_owned())
            } else {
                None
            };
            if let Some(what) = what {
                return Err(VmdkError::corrupt(
                    file,
                    format!("grain directory entry {index} points at a grain table at sector {sector} that {what}"),
                ));
            }
            tables.push((sector, index as u32));
        }
        tables.sort_unstable();
        for pair in tables.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if u64::from(a.0) * SECTOR + gt_bytes > u64::from(b.0) * SECTOR {
                return Err(VmdkError::corrupt(
                    file,
                    format!(
                        "grain directory entries {} and {} point at overlapping grain tables (sectors {} and {})",
                        a.1.min(b.1),
                        a.1.max(b.1),
                        a.0,
                        b.0
                    ),
                ));
            }
        }
        drop(tables);

        Ok(SparseExtent {
            file: file.to_owned(),
            source,
            file_len,
            compressed: header.compressed(),
            header,
            extent_bytes,
            grain_bytes,
            gtes,
            gd,
            state: Mutex::new(State {
                tables: Vec::new(),
                victim: 0,
                grain: None,
                compressed: Vec::new(),
                inflater: None,
            }),
        })
    }

    pub(crate) fn header(&self) -> &SparseHeader {
        &self.header
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The grain table of directory entry `index`, `None` if the entry is 0 (nothing
    /// allocated). Loaded tables are checked: every entry for a grain inside the extent points
    /// inside the file.
    fn table(&self, index: usize) -> Result<Option<Table>, VmdkError> {
        let sector = self.gd[index];
        if sector == 0 {
            return Ok(None);
        }
        if let Some((_, table)) = self.lock().tables.iter().find(|(i, _)| *i == index) {
            return Ok(Some(Arc::clone(table)));
        }
        let mut raw = vec![0u8; (self.gtes * 4) as usize];
        self.source.read_exact_at(&mut raw, u64::from(sector) * SECTOR).map_err(|e| {
            VmdkError::io(&self.file, format!("cannot read the grain table at sector {sector}"), e)
        })?;
        let table: Table =
            raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let first_grain = index as u64 * self.gtes;
        for (j, &entry) in table.iter().enumerate() {
            let grain = first_grain + j as u64;
            let grain_start = grain * self.grain_bytes;
            if grain_start >= self.extent_bytes {
                break;
            }
            let Grain::At(at) = classify(entry) else { continue };
            let need = if self.compressed {
                GRAIN_MARKER_LEN
            } else {
                self.grain_bytes.min(self.extent_bytes - grain_start)
            };
            if at * SECTOR + need > self.file_len {
                return Err(VmdkError::corrupt(
                    &self.file,
                    format!(
                        "grain {grain} (grain table at sector {sector}, entry {j}) points at sector {at}, \
                         past the end of the file ({} bytes)",
                        self.file_len
                    ),
                ));
            }
        }
        let mut state = self.lock();
        if state.tables.len() < TABLE_CACHE {
            state.tables.push((index, Arc::clone(&table)));
        } else {
            let victim = state.victim;
            state.tables[victim] = (index, Arc::clone(&table));
            state.victim = (victim + 1) % TABLE_CACHE;
        }
        Ok(Some(table))
    }

    /// Reads `buf` from extent byte `offset`; unallocated ranges go to `parent` (with extent
    /// byte offsets). The caller keeps the range inside the extent.
    pub(crate) fn read(
        &self,
        buf: &mut [u8],
        offset: u64,
        parent: &mut Parent<'_>,
    ) -> Result<(), VmdkError> {
        // A run of grains read alike: (kind, start in buf, length, file offset of its start).
        struct Run {
            kind: Grain,
            start: usize,
            len: usize,
            file_offset: u64,
        }
        let mut run: Option<Run> = None;
        let flush = |run: Option<Run>,
                     buf: &mut [u8],
                     parent: &mut Parent<'_>|
         -> Result<(), VmdkError> {
            let Some(run) = run else { return Ok(()) };
            let piece = &mut buf[run.start..run.start + run.len];
            match run.kind {
                Grain::Unallocated => parent(piece, offset + run.start as u64),
                Grain::Zero => {
                    piece.fill(0);
                    Ok(())
                }
                Grain::At(_) => self.source.read_exact_at(piece, run.file_offset).map_err(|e| {
                    VmdkError::io(
                        &self.file,
                        format!(
                            "cannot read {} bytes of grains at offset {}",
                            run.len, run.file_offset
                        ),
                        e,
                    )
                }),
            }
        };

        let mut current: Option<(usize, Option<Table>)> = None;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / self.grain_bytes;
            let in_grain = pos % self.grain_bytes;
            let n = (self.grain_bytes - in_grain).min((buf.len() - done) as u64) as usize;
            let index = (grain / self.gtes) as usize;
            if current.as_ref().is_none_or(|(i, _)| *i != index) {
                current = Some((index, self.table(index)?));
            }
            let entry = match current.as_ref().and_then(|(_, t)| t.as_ref()) {
                Some(table) => table[(grain % self.gtes) as usize],
                None => GTE_UNALLOCATED,
            };
            let kind = classify(entry);
            if let (Grain::At(at), true) = (kind, self.compressed) {
                flush(run.take(), buf, parent)?;
                self.read_compressed(grain, at, &mut buf[done..done + n], in_grain as usize)?;
            } else {
                let file_offset = match kind {
                    Grain::At(at) => at * SECTOR + in_grain,
                    _ => 0,
                };
                let extends = run.as_ref().is_some_and(|r| match (r.kind, kind) {
                    (Grain::At(_), Grain::At(_)) => r.file_offset + r.len as u64 == file_offset,
                    (a, b) => a == b,
                });
                if extends {
                    if let Some(r) = run.as_mut() {
                        r.len += n;
                    }
                } else {
                    flush(run.take(), buf, parent)?;
                    run = Some(Run { kind, start: done, len: n, file_offset });
                }
            }
            done += n;
        }
        flush(run, buf, parent)
    }

    /// Copies from compressed grain `grain` (marker at `sector`), inflating it unless it is the
    /// last one inflated.
    fn read_compressed(
        &self,
        grain: u64,
        sector: u64,
        dst: &mut [u8],
        in_grain: usize,
    ) -> Result<(), VmdkError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some((g, bytes)) = &state.grain {
            if *g == grain {
                dst.copy_from_slice(&bytes[in_grain..in_grain + dst.len()]);
                return Ok(());
            }
        }
        let start = sector * SECTOR;
        let mut marker = [0u8; GRAIN_MARKER_LEN as usize];
        self.source.read_exact_at(&mut marker, start).map_err(|e| {
            VmdkError::io(&self.file, format!("cannot read the grain marker at sector {sector}"), e)
        })?;
        let lba = u64_at(&marker, 0);
        let size = u64::from(u32::from_le_bytes([marker[8], marker[9], marker[10], marker[11]]));
        let expected_lba = grain * self.header.grain_size;
        if size == 0 {
            return Err(VmdkError::corrupt(
                &self.file,
                format!("grain {grain} points at sector {sector}, which holds a metadata marker, not a grain"),
            ));
        }
        if lba != expected_lba {
            return Err(VmdkError::corrupt(
                &self.file,
                format!("grain {grain} points at sector {sector}, which holds the grain for LBA {lba}, not {expected_lba}"),
            ));
        }
        let max = 2 * self.grain_bytes + 4096;
        if size > max {
            return Err(VmdkError::corrupt(
                &self.file,
                format!("compressed grain {grain} at sector {sector} claims {size} bytes, more than {max}"),
            ));
        }
        let data_start = start + GRAIN_MARKER_LEN;
        if data_start + size > self.file_len {
            return Err(VmdkError::corrupt(
                &self.file,
                format!("compressed grain {grain} at sector {sector} ({size} bytes) runs past the end of the file"),
            ));
        }
        state.compressed.resize(size as usize, 0);
        self.source.read_exact_at(&mut state.compressed, data_start).map_err(|e| {
            VmdkError::io(&self.file, format!("cannot read compressed grain {grain}"), e)
        })?;
        let mut out = match state.grain.take() {
            Some((_, mut bytes)) => {
                bytes.fill(0);
                bytes
            }
            None => vec![0u8; self.grain_bytes as usize],
        };
        let inflater = state.inflater.get_or_insert_with(|| Decompress::new(true));
        let produced = inflate(inflater, &state.compressed, &mut out).map_err(|reason| {
            VmdkError::corrupt(
                &self.file,
                format!("compressed grain {grain} at sector {sector}: {reason}"),
            )
        })?;
        let needed = self.grain_bytes.min(self.extent_bytes - grain * self.grain_bytes) as usize;
        if produced < needed {
            return Err(VmdkError::corrupt(
                &self.file,
                format!("compressed grain {grain} at sector {sector} inflates to {produced} bytes, expected {needed}"),
            ));
        }
        dst.copy_from_slice(&out[in_grain..in_grain + dst.len()]);
        state.grain = Some((grain, out));
        Ok(())
    }

    /// Calls `f(offset, len, zero)` for each allocated grain in order (extent byte offsets).
    pub(crate) fn visit_allocated(
        &self,
        f: &mut dyn FnMut(u64, u64, bool),
    ) -> Result<(), VmdkError> {
        for index in 0..self.gd.len() {
            let Some(table) = self.table(index)? else { continue };
            for (j, &entry) in table.iter().enumerate() {
                let start = (index as u64 * self.gtes + j as u64) * self.grain_bytes;
                if start >= self.extent_bytes {
                    break;
                }
                let len = self.grain_bytes.min(self.extent_bytes - start);
                match classify(entry) {
                    Grain::Unallocated => {}
                    Grain::Zero => f(start, len, true),
                    Grain::At(_) => f(start, len, false),
                }
            }
        }
        Ok(())
    }
}

/// Inflates one zlib stream into `out`, refusing one that would produce more. Returns the bytes
/// produced. (`FlushDecompress::None` throughout: with `Finish`, a stream that does not fit
/// the first call cannot be continued.)
fn inflate(d: &mut Decompress, input: &[u8], out: &mut [u8]) -> Result<usize, String> {
    d.reset(true);
    let invalid = |e: flate2::DecompressError| format!("invalid zlib data: {e}");
    loop {
        let (consumed, produced) = (d.total_in() as usize, d.total_out() as usize);
        let status = d
            .decompress(
                &input[consumed.min(input.len())..],
                &mut out[produced..],
                FlushDecompress::None,
            )
            .map_err(invalid)?;
        let now = d.total_out() as usize;
        if status == Status::StreamEnd {
            return Ok(now);
        }
        if now == out.len() {
            break;
        }
        if d.total_in() as usize == consumed && now == produced {
            return Err("zlib stream is truncated".to_owned());
        }
    }
    // The grain is full: the stream must end here.
    let full = out.len();
    let mut extra = [0u8; 1];
    loop {
        let consumed = d.total_in() as usize;
        let status = d
            .decompress(&input[consumed.min(input.len())..], &mut extra, FlushDecompress::None)
            .map_err(invalid)?;
        if d.total_out() as usize > full {
            return Err(format!("inflates to more than the grain size ({full} bytes)"));
        }
        if status == Status::StreamEnd {
            return Ok(full);
        }
        if d.total_in() as usize == consumed {
            return Err("zlib stream is truncated".to_owned());
        }
    }
}
