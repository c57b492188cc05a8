//! Error types of the journal crate.

use std::fmt;

use crate::limits::RECORD_BODY_BYTES_MAX;

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptReason {
    /// The first bytes are not `"SRJ1"`.
    BadMagic,
    /// One of the three reserved header bytes is not zero.
    NonZeroReserved,
    /// The declared body length exceeds [`RECORD_BODY_BYTES_MAX`].
    LengthOverLimit {
        /// Declared body length.
        body_len: u32,
    },
    /// The stored CRC does not match the header and body.
    CrcMismatch {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the bytes actually present.
        actual: u32,
    },
    /// The buffer ends inside a record whose header looked plausible.
    ///
    /// [`crate::decode_record`] reports this as `Ok(None)` (more bytes may
    /// arrive); scans over a whole segment report it with this reason
    /// because no more bytes will ever arrive.
    Incomplete {
        /// Bytes present from the record start to the end of the buffer.
        available: u64,
    },
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("bad magic (expected \"SRJ1\")"),
            Self::NonZeroReserved => f.write_str("reserved header bytes are not zero"),
            Self::LengthOverLimit { body_len } => write!(
                f,
                "body length {body_len} exceeds the limit of {RECORD_BODY_BYTES_MAX} bytes"
            ),
            Self::CrcMismatch { expected, actual } => {
                write!(f, "crc mismatch (stored {expected:#010x}, computed {actual:#010x})")
            }
            Self::Incomplete { available } => {
                write!(f, "incomplete record (only {available} bytes before end of data)")
            }
        }
    }
}

/// Errors returned by the journal encoder, decoder and recovery scan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The caller tried to encode a body larger than the format allows.
    #[error("record body of {body_len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// Length of the rejected body.
        body_len: usize,
        /// The limit, [`RECORD_BODY_BYTES_MAX`].
        max: usize,
    },
    /// The bytes at `offset` can never form a valid record.
    #[error("corrupt journal record at offset {offset}: {reason}")]
    Corrupt {
        /// Offset of the start of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// Damage followed by at least one valid record: this is not a torn
    /// final write but corruption inside acknowledged data.
    #[error(
        "journal corrupt at offset {offset} ({reason}) but a valid record follows at offset \
         {next_valid_offset}: truncating would lose acknowledged data, refusing to truncate"
    )]
    CorruptBeforeValidData {
        /// Offset of the first bad record.
        offset: u64,
        /// What is wrong with it.
        reason: CorruptReason,
        /// Offset of the first complete, valid record found after it.
        next_valid_offset: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_display_their_details() {
        let over = CorruptReason::LengthOverLimit { body_len: 99 }.to_string();
        assert!(over.contains("99") && over.contains(&RECORD_BODY_BYTES_MAX.to_string()));
        let crc = CorruptReason::CrcMismatch { expected: 0xdead_beef, actual: 1 }.to_string();
        assert!(crc.contains("0xdeadbeef") && crc.contains("0x00000001"));
        assert!(CorruptReason::BadMagic.to_string().contains("magic"));
        assert!(CorruptReason::NonZeroReserved.to_string().contains("reserved"));
        assert!(CorruptReason::Incomplete { available: 7 }.to_string().contains('7'));
    }

    #[test]
    fn corrupt_before_valid_data_refuses_to_truncate() {
        let text = JournalError::CorruptBeforeValidData {
            offset: 32,
            reason: CorruptReason::BadMagic,
            next_valid_offset: 64,
        }
        .to_string();
        assert!(text.contains("lose acknowledged data"), "{text}");
        assert!(text.contains("refusing to truncate"), "{text}");
        assert!(text.contains("32") && text.contains("64"), "{text}");
    }

    #[test]
    fn corrupt_names_offset_and_reason() {
        let text = JournalError::Corrupt { offset: 48, reason: CorruptReason::NonZeroReserved }
            .to_string();
        assert!(text.contains("48") && text.contains("reserved"), "{text}");
    }
}
