//! Writing a disk image as a VMware VMDK, and the OVF descriptor that imports it.
//!
//! The disk is given as a [`ReadAt`] source of bytes; the writers stream it one grain
//! (64 KiB) at a time into any [`std::io::Write`], so memory stays bounded whatever the
//! disk's size. Two formats, both "hosted sparse extents" with an embedded descriptor,
//! grain size 128 sectors (64 KiB) and 512 entries per grain table (one table covers
//! 32 MiB):
//!
//! - [`write_monolithic_sparse`]: version 1, `createType="monolithicSparse"`, for
//!   Workstation/Player and for `qemu-img`. The metadata is laid out up front from the
//!   capacity alone: header, descriptor (20 sectors), redundant grain directory, redundant
//!   grain tables, grain directory, grain tables, padding to a grain boundary; then the
//!   grains that hold data, appended in disk order. Grains that are all zeros stay
//!   unallocated, and so does a grain table whose grains are all unallocated (the writer
//!   seeks over it: on a file that leaves a hole). The header is written last, so an
//!   interrupted write leaves a file that no tool takes for a VMDK.
//! - [`write_stream_optimized`]: version 3, `createType="streamOptimized"`, the form OVF
//!   packages carry and ESXi imports. Written strictly forwards (no seeking): header with
//!   `gdOffset` = `GD_AT_END`, descriptor, padding to sector 128, then each data grain as a
//!   grain marker followed by its zlib-compressed bytes, each grain table that has an entry
//!   (after its grains) behind a grain-table marker, the grain directory behind its marker,
//!   the footer (the header again, with the directory's offset) behind its marker, and the
//!   end-of-stream marker.
//!
//! [`ovf_descriptor`] renders a minimal OVF 1.0 envelope for one VM with that disk on an
//! LSI Logic SCSI controller, UEFI firmware and, with a `ProductSection`, the OVF
//! environment transports. [`ovfenv`] reads that environment back in the guest and turns
//! the deployment's properties into the appliance's configuration file.
//!
//! # Capacity
//!
//! A VMDK's capacity is a whole number of 512-byte sectors. A source whose length is not a
//! multiple of 512 is **rounded up**: the virtual disk is `len` rounded up to the next
//! sector, and the bytes past the source's end read as zeros ([`capacity_for`]). The last
//! grain is likewise padded with zeros up to 64 KiB inside the file. An empty source is an
//! error ([`VmdkWriteError::Empty`]: no tool opens a VMDK of capacity 0), and so is one
//! longer than [`MAX_CAPACITY`] (64 TiB; [`VmdkWriteError::TooLarge`]). Grain table entries
//! are 32-bit sector numbers, so the *file* can address at most 2 TiB: a disk with more
//! non-zero data than that fails with [`VmdkWriteError::FileTooLarge`] (VMware's own hosted
//! sparse disks have the same limit).
//!
//! # Memory
//!
//! One grain buffer (64 KiB), one grain table (2 KiB) and, for streamOptimized, the
//! compressed grain and the grain directory (4 bytes per 32 MiB of capacity: 8 MiB at
//! 64 TiB, since the directory goes at the end of the stream) are held at once.
//!
//! # Holes
//!
//! [`ReadAt::data_ranges`] lets a source say where its data can be (a sparse file's
//! extents, a replica's written map); the writers never read elsewhere and treat the rest
//! as zeros. Inside those ranges they still check each grain and skip the zero ones.
//!
//! # Descriptor
//!
//! `CID` is [`VmdkOptions::cid`] or, by default, derived from the capacity, the create
//! type and the extent file name (so the same input gives the same bytes); `parentCID` is
//! `ffffffff` (no parent); `ddb.adapterType = "lsilogic"`; the geometry is the one VMware
//! uses for SCSI disks ([`geometry`]).

#![forbid(unsafe_code)]

mod descriptor;
mod layout;
pub mod ova;
mod ovf;
pub mod ovfenv;
mod scan;
mod source;
mod sparse;
mod stream;

pub use descriptor::{geometry, Geometry};
pub use ovf::{
    ovf_descriptor, xml_escape, OvfProperty, OvfVm, ProductSection, STREAM_OPTIMIZED_FORMAT_URI,
};
#[cfg(unix)]
pub use source::FileSource;
pub use source::ReadAt;
pub use sparse::write_monolithic_sparse;
pub use stream::write_stream_optimized;

/// Bytes in a sector.
pub const SECTOR: u64 = 512;
/// Sectors in a grain.
pub const GRAIN_SECTORS: u64 = 128;
/// Bytes in a grain (64 KiB).
pub const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Entries in one grain table.
pub const GTES_PER_GT: u64 = 512;
/// The largest capacity the writers accept: 64 TiB.
pub const MAX_CAPACITY: u64 = 64 << 40;

/// What a write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// The virtual disk's size: the source's length rounded up to a sector.
    pub capacity_bytes: u64,
    /// Grains the capacity spans.
    pub grains_total: u64,
    /// Grains written (the others are unallocated: zeros).
    pub grains_written: u64,
    /// Grain tables written (one per 32 MiB that holds any data).
    pub tables_written: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// The VMDK file's size in bytes (what the OVF `References` need).
    pub file_bytes: u64,
}

/// Settings that go into the embedded descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkOptions {
    /// The extent's file name as the descriptor names it: the name the VMDK file will
    /// have (and the OVF's `ovf:href`). No path separators, quotes or control characters;
    /// at most 255 bytes.
    pub file_name: String,
    /// The content id; `None` derives one from the capacity, create type and file name.
    pub cid: Option<u32>,
    /// `ddb.virtualHWVersion`: the oldest virtual hardware that may use the disk.
    pub virtual_hw_version: u32,
}

impl Default for VmdkOptions {
    fn default() -> Self {
        VmdkOptions { file_name: "disk.vmdk".to_string(), cid: None, virtual_hw_version: 4 }
    }
}

impl VmdkOptions {
    /// Options for a file named `file_name`, the rest default.
    pub fn named(file_name: impl Into<String>) -> Self {
        VmdkOptions { file_name: file_name.into(), ..VmdkOptions::default() }
    }
}

/// Why a VMDK could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VmdkWriteError {
    /// The source has no bytes.
    #[error("the source is empty: a VMDK needs a capacity of at least one sector")]
    Empty,
    /// The source is longer than [`MAX_CAPACITY`].
    #[error("the source is {bytes} bytes; this writer supports at most {max} bytes (64 TiB)")]
    TooLarge {
        /// The source's length.
        bytes: u64,
        /// [`MAX_CAPACITY`].
        max: u64,
    },
    /// The zlib level is not 0..=9.
    #[error("compression level {0} is out of range (0 to 9)")]
    Level(u32),
    /// The extent file name cannot go into a descriptor.
    #[error("extent file name {name:?} is not usable: {why}")]
    FileName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The source failed a read.
    #[error("reading {len} bytes of the source at offset {offset}: {source}")]
    Read {
        /// Where the read started.
        offset: u64,
        /// How many bytes it asked for.
        len: usize,
        /// The source's error.
        source: std::io::Error,
    },
    /// The output failed a write or a seek.
    #[error("writing the VMDK: {0}")]
    Write(#[source] std::io::Error),
    /// The data to allocate goes past the 2 TiB that 32-bit grain-table entries can
    /// address inside the file.
    #[error(
        "the grain at disk sector {lba} would start at file sector {file_sector}, past what a \
         32-bit grain table entry can address (the VMDK file is limited to 2 TiB)"
    )]
    FileTooLarge {
        /// The grain's first sector on the virtual disk.
        lba: u64,
        /// Where in the file it would go, in sectors.
        file_sector: u64,
    },
    /// zlib failed (it does not, on a buffer it was given room for).
    #[error("compressing the grain at sector {lba}: {msg}")]
    Compress {
        /// The grain's first sector on the virtual disk.
        lba: u64,
        /// zlib's message.
        msg: String,
    },
}

/// The capacity a source of `len` bytes gets: `len` rounded up to a whole sector.
///
/// Errors: [`VmdkWriteError::Empty`] for 0, [`VmdkWriteError::TooLarge`] past
/// [`MAX_CAPACITY`].
pub fn capacity_for(len: u64) -> Result<u64, VmdkWriteError> {
    if len == 0 {
        return Err(VmdkWriteError::Empty);
    }
    if len > MAX_CAPACITY {
        return Err(VmdkWriteError::TooLarge { bytes: len, max: MAX_CAPACITY });
    }
    Ok(len.div_ceil(SECTOR) * SECTOR)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testreader;
#[cfg(test)]
mod tests;
