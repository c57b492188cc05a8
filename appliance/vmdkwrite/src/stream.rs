//! streamOptimized: a version 3 sparse extent written strictly forwards, grains compressed.

use std::io::Write;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::descriptor::descriptor;
use crate::layout::{
    marker, Header, Layout, COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NL_DETECT,
    GD_AT_END, GT_BYTES, GT_SECTORS, MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT,
};
use crate::scan::{scan, Event};
use crate::{
    capacity_for, ReadAt, VmdkOptions, VmdkWriteError, WriteReport, GRAIN_BYTES, GRAIN_SECTORS,
    GTES_PER_GT, SECTOR,
};

/// Bytes of a grain marker before the compressed data: `lba: u64`, `size: u32`.
const GRAIN_MARKER_BYTES: usize = 12;

/// A writer that knows how far it has written.
struct Counted<'a, W: Write> {
    inner: &'a mut W,
    pos: u64,
}

impl<W: Write> Counted<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), VmdkWriteError> {
        self.inner.write_all(bytes).map_err(VmdkWriteError::Write)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// The current position in sectors (always sector-aligned between items).
    fn sector(&self) -> u64 {
        self.pos / SECTOR
    }

    /// Zeros up to the next sector boundary.
    fn pad(&mut self) -> Result<(), VmdkWriteError> {
        let rem = (self.pos % SECTOR) as usize;
        if rem != 0 {
            self.put(&[0u8; SECTOR as usize][rem..])?;
        }
        Ok(())
    }
}

/// Compress `data` (the grain at disk sector `lba`) into `buf` as a grain marker followed
/// by the zlib stream, padded with zeros to whole sectors.
fn compress_grain(
    z: &mut Compress,
    data: &[u8],
    lba: u64,
    buf: &mut Vec<u8>,
) -> Result<(), VmdkWriteError> {
    let fail = |msg: String| VmdkWriteError::Compress { lba, msg };
    z.reset();
    buf.clear();
    buf.extend_from_slice(&lba.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    // Room for incompressible data (deflate's stored blocks add 5 bytes per 64 KiB).
    buf.reserve(data.len() + 1024);
    // Each round either finishes or consumes input or gets more room: a handful suffice.
    for _ in 0..64 {
        let consumed = usize::try_from(z.total_in()).map_err(|e| fail(e.to_string()))?;
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(data.len() / 2 + 1024);
        }
        match z.compress_vec(&data[consumed.min(data.len())..], buf, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => {
                let size = (buf.len() - GRAIN_MARKER_BYTES) as u32;
                buf[8..12].copy_from_slice(&size.to_le_bytes());
                let padded = buf.len().div_ceil(SECTOR as usize) * SECTOR as usize;
                buf.resize(padded, 0);
                return Ok(());
            }
            Ok(Status::Ok | Status::BufError) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    Err(fail("deflate did not finish".to_string()))
}

/// Write `source` to `out` as a streamOptimized VMDK, compressing each grain with zlib at
/// `level` (0 = stored … 9 = best; 6 is zlib's default). `out` is only ever appended to,
/// so it can be a pipe or a socket. A capacity not a multiple of 512 is rounded up.
///
/// All-zero grains, and grain tables with no grain, are left out (their directory entry
/// is 0). The grain directory is kept in memory until the end: 4 bytes per 32 MiB.
pub fn write_stream_optimized<W: Write>(
    source: &dyn ReadAt,
    out: &mut W,
    level: u32,
    opts: &VmdkOptions,
) -> Result<WriteReport, VmdkWriteError> {
    let capacity_bytes = capacity_for(source.len())?;
    if level > 9 {
        return Err(VmdkWriteError::Level(level));
    }
    let layout = Layout::new(capacity_bytes);
    let text = descriptor("streamOptimized", layout.sectors, opts)?;
    let descriptor_sectors = (text.len() as u64).div_ceil(SECTOR);
    // The first grain starts on a grain boundary, as VMware's own streams do.
    let overhead = (1 + descriptor_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let mut header = Header {
        version: 3,
        flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: layout.sectors,
        descriptor_offset: 1,
        descriptor_size: descriptor_sectors,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead,
        compress_algorithm: COMPRESS_DEFLATE,
    };

    let mut out = Counted { inner: out, pos: 0 };
    out.put(&header.encode())?;
    out.put(text.as_bytes())?;
    let zeros = vec![0u8; SECTOR as usize];
    out.pad()?;
    while out.sector() < overhead {
        out.put(&zeros)?;
    }

    // tables ≤ 2^21 at 64 TiB: at most 8 MiB.
    let mut gd = vec![0u32; layout.tables as usize];
    let mut gt = vec![0u8; GT_BYTES];
    let mut gt_used = false;
    let mut z = Compress::new(Compression::new(level), true);
    let mut buf = Vec::with_capacity(GRAIN_BYTES as usize + 2048);
    let mut grains_written = 0u64;
    let mut tables_written = 0u64;
    let bytes_read = scan(source, &layout, |event| match event {
        Event::Grain { index, data } => {
            let lba = index * GRAIN_SECTORS;
            let at = out.sector();
            if at > u64::from(u32::MAX) {
                return Err(VmdkWriteError::FileTooLarge { lba, file_sector: at });
            }
            compress_grain(&mut z, data, lba, &mut buf)?;
            out.put(&buf)?;
            let slot = (index % GTES_PER_GT) as usize * 4;
            gt[slot..slot + 4].copy_from_slice(&(at as u32).to_le_bytes());
            gt_used = true;
            grains_written += 1;
            Ok(())
        }
        Event::TableEnd { table } => {
            if gt_used {
                out.put(&marker(GT_SECTORS, MARKER_GT))?;
                let at = out.sector();
                if at > u64::from(u32::MAX) {
                    return Err(VmdkWriteError::FileTooLarge {
                        lba: table * GTES_PER_GT * GRAIN_SECTORS,
                        file_sector: at,
                    });
                }
                gd[table as usize] = at as u32;
                out.put(&gt)?;
                gt.fill(0);
                gt_used = false;
                tables_written += 1;
            }
            Ok(())
        }
    })?;

    out.put(&marker(layout.gd_sectors, MARKER_GD))?;
    header.gd_offset = out.sector();
    let mut piece = Vec::with_capacity(64 << 10);
    for chunk in gd.chunks(16 << 10) {
        piece.clear();
        for entry in chunk {
            piece.extend_from_slice(&entry.to_le_bytes());
        }
        out.put(&piece)?;
    }
    out.pad()?;
    out.put(&marker(1, MARKER_FOOTER))?;
    out.put(&header.encode())?;
    out.put(&marker(0, MARKER_EOS))?;
    out.inner.flush().map_err(VmdkWriteError::Write)?;
    Ok(WriteReport {
        capacity_bytes,
        grains_total: layout.grains,
        grains_written,
        tables_written,
        bytes_read,
        file_bytes: out.pos,
    })
}
