//! A VMDK reader: VMware virtual disks (descriptor files, hosted sparse, streamOptimized and
//! flat extents, snapshot delta chains) read as a flat disk, plus the changed-grain map of a
//! snapshot delta. Written from VMware's "Virtual Disk Format 5.0" specification and checked
//! against `qemu-img`.
//!
//! Parsing does no I/O: [`SparseHeader::parse`] and [`Descriptor::parse`] take bytes. Files are
//! reached through two small traits, [`Source`] (a positioned reader) and [`Opener`] (resolves
//! extent and parent file names); [`fs`] implements them over `std::fs::File`, [`mem`] over
//! byte vectors.
//!
//! ```no_run
//! let disk = vmdk::fs::open(std::path::Path::new("/images/web01.vmdk"))?;
//! let mut first_mib = vec![0u8; 1 << 20];
//! disk.read_at(&mut first_mib, 0)?;
//! // The grains the top link (a snapshot delta) holds: its changed blocks.
//! for range in disk.allocated_extents()? {
//!     println!("{} +{} zero={}", range.offset, range.len, range.zero);
//! }
//! # Ok::<(), vmdk::VmdkError>(())
//! ```
//!
//! # What is supported
//!
//! The same table is available at run time from [`support_catalogue`].
//!
//! | Feature | Support |
//! |---|---|
//! | createType `monolithicSparse` | yes (embedded or separate descriptor) |
//! | createType `twoGbMaxExtentSparse` | yes |
//! | createType `monolithicFlat`, `twoGbMaxExtentFlat` | yes |
//! | createType `streamOptimized` | yes (footer / `GD_AT_END`, or GD in the header) |
//! | createType `vmfs` (ESXi `-flat.vmdk`) | yes (read as flat) |
//! | extent types `SPARSE`, `FLAT`, `VMFS`, `ZERO` | yes |
//! | sparse header versions 1, 2, 3 | yes (3's change tracking is ignored, as the spec allows) |
//! | flags: newline test, redundant GD (ignored), zeroed-grain GTE, compressed, markers | yes (grain table entry 1 reads as zeros, flag or not) |
//! | compression: none, deflate (zlib) | yes |
//! | snapshot chains via `parentFileNameHint` + `parentCID` | yes, CIDs checked, at most [`CHAIN_DEPTH_MAX`] links |
//! | a bare sparse extent with no descriptor | yes (no CID, no parent) |
//! | createType `vmfsSparse`, `seSparse`, `vmfsRaw`, `vmfsRawDeviceMap`, `vmfsPassthroughRawDeviceMap`, `fullDevice`, `partitionedDevice`, `custom`, ... | no: [`VmdkError::UnsupportedCreateType`] |
//! | extent types `VMFSSPARSE`, `SESPARSE`, `VMFSRDM`, `VMFSRAW`, ... | no: [`VmdkError::UnsupportedExtentType`] |
//! | `COWD` sparse extents (ESX redo logs) | no: [`VmdkError::CowdNotSupported`] |
//! | encryption (`encryption.*`, `ddb.encryption*` keys) | no: [`VmdkError::Encrypted`] |
//! | other header flags, versions, compression algorithms | no: [`VmdkError::UnsupportedFlags`], [`VmdkError::UnsupportedVersion`], [`VmdkError::UnsupportedCompression`] |
//! | compressed grains without markers | no: [`VmdkError::BadHeader`] |
//!
//! # Limits (hostile input)
//!
//! Every length read from an image is checked before it is used to allocate or to seek:
//! descriptors are at most [`DESCRIPTOR_MAX`] bytes, disks at most [`CAPACITY_MAX_BYTES`],
//! grain directories at most [`GD_ENTRIES_MAX`] entries, grains at most [`GRAIN_SECTORS_MAX`]
//! sectors (a compressed grain must inflate to at most one grain), chains at most
//! [`CHAIN_DEPTH_MAX`] links. Grain tables must lie inside the file and overlap neither the
//! header, the embedded descriptor, the grain directory nor each other; grain table entries
//! must point inside the file. Violations are [`VmdkError`]s, never panics.
//!
//! # Snapshot chains
//!
//! A link whose descriptor has `parentFileNameHint` is a delta: grains it does not hold (grain
//! table entry 0) are read from its parent, and past the end of the chain they read as zeros.
//! The hint is resolved relative to the directory of the child's descriptor (an absolute hint
//! is used as is); if that file does not exist and the hint has a directory part (often a
//! Windows path such as `C:\VMs\base.vmdk`), the hint's last component is tried next to the
//! child. The parent's `CID` must equal the child's `parentCID`: a parent changed after the
//! snapshot was taken would make the child's view silently wrong.

// Pure logic with nothing to gain from `unsafe`; forbidding it keeps the proof burden at zero.
#![forbid(unsafe_code)]

mod descriptor;
mod disk;
mod error;
pub mod fs;
mod header;
pub mod mem;
mod source;
mod sparse;

pub use descriptor::{Access, CreateType, Descriptor, ExtentLine, ExtentType};
pub use disk::{AllocatedRange, Disk, LinkInfo};
pub use error::VmdkError;
pub use header::{SparseHeader, GD_AT_END, SPARSE_HEADER_LEN};
pub use source::{Opener, Source};

/// Bytes in a sector, the unit of every offset and size in a VMDK.
pub const SECTOR: u64 = 512;
/// Longest text descriptor accepted, in bytes (a separate file, or the embedded area).
pub const DESCRIPTOR_MAX: u64 = 64 * 1024;
/// Largest disk accepted: 64 TiB (VMware's own maximum is 62 TiB).
pub const CAPACITY_MAX_BYTES: u64 = 64 << 40;
/// Most grain directory entries in one sparse extent (16 MiB of directory in memory).
pub const GD_ENTRIES_MAX: u64 = 1 << 22;
/// Largest grain accepted, in sectors (1 MiB; VMware and qemu use 128 sectors, 64 KiB).
pub const GRAIN_SECTORS_MAX: u64 = 2048;
/// Most grain table entries per grain table (VMware always writes 512).
pub const GTES_PER_GT_MAX: u32 = 4096;
/// Most extents one descriptor may list.
pub const EXTENTS_MAX: usize = 4096;
/// Most links in a snapshot chain, the top one included.
pub const CHAIN_DEPTH_MAX: usize = 32;

/// The create types this reader opens, as written in descriptors.
pub const SUPPORTED_CREATE_TYPES: &[&str] = &[
    "monolithicSparse",
    "twoGbMaxExtentSparse",
    "monolithicFlat",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
];

/// The extent types this reader opens, as written in descriptor extent lines.
pub const SUPPORTED_EXTENT_TYPES: &[&str] = &["SPARSE", "FLAT", "VMFS", "ZERO"];

/// The support table of the crate documentation, as plain text for `--help` output or logs.
pub fn support_catalogue() -> &'static str {
    "VMDK reader support catalogue
supported create types: monolithicSparse, twoGbMaxExtentSparse, monolithicFlat, twoGbMaxExtentFlat, streamOptimized, vmfs
supported extent types: SPARSE, FLAT, VMFS, ZERO
sparse extents: \"KDMV\" hosted sparse, versions 1, 2, 3 (version 3 change tracking ignored)
sparse flags: newline test, redundant grain directory (ignored), zeroed-grain GTE, compressed grains, markers
compression: none, deflate (zlib); compressed grains need markers (streamOptimized)
streamOptimized: grain directory from the footer (GD_AT_END) or from the header
snapshot chains: parentFileNameHint + parentCID, CID checked, at most 32 links, loops refused
bare sparse extent without descriptor: supported (no CID, no parent)
not supported: vmfsSparse and COWD extents, seSparse, vmfsRaw, vmfsRawDeviceMap, vmfsPassthroughRawDeviceMap, fullDevice, partitionedDevice, custom, encrypted disks, unknown versions, flags or compression algorithms
limits: descriptor 64 KiB, capacity 64 TiB, grain directory 4194304 entries, grain 2048 sectors, grain table 4096 entries, 4096 extents"
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testimage;
#[cfg(test)]
mod tests;
