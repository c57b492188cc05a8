//! Named limits of protocol v1. Every length read from the network is checked against one of
//! these before anything is allocated or sliced.

/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Largest uncompressed data payload of one `Writes` frame. Bounds the memory a peer can make
/// us commit per frame; 8 MiB is far above the 1 MiB frames the agent sends by default.
pub const WRITE_PAYLOAD_BYTES_MAX: usize = 8 << 20;
/// Largest number of extents in one `Writes` frame (64 KiB granularity × 4096 = 256 MiB of
/// zero extents, or many small writes).
pub const EXTENTS_PER_WRITES_MAX: usize = 4096;
/// Bytes one extent takes on the wire.
pub const EXTENT_WIRE_BYTES: usize = 16;
/// Longest disk name, version string, site or node id.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest error message or free text.
pub const TEXT_BYTES_MAX: usize = 4096;
/// Most disks one `Hello` may announce.
pub const DISKS_PER_HELLO_MAX: usize = 1024;
/// Most per-disk entries in one `Ack`.
pub const ACK_ENTRIES_MAX: usize = 1024;
/// Most block checksums one `Checksums` frame carries (16 bytes each: 1 MiB).
pub const CHECKSUMS_PER_FRAME_MAX: usize = 65536;
/// Bytes of one block checksum (SHA-256 truncated to 128 bits).
pub const CHECKSUM_BYTES: usize = 16;
/// Largest block a checksum may cover.
pub const CHECKSUM_BLOCK_BYTES_MAX: u32 = 1 << 20;
/// Largest status document.
/// A key, signature or proof in a registration.
pub const KEY_BYTES_MAX: usize = 512;
/// A DER certificate in a registration answer.
pub const CERTIFICATE_BYTES_MAX: usize = 8192;
pub const STATUS_JSON_BYTES_MAX: usize = 1 << 20;
/// Largest frame body: a full `Writes` frame plus its extent table and fixed fields.
pub const FRAME_BODY_BYTES_MAX: usize =
    WRITE_PAYLOAD_BYTES_MAX + EXTENTS_PER_WRITES_MAX * EXTENT_WIRE_BYTES + 64;

const _: () = assert!(CHECKSUMS_PER_FRAME_MAX * CHECKSUM_BYTES < FRAME_BODY_BYTES_MAX);
const _: () = assert!(STATUS_JSON_BYTES_MAX < FRAME_BODY_BYTES_MAX);
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);
