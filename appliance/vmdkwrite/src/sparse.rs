//! monolithicSparse: a version 1 hosted sparse extent with its descriptor embedded.

use std::io::{Seek, SeekFrom, Write};

use crate::descriptor::descriptor;
use crate::layout::{Header, Layout, FLAG_NL_DETECT, FLAG_RGD, GT_BYTES, GT_SECTORS};
use crate::scan::{scan, Event};
use crate::{
    capacity_for, ReadAt, VmdkOptions, VmdkWriteError, WriteReport, GRAIN_SECTORS, GTES_PER_GT,
    SECTOR,
};

/// Sectors VMware reserves for an embedded descriptor.
const DESCRIPTOR_SECTORS: u64 = 20;

/// Where everything goes, in sectors from the start of the file.
#[derive(Debug, Clone, Copy)]
struct Places {
    descriptor_sectors: u64,
    rgd: u64,
    rgt0: u64,
    gd: u64,
    gt0: u64,
    overhead: u64,
}

impl Places {
    fn new(layout: &Layout, descriptor_bytes: usize) -> Self {
        let descriptor_sectors = DESCRIPTOR_SECTORS.max((descriptor_bytes as u64).div_ceil(SECTOR));
        let rgd = 1 + descriptor_sectors;
        let rgt0 = rgd + layout.gd_sectors;
        let gd = rgt0 + layout.tables * GT_SECTORS;
        let gt0 = gd + layout.gd_sectors;
        let overhead = (gt0 + layout.tables * GT_SECTORS).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        Places { descriptor_sectors, rgd, rgt0, gd, gt0, overhead }
    }
}

fn werr(e: std::io::Error) -> VmdkWriteError {
    VmdkWriteError::Write(e)
}

fn seek_to<W: Seek>(out: &mut W, sector: u64) -> Result<(), VmdkWriteError> {
    out.seek(SeekFrom::Start(sector * SECTOR)).map(drop).map_err(werr)
}

/// Write a grain directory at `at` whose entry `i` is `first_gt + i * GT_SECTORS`, padded
/// with zeros to whole sectors, a 64 KiB piece at a time.
fn write_directory<W: Write + Seek>(
    out: &mut W,
    layout: &Layout,
    at: u64,
    first_gt: u64,
) -> Result<(), VmdkWriteError> {
    seek_to(out, at)?;
    let total = (layout.gd_sectors * SECTOR) as usize;
    let mut piece = Vec::with_capacity(64 << 10);
    let mut written = 0usize;
    let mut table = 0u64;
    while written < total {
        piece.clear();
        while piece.len() < (64 << 10) && written + piece.len() < total {
            // first_gt + tables * 4 sectors is a few million at most: it fits u32.
            let entry =
                if table < layout.tables { (first_gt + table * GT_SECTORS) as u32 } else { 0 };
            piece.extend_from_slice(&entry.to_le_bytes());
            table += 1;
        }
        out.write_all(&piece).map_err(werr)?;
        written += piece.len();
    }
    Ok(())
}

/// Write `source` to `out` as a monolithicSparse VMDK (see the crate documentation for the
/// layout), with absolute seeks from offset 0. A capacity not a multiple of 512 is rounded
/// up.
///
/// `out` must start **empty** (a new file, an empty `Cursor<Vec<u8>>`): all-zero grains and
/// grain tables with no allocated grain are not written, the writer seeks over them and
/// relies on what it skipped reading as zeros (a hole in a file, zero fill in a `Vec`).
/// Old bytes there would be read as table entries.
pub fn write_monolithic_sparse<W: Write + Seek>(
    source: &dyn ReadAt,
    out: &mut W,
    opts: &VmdkOptions,
) -> Result<WriteReport, VmdkWriteError> {
    let capacity_bytes = capacity_for(source.len())?;
    let layout = Layout::new(capacity_bytes);
    let text = descriptor("monolithicSparse", layout.sectors, opts)?;
    let places = Places::new(&layout, text.len());

    // Sector 0 stays zeros until the end; then the descriptor, padded.
    seek_to(out, 0)?;
    out.write_all(&[0u8; SECTOR as usize]).map_err(werr)?;
    let mut desc = text.into_bytes();
    desc.resize((places.descriptor_sectors * SECTOR) as usize, 0);
    out.write_all(&desc).map_err(werr)?;

    // Both directories point at every (reserved) table.
    write_directory(out, &layout, places.rgd, places.rgt0)?;
    write_directory(out, &layout, places.gd, places.gt0)?;
    // The file reaches the first grain even if no grain (or table) is ever written. The
    // last sector before it may belong to the last grain table: written later if needed.
    seek_to(out, places.overhead - 1)?;
    out.write_all(&[0u8; SECTOR as usize]).map_err(werr)?;

    let mut next_grain = places.overhead;
    let mut gt = vec![0u8; GT_BYTES];
    let mut gt_used = false;
    // Whether `out` stands at `next_grain` (grains are appended back to back; only writing
    // a table moves it away).
    let mut at_next = false;
    let mut grains_written = 0u64;
    let mut tables_written = 0u64;
    let bytes_read = scan(source, &layout, |event| match event {
        Event::Grain { index, data } => {
            if next_grain + GRAIN_SECTORS > 1 << 32 {
                return Err(VmdkWriteError::FileTooLarge {
                    lba: index * GRAIN_SECTORS,
                    file_sector: next_grain,
                });
            }
            if !at_next {
                seek_to(out, next_grain)?;
                at_next = true;
            }
            out.write_all(data).map_err(werr)?;
            let slot = (index % GTES_PER_GT) as usize * 4;
            gt[slot..slot + 4].copy_from_slice(&(next_grain as u32).to_le_bytes());
            gt_used = true;
            next_grain += GRAIN_SECTORS;
            grains_written += 1;
            Ok(())
        }
        Event::TableEnd { table } => {
            if gt_used {
                seek_to(out, places.gt0 + table * GT_SECTORS)?;
                out.write_all(&gt).map_err(werr)?;
                seek_to(out, places.rgt0 + table * GT_SECTORS)?;
                out.write_all(&gt).map_err(werr)?;
                at_next = false;
                gt.fill(0);
                gt_used = false;
                tables_written += 1;
            }
            Ok(())
        }
    })?;

    let header = Header {
        version: 1,
        flags: FLAG_NL_DETECT | FLAG_RGD,
        capacity: layout.sectors,
        descriptor_offset: 1,
        descriptor_size: places.descriptor_sectors,
        rgd_offset: places.rgd,
        gd_offset: places.gd,
        overhead: places.overhead,
        compress_algorithm: 0,
    };
    seek_to(out, 0)?;
    out.write_all(&header.encode()).map_err(werr)?;
    out.flush().map_err(werr)?;
    Ok(WriteReport {
        capacity_bytes,
        grains_total: layout.grains,
        grains_written,
        tables_written,
        bytes_read,
        file_bytes: next_grain * SECTOR,
    })
}
