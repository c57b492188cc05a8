//! Sizes derived from the capacity, and the 512-byte sparse extent header.

use crate::{GRAIN_SECTORS, GTES_PER_GT, SECTOR};

/// "KDMV" read as a little-endian u32.
pub(crate) const MAGIC: u32 = 0x564d_444b;
/// Header flag: the newline-detection characters are valid.
pub(crate) const FLAG_NL_DETECT: u32 = 1;
/// Header flag: a redundant grain directory is present.
pub(crate) const FLAG_RGD: u32 = 1 << 1;
/// Header flag: grains are compressed.
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
/// Header flag: the stream has markers.
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;
/// `gdOffset` of a stream header: the directory's place is in the footer.
pub(crate) const GD_AT_END: u64 = u64::MAX;
/// `compressAlgorithm`: deflate (zlib stream).
pub(crate) const COMPRESS_DEFLATE: u16 = 1;
/// Bytes in one grain table.
pub(crate) const GT_BYTES: usize = GTES_PER_GT as usize * 4;
/// Sectors in one grain table.
pub(crate) const GT_SECTORS: u64 = GT_BYTES as u64 / SECTOR;

/// Marker types (stream format).
pub(crate) const MARKER_EOS: u32 = 0;
pub(crate) const MARKER_GT: u32 = 1;
pub(crate) const MARKER_GD: u32 = 2;
pub(crate) const MARKER_FOOTER: u32 = 3;

/// How many grains and tables a capacity needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The capacity in sectors.
    pub(crate) sectors: u64,
    /// Grains covering it (the last may be partly past the end).
    pub(crate) grains: u64,
    /// Grain tables covering the grains (the last may be partly unused).
    pub(crate) tables: u64,
    /// Sectors of one grain directory (4 bytes per table, rounded up).
    pub(crate) gd_sectors: u64,
}

impl Layout {
    /// The layout of a capacity of `capacity_bytes` (a multiple of 512).
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let sectors = capacity_bytes / SECTOR;
        let grains = sectors.div_ceil(GRAIN_SECTORS);
        let tables = grains.div_ceil(GTES_PER_GT);
        let gd_sectors = (tables * 4).div_ceil(SECTOR);
        Layout { sectors, grains, tables, gd_sectors }
    }
}

/// The fields of a sparse extent header (VMware "Virtual Disk Format", `SparseExtentHeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) flags: u32,
    pub(crate) capacity: u64,
    pub(crate) descriptor_offset: u64,
    pub(crate) descriptor_size: u64,
    pub(crate) rgd_offset: u64,
    pub(crate) gd_offset: u64,
    pub(crate) overhead: u64,
    pub(crate) compress_algorithm: u16,
}

impl Header {
    /// The 512 bytes on disk, little-endian, packed.
    pub(crate) fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        // 72: uncleanShutdown = 0; 73..77: the newline-detection characters.
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }
}

/// A 512-byte metadata marker (stream format): `val` sectors of `kind` follow.
pub(crate) fn marker(val: u64, kind: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..8].copy_from_slice(&val.to_le_bytes());
    // 8..12: size = 0 marks a metadata marker.
    b[12..16].copy_from_slice(&kind.to_le_bytes());
    b
}
