//! Append-only, CRC-checked journal records and the crash-recovery scan.
//!
//! This crate is pure: it never touches files. The relay's durable cache
//! (segment files) and the target's redo log read a segment image into
//! memory and hand the bytes to these functions.
//!
//! # Record format
//!
//! A segment is a plain concatenation of records, with no padding and no
//! segment header. Every integer is little endian.
//!
//! | offset | size | field      | meaning                                         |
//! |-------:|-----:|------------|-------------------------------------------------|
//! | 0      | 4    | `magic`    | `0x314A_5253`, i.e. the bytes `"SRJ1"`          |
//! | 4      | 1    | `kind`     | caller-defined record type                      |
//! | 5      | 3    | `reserved` | must be zero                                    |
//! | 8      | 4    | `body_len` | body length, at most [`limits::RECORD_BODY_BYTES_MAX`] |
//! | 12     | 4    | `crc`      | CRC-32C over header bytes `0..12`, then the body |
//! | 16     | `body_len` | body | opaque payload                                  |
//!
//! The header is [`limits::RECORD_HEADER_BYTES`] bytes long, so a record
//! occupies [`encoded_len`]`(body_len)` bytes.
//!
//! # Decoding rules
//!
//! Fields are validated in header order (magic, reserved, length) on
//! whatever prefix is available, *before* the body is looked at: a hostile
//! `body_len` is rejected without allocating or reading past the buffer.
//! [`decode_record`] distinguishes "not enough bytes yet" (`Ok(None)`) from
//! "these bytes can never be a valid record" (`Err`).
//!
//! # Crash recovery
//!
//! [`recover`] scans the last segment of a log after a crash. A record that
//! is incomplete or corrupt with nothing valid after it is a torn final
//! write: [`Tail::Torn`] tells the caller to truncate the file to
//! [`Recovery::valid_len`]. If any valid record exists after the damage, the
//! damage is in acknowledged data, and [`recover`] refuses with
//! [`JournalError::CorruptBeforeValidData`] instead of suggesting a
//! truncation that would destroy it.
//!
//! Segment files are named with [`segment_file_name`] and parsed back with
//! [`parse_segment_file_name`].

#![forbid(unsafe_code)] // pure crate: parsing and encoding only, no unsafe

mod error;
mod record;
mod recovery;
mod scan;
mod sealed;
mod segment;

#[cfg(test)]
mod proptests;

pub use error::{CorruptReason, JournalError};
pub use record::{
    begin_record, decode_record, encode_record, encoded_len, seal_record, RecordRef, RECORD_MAGIC,
};
pub use recovery::{recover, Recovery, Tail};
pub use scan::{records, Records};
pub use sealed::{check_key, KeyMismatch, RecordKey, SealError, SEAL_OVERHEAD_BYTES};
pub use segment::{parse_segment_file_name, segment_file_name};

/// Size limits of the record format.
pub mod limits {
    /// Largest body a record may carry. Decoders reject larger declared
    /// lengths outright, so corrupt or hostile headers cannot make a reader
    /// wait for (or allocate) an unbounded amount of data.
    pub const RECORD_BODY_BYTES_MAX: usize = 16 << 20;

    /// Size of the fixed record header that precedes every body.
    pub const RECORD_HEADER_BYTES: usize = 16;
}

/// Converts a buffer position to a file offset.
///
/// `usize` is at most 64 bits on every supported target, so this never
/// saturates in practice; saturating keeps the conversion panic-free anyway.
fn to_offset(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
