//! Why a VMDK was refused or could not be read. Every message starts with `vmdk: `, then the
//! file it is about (as the descriptor or the opener named it), then what is wrong with it.
//! File names are stored escaped ([`str::escape_debug`]) and other strings taken from the
//! image are printed quoted and escaped (`{:?}`), so a name with control characters cannot
//! garble a log line.

use std::io;

use crate::{
    CAPACITY_MAX_BYTES, CHAIN_DEPTH_MAX, DESCRIPTOR_MAX, EXTENTS_MAX, GD_ENTRIES_MAX,
    SUPPORTED_CREATE_TYPES, SUPPORTED_EXTENT_TYPES,
};

#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    /// The opener or the source failed (missing file, permission, I/O error).
    #[error("vmdk: {file}: {what}: {source}")]
    Io { file: String, what: String, source: io::Error },

    // ---- descriptor ----
    #[error(
        "vmdk: {file}: neither a sparse extent (no \"KDMV\" magic) nor a text descriptor \
         ({len} bytes, more than the descriptor limit of {DESCRIPTOR_MAX})"
    )]
    DescriptorTooLong { file: String, len: u64 },
    #[error(
        "vmdk: {file}: neither a sparse extent (no \"KDMV\" magic) nor a text descriptor \
         (binary byte at offset {offset})"
    )]
    NotVmdk { file: String, offset: usize },
    #[error("vmdk: {file}: descriptor is not text (first bad byte at offset {offset})")]
    DescriptorNotText { file: String, offset: usize },
    #[error("vmdk: {file}: descriptor line {line}: {reason}")]
    DescriptorSyntax { file: String, line: usize, reason: String },
    #[error("vmdk: {file}: descriptor has no {key:?} key")]
    MissingKey { file: String, key: &'static str },
    #[error("vmdk: {file}: descriptor line {line}: key {key:?} appears twice")]
    DuplicateKey { file: String, line: usize, key: String },
    #[error("vmdk: {file}: descriptor version {version} is not supported (supported: 1, 2, 3)")]
    UnsupportedDescriptorVersion { file: String, version: String },
    #[error(
        "vmdk: {file}: create type {create_type:?} is not supported (supported: {})",
        SUPPORTED_CREATE_TYPES.join(", ")
    )]
    UnsupportedCreateType { file: String, create_type: String },
    #[error(
        "vmdk: {file}: create type {create_type:?} is unknown (supported: {})",
        SUPPORTED_CREATE_TYPES.join(", ")
    )]
    UnknownCreateType { file: String, create_type: String },
    #[error(
        "vmdk: {file}: descriptor line {line}: extent type {kind:?} is not supported (supported: {})",
        SUPPORTED_EXTENT_TYPES.join(", ")
    )]
    UnsupportedExtentType { file: String, line: usize, kind: String },
    #[error("vmdk: {file}: descriptor lists no extents")]
    NoExtents { file: String },
    #[error("vmdk: {file}: descriptor lists more than {EXTENTS_MAX} extents")]
    TooManyExtents { file: String },
    #[error("vmdk: {file}: disk is encrypted (descriptor key {key:?}); encrypted disks are not supported")]
    Encrypted { file: String, key: String },
    #[error("vmdk: {file}: {reason}")]
    BadParentLink { file: String, reason: String },
    #[error(
        "vmdk: {file}: an embedded descriptor must list exactly one SPARSE extent, \
         this one lists {extents} extent(s)"
    )]
    BadEmbeddedDescriptor { file: String, extents: usize },

    // ---- sparse extent header ----
    #[error("vmdk: {file}: {what} is truncated: need {need} bytes, the file has {len}")]
    Truncated { file: String, what: &'static str, need: u64, len: u64 },
    #[error("vmdk: {file}: bad magic {found:02x?}, expected \"KDMV\" (hosted sparse extent)")]
    BadMagic { file: String, found: [u8; 4] },
    #[error("vmdk: {file}: \"COWD\" sparse extent (vmfsSparse / ESX 2 redo log) is not supported")]
    CowdNotSupported { file: String },
    #[error("vmdk: {file}: sparse extent version {version} is not supported (supported: 1, 2, 3)")]
    UnsupportedVersion { file: String, version: u32 },
    #[error(
        "vmdk: {file}: sparse extent flags {flags:#010x} include unsupported bits {unknown:#010x} \
         (encrypted or newer format?)"
    )]
    UnsupportedFlags { file: String, flags: u32, unknown: u32 },
    #[error(
        "vmdk: {file}: compression algorithm {algorithm} is not supported (supported: 0 none, 1 deflate)"
    )]
    UnsupportedCompression { file: String, algorithm: u16 },
    #[error("vmdk: {file}: invalid sparse extent header: {reason}")]
    BadHeader { file: String, reason: String },
    #[error(
        "vmdk: {file}: capacity of {bytes} bytes is more than the limit of {CAPACITY_MAX_BYTES}"
    )]
    CapacityTooLarge { file: String, bytes: u128 },
    #[error(
        "vmdk: {file}: grain directory of {entries} entries is more than the limit of {GD_ENTRIES_MAX}"
    )]
    GrainDirectoryTooLarge { file: String, entries: u64 },

    // ---- extent contents ----
    /// The metadata contradicts itself or points outside the file: an overlap, a pointer past
    /// the end of the file, a bad marker, a grain that does not decompress.
    #[error("vmdk: {file}: corrupt: {reason}")]
    Corrupt { file: String, reason: String },

    // ---- chains ----
    #[error(
        "vmdk: {child} has parentCID={parent_cid:08x} but its parent {parent} has CID={}",
        match .found { Some(cid) => format!("{cid:08x}"), None => "(none)".to_owned() }
    )]
    ParentCidMismatch { child: String, parent_cid: u32, parent: String, found: Option<u32> },
    #[error("vmdk: {file}: snapshot chain is longer than the limit of {CHAIN_DEPTH_MAX} links")]
    ChainTooDeep { file: String },
    #[error("vmdk: {file}: snapshot chain loops: {parent} is already in the chain")]
    ChainLoop { file: String, parent: String },

    // ---- reads ----
    #[error("vmdk: read of {len} bytes at offset {offset} is outside the disk ({capacity} bytes)")]
    OutOfRange { offset: u64, len: u64, capacity: u64 },
}

/// A file name as stored in an error: escaped, so it prints on one line whatever it holds.
pub(crate) fn shown(file: &str) -> String {
    file.escape_debug().to_string()
}

impl VmdkError {
    pub(crate) fn io(file: &str, what: impl Into<String>, source: io::Error) -> VmdkError {
        VmdkError::Io { file: shown(file), what: what.into(), source }
    }

    pub(crate) fn corrupt(file: &str, reason: impl Into<String>) -> VmdkError {
        VmdkError::Corrupt { file: shown(file), reason: reason.into() }
    }

    pub(crate) fn bad_header(file: &str, reason: impl Into<String>) -> VmdkError {
        VmdkError::BadHeader { file: shown(file), reason: reason.into() }
    }

    pub(crate) fn syntax(file: &str, line: usize, reason: impl Into<String>) -> VmdkError {
        VmdkError::DescriptorSyntax { file: shown(file), line, reason: reason.into() }
    }

    pub(crate) fn truncated(file: &str, what: &'static str, need: u64, len: u64) -> VmdkError {
        VmdkError::Truncated { file: shown(file), what, need, len }
    }
}
