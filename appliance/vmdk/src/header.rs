//! The hosted sparse extent header ("KDMV", VMDK 5.0 spec §"Hosted Sparse Extent Header"),
//! streamOptimized markers and the footer. Pure: bytes in, checked values out.

use crate::error::{shown, VmdkError};
use crate::{
    CAPACITY_MAX_BYTES, DESCRIPTOR_MAX, GD_ENTRIES_MAX, GRAIN_SECTORS_MAX, GTES_PER_GT_MAX, SECTOR,
};

/// Length of the header on disk (one sector).
pub const SPARSE_HEADER_LEN: usize = 512;
/// `gdOffset` of a streamOptimized header whose grain directory is found via the footer.
pub const GD_AT_END: u64 = u64::MAX;

pub(crate) const MAGIC: [u8; 4] = *b"KDMV";
pub(crate) const COWD_MAGIC: [u8; 4] = *b"COWD";

pub(crate) const FLAG_NEWLINE_TEST: u32 = 1 << 0;
pub(crate) const FLAG_REDUNDANT_GD: u32 = 1 << 1;
pub(crate) const FLAG_ZEROED_GTE: u32 = 1 << 2;
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;
const FLAGS_KNOWN: u32 =
    FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GD | FLAG_ZEROED_GTE | FLAG_COMPRESSED | FLAG_MARKERS;

pub(crate) const COMPRESSION_NONE: u16 = 0;
pub(crate) const COMPRESSION_DEFLATE: u16 = 1;

pub(crate) const MARKER_EOS: u32 = 0;
pub(crate) const MARKER_FOOTER: u32 = 3;
/// The size of a marker's fixed part (`val` u64, `size` u32), before a grain's data.
pub(crate) const GRAIN_MARKER_LEN: u64 = 12;
/// Bytes of a streamOptimized tail: footer marker, footer, end-of-stream marker.
pub(crate) const STREAM_TAIL_LEN: u64 = 3 * SECTOR;

/// A checked hosted sparse extent header. Offsets and sizes are in sectors, as on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// 1, 2 or 3.
    pub version: u32,
    pub flags: u32,
    /// Sectors of disk the extent holds.
    pub capacity: u64,
    /// Sectors per grain: a power of two, at most [`GRAIN_SECTORS_MAX`].
    pub grain_size: u64,
    /// Sector of the embedded descriptor, 0 if none.
    pub descriptor_offset: u64,
    /// Sectors of the embedded descriptor.
    pub descriptor_size: u64,
    pub gtes_per_gt: u32,
    /// Redundant grain directory; read but never used.
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`] (see the footer).
    pub gd_offset: u64,
    pub overhead: u64,
    pub unclean_shutdown: bool,
    /// 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl SparseHeader {
    /// Parses and checks the first [`SPARSE_HEADER_LEN`] bytes of `bytes`. `file` only names the
    /// extent in errors.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<SparseHeader, VmdkError> {
        if bytes.len() < 4 {
            return Err(VmdkError::truncated(
                file,
                "sparse extent header",
                512,
                bytes.len() as u64,
            ));
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic == COWD_MAGIC {
            return Err(VmdkError::CowdNotSupported { file: shown(file) });
        }
        if magic != MAGIC {
            return Err(VmdkError::BadMagic { file: shown(file), found: magic });
        }
        if bytes.len() < SPARSE_HEADER_LEN {
            return Err(VmdkError::truncated(
                file,
                "sparse extent header",
                512,
                bytes.len() as u64,
            ));
        }
        let b = &bytes[..SPARSE_HEADER_LEN];
        let header = SparseHeader {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 12),
            grain_size: u64_at(b, 20),
            descriptor_offset: u64_at(b, 28),
            descriptor_size: u64_at(b, 36),
            gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            overhead: u64_at(b, 64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16_at(b, 77),
        };
        if !(1..=3).contains(&header.version) {
            return Err(VmdkError::UnsupportedVersion {
                file: shown(file),
                version: header.version,
            });
        }
        let unknown = header.flags & !FLAGS_KNOWN;
        if unknown != 0 {
            return Err(VmdkError::UnsupportedFlags {
                file: shown(file),
                flags: header.flags,
                unknown,
            });
        }
        if header.flags & FLAG_NEWLINE_TEST != 0 && b[73..77] != *b"\n \r\n" {
            return Err(VmdkError::bad_header(
                file,
                "newline detection bytes are altered (the file went through a text-mode transfer?)",
            ));
        }
        match header.compress_algorithm {
            COMPRESSION_NONE if header.flags & FLAG_COMPRESSED != 0 => {
                return Err(VmdkError::bad_header(
                    file,
                    "the compressed flag is set but the compression algorithm is 0 (none)",
                ))
            }
            COMPRESSION_NONE | COMPRESSION_DEFLATE => {}
            algorithm => {
                return Err(VmdkError::UnsupportedCompression { file: shown(file), algorithm })
            }
        }
        if header.compressed() && header.flags & FLAG_MARKERS == 0 {
            return Err(VmdkError::bad_header(
                file,
                "compressed grains without markers are not supported",
            ));
        }
        let capacity_bytes = u128::from(header.capacity) * u128::from(SECTOR);
        if capacity_bytes > u128::from(CAPACITY_MAX_BYTES) {
            return Err(VmdkError::CapacityTooLarge { file: shown(file), bytes: capacity_bytes });
        }
        if header.grain_size == 0
            || !header.grain_size.is_power_of_two()
            || header.grain_size > GRAIN_SECTORS_MAX
        {
            return Err(VmdkError::bad_header(
                file,
                format!(
                    "grain size of {} sectors is not a power of two from 1 to {GRAIN_SECTORS_MAX}",
                    header.grain_size
                ),
            ));
        }
        if header.gtes_per_gt == 0 || header.gtes_per_gt > GTES_PER_GT_MAX {
            return Err(VmdkError::bad_header(
                file,
                format!(
                    "{} grain table entries per grain table, expected 1 to {GTES_PER_GT_MAX}",
                    header.gtes_per_gt
                ),
            ));
        }
        let entries = header.gd_entries();
        if entries > GD_ENTRIES_MAX {
            return Err(VmdkError::GrainDirectoryTooLarge { file: shown(file), entries });
        }
        if header.gd_offset != GD_AT_END && header.gd_offset == 0 && entries > 0 {
            return Err(VmdkError::bad_header(
                file,
                "the grain directory is at sector 0, over the header",
            ));
        }
        if header.gd_offset != GD_AT_END && header.gd_offset.checked_mul(SECTOR).is_none() {
            return Err(VmdkError::bad_header(
                file,
                format!("grain directory sector {} is out of range", header.gd_offset),
            ));
        }
        if header.descriptor_offset != 0 {
            let too_long = header
                .descriptor_size
                .checked_mul(SECTOR)
                .is_none_or(|bytes| bytes > DESCRIPTOR_MAX);
            if too_long {
                return Err(VmdkError::bad_header(
                    file,
                    format!(
                        "embedded descriptor of {} sectors is more than the limit of {DESCRIPTOR_MAX} bytes",
                        header.descriptor_size
                    ),
                ));
            }
            if header.descriptor_offset.checked_mul(SECTOR).is_none() {
                return Err(VmdkError::bad_header(
                    file,
                    format!(
                        "embedded descriptor sector {} is out of range",
                        header.descriptor_offset
                    ),
                ));
            }
        }
        Ok(header)
    }

    /// Whether grains are deflate-compressed (streamOptimized). As qemu does, the algorithm
    /// field alone is enough.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0 || self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// Whether grain table entry 1 means "a grain of zeros".
    pub fn zeroed_gte(&self) -> bool {
        self.flags & FLAG_ZEROED_GTE != 0
    }

    /// Grain directory entries needed to cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        let coverage = self.grain_size.saturating_mul(u64::from(self.gtes_per_gt)).max(1);
        self.capacity.div_ceil(coverage)
    }

    /// Bytes per grain.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }
}

/// Parses a streamOptimized tail: the last [`STREAM_TAIL_LEN`] bytes of the file, holding
/// the footer marker, the footer (a copy of the header with the real `gdOffset`) and the
/// end-of-stream marker. Returns the footer's header, which takes precedence over the first.
pub(crate) fn parse_stream_tail(file: &str, tail: &[u8]) -> Result<SparseHeader, VmdkError> {
    if tail.len() as u64 != STREAM_TAIL_LEN {
        return Err(VmdkError::truncated(
            file,
            "streamOptimized footer",
            STREAM_TAIL_LEN,
            tail.len() as u64,
        ));
    }
    let sector = SECTOR as usize;
    let (marker, rest) = tail.split_at(sector);
    let (footer, eos) = rest.split_at(sector);
    if u32_at(marker, 8) != 0 || u32_at(marker, 12) != MARKER_FOOTER {
        return Err(VmdkError::corrupt(
            file,
            "grain directory is at the end (GD_AT_END) but there is no footer marker 1536 bytes \
             before the end of the file",
        ));
    }
    if u64_at(eos, 0) != 0 || u32_at(eos, 8) != 0 || u32_at(eos, 12) != MARKER_EOS {
        return Err(VmdkError::corrupt(
            file,
            "streamOptimized file does not end with an end-of-stream marker",
        ));
    }
    let header = SparseHeader::parse(file, footer)?;
    if header.gd_offset == GD_AT_END {
        return Err(VmdkError::corrupt(
            file,
            "the footer's grain directory offset is also GD_AT_END",
        ));
    }
    Ok(header)
}
