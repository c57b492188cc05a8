//! Crash-recovery scan of the last segment of a log.

use crate::error::{CorruptReason, JournalError};
use crate::record::{decode_at, RECORD_MAGIC};
use crate::scan::records;
use crate::to_offset;

/// Outcome of a successful recovery scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Length of the valid prefix; the caller truncates the file to this
    /// length when the tail is torn.
    pub valid_len: u64,
    /// Number of valid records in that prefix.
    pub record_count: u64,
    /// State of the bytes after the valid prefix.
    pub tail: Tail,
}

/// State of a segment's end after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belongs to a valid record.
    Clean,
    /// The bytes from `offset` to the end are an incomplete or corrupt final
    /// write and must be truncated.
    Torn {
        /// Start of the torn write (equals [`Recovery::valid_len`]).
        offset: u64,
        /// Human-readable description of what was wrong there.
        reason: String,
    },
}

/// Scans one whole segment image after a crash.
///
/// Walks records from offset 0 and stops at the first incomplete or corrupt
/// one. A crash can only tear the *last* write, so if any complete valid
/// record exists anywhere after that point the damage is in acknowledged
/// data and this returns [`JournalError::CorruptBeforeValidData`] rather
/// than recommend a truncation that would destroy it. Otherwise the tail is
/// [`Tail::Torn`] and the caller truncates to [`Recovery::valid_len`].
///
/// Fail-safe caveat: a torn record whose body itself contains a complete
/// encoded record (e.g. replicated data that embeds a journal) is reported
/// as corruption; that errs on the side of keeping data.
pub fn recover(buf: &[u8]) -> Result<Recovery, JournalError> {
    let mut scan = records(buf);
    let record_count = to_offset(scan.by_ref().count());
    let valid_len = scan.next_offset();
    let Some((offset, reason)) = scan.stopped_at() else {
        return Ok(Recovery { valid_len, record_count, tail: Tail::Clean });
    };
    let search_from = scan.consumed().saturating_add(1);
    if let Some(next_valid) = find_valid_record(buf, search_from) {
        return Err(corrupt_before_valid(offset, reason, next_valid));
    }
    Ok(Recovery {
        valid_len,
        record_count,
        tail: Tail::Torn { offset, reason: reason.to_string() },
    })
}

fn corrupt_before_valid(offset: u64, reason: &CorruptReason, next_valid: usize) -> JournalError {
    JournalError::CorruptBeforeValidData {
        offset,
        reason: reason.clone(),
        next_valid_offset: to_offset(next_valid),
    }
}

/// Finds the first position at or after `start` where a complete, valid
/// record decodes.
///
/// Only positions starting with the magic are decoded, so ordinary data
/// costs one 4-byte comparison per byte. Decoding borrows from `buf` and
/// checks the length limit before the body, so nothing is allocated and an
/// untrusted length cannot cause an overread.
fn find_valid_record(buf: &[u8], start: usize) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let candidates = buf.get(start..)?.windows(magic.len());
    candidates
        .enumerate()
        .filter(|(_, window)| *window == magic)
        .map(|(index, _)| start.saturating_add(index))
        .find(|&pos| is_complete_valid_record(buf.get(pos..).unwrap_or_default()))
}

fn is_complete_valid_record(bytes: &[u8]) -> bool {
    matches!(decode_at(bytes), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_record;

    fn log_of(count: u8) -> (Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        let mut offsets = Vec::new();
        for kind in 0..count {
            offsets.push(to_offset(out.len()));
            encode_record(kind, &[kind; 5], &mut out).unwrap();
        }
        (out, offsets)
    }

    fn torn(valid_len: u64, record_count: u64) -> Recovery {
        let tail = Tail::Torn { offset: valid_len, reason: String::new() };
        Recovery { valid_len, record_count, tail }
    }

    fn without_reason(mut recovery: Recovery) -> Recovery {
        if let Tail::Torn { reason, .. } = &mut recovery.tail {
            assert!(!reason.is_empty());
            reason.clear();
        }
        recovery
    }

    #[test]
    fn empty_segment_is_clean() {
        let expected = Recovery { valid_len: 0, record_count: 0, tail: Tail::Clean };
        assert_eq!(recover(&[]), Ok(expected));
    }

    #[test]
    fn whole_log_is_clean() {
        let (log, _) = log_of(3);
        let got = recover(&log).unwrap();
        assert_eq!((got.valid_len, got.record_count), (63, 3));
        assert_eq!(got.tail, Tail::Clean);
    }

    #[test]
    fn partial_last_record_is_torn() {
        let (log, offsets) = log_of(3);
        let got = recover(&log[..log.len() - 1]).unwrap();
        assert_eq!(without_reason(got), torn(offsets[2], 2));
    }

    #[test]
    fn garbage_tail_is_torn() {
        let (mut log, _) = log_of(2);
        log.extend_from_slice(&[0xff; 40]);
        let got = recover(&log).unwrap();
        match &got.tail {
            Tail::Torn { reason, .. } => assert!(reason.contains("magic"), "{reason}"),
            Tail::Clean => panic!("expected torn tail"),
        }
        assert_eq!(without_reason(got), torn(42, 2));
    }

    #[test]
    fn corruption_before_valid_record_is_refused() {
        let (mut log, offsets) = log_of(3);
        log[offsets[1] as usize + 16] ^= 1;
        let err = recover(&log).unwrap_err();
        assert!(matches!(
            err,
            JournalError::CorruptBeforeValidData {
                offset: 21,
                reason: CorruptReason::CrcMismatch { .. },
                next_valid_offset: 42,
            }
        ));
    }

    #[test]
    fn inflated_length_before_valid_record_is_refused() {
        let (mut log, offsets) = log_of(3);
        // Bump body_len so the record claims to run past the end of the
        // buffer: it looks incomplete, but valid records follow it.
        log[offsets[0] as usize + 10] = 0x01;
        let err = recover(&log).unwrap_err();
        assert_eq!(
            err,
            JournalError::CorruptBeforeValidData {
                offset: 0,
                reason: CorruptReason::Incomplete { available: 63 },
                next_valid_offset: 21,
            }
        );
    }
}
