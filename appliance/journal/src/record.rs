//! Encoding and decoding of single records.

use crate::error::{CorruptReason, JournalError};
use crate::limits::{RECORD_BODY_BYTES_MAX, RECORD_HEADER_BYTES};

/// Record magic; little endian it spells `"SRJ1"` on disk.
pub const RECORD_MAGIC: u32 = 0x314A_5253;

const MAGIC_BYTES: [u8; 4] = RECORD_MAGIC.to_le_bytes();
const RESERVED_START: usize = 5;
const RESERVED_LEN: usize = 3;
const BODY_LEN_FIELD: std::ops::Range<usize> = 8..12;

/// Header bytes covered by the CRC: everything before the CRC field.
type CrcPrefix = [u8; 12];

/// A record decoded in place; `body` borrows from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Caller-defined record type.
    pub kind: u8,
    /// Record payload.
    pub body: &'a [u8],
}

/// Number of bytes a record with a `body_len`-byte body occupies.
///
/// Saturates instead of overflowing so that it cannot panic on absurd input.
pub fn encoded_len(body_len: usize) -> usize {
    RECORD_HEADER_BYTES.saturating_add(body_len)
}

/// Appends one encoded record (header then body) to `out`.
///
/// Fails without touching `out` if the body exceeds
/// [`RECORD_BODY_BYTES_MAX`].
pub fn encode_record(kind: u8, body: &[u8], out: &mut Vec<u8>) -> Result<(), JournalError> {
    let too_large =
        || JournalError::BodyTooLarge { body_len: body.len(), max: RECORD_BODY_BYTES_MAX };
    if body.len() > RECORD_BODY_BYTES_MAX {
        return Err(too_large());
    }
    let body_len = u32::try_from(body.len()).map_err(|_| too_large())?;
    let prefix = crc_prefix(kind, body_len);
    let crc = record_crc(&prefix, body);
    out.reserve(encoded_len(body.len()));
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Starts a record whose body the caller appends to `out` in place (no intermediate body
/// buffer); returns where the record starts, for [`seal_record`].
pub fn begin_record(kind: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&crc_prefix(kind, 0));
    out.extend_from_slice(&[0; 4]);
    start
}

/// Finishes a record begun with [`begin_record`]: everything after its header up to the end
/// of `out` is the body. On error (body over the limit) the record is removed from `out`.
pub fn seal_record(out: &mut Vec<u8>, start: usize) -> Result<(), JournalError> {
    let body_start = start + RECORD_HEADER_BYTES;
    assert!(body_start <= out.len(), "seal_record needs a record from begin_record");
    let body_len = out.len() - body_start;
    if body_len > RECORD_BODY_BYTES_MAX {
        out.truncate(start);
        return Err(JournalError::BodyTooLarge { body_len, max: RECORD_BODY_BYTES_MAX });
    }
    let kind = out[start + 4];
    let prefix = crc_prefix(kind, body_len as u32);
    let crc = record_crc(&prefix, &out[body_start..]);
    out[start..start + prefix.len()].copy_from_slice(&prefix);
    out[start + prefix.len()..body_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes one record at the start of `buf`.
///
/// * `Ok(None)`: `buf` is a plausible but incomplete record; more bytes are
///   needed.
/// * `Ok(Some((record, consumed)))`: a valid record spanning `consumed` bytes.
/// * `Err(Corrupt { offset: base_offset, .. })`: these bytes can never be a
///   valid record, however many bytes follow.
///
/// Header fields are validated in order on whatever prefix is present, and
/// the length limit is enforced before the body is touched. Never panics.
pub fn decode_record(
    buf: &[u8],
    base_offset: u64,
) -> Result<Option<(RecordRef<'_>, usize)>, JournalError> {
    decode_at(buf).map_err(|reason| JournalError::Corrupt { offset: base_offset, reason })
}

/// Offset-free core of [`decode_record`], shared with the scanners so they
/// get the reason without unwrapping an error enum.
pub(crate) fn decode_at(buf: &[u8]) -> Result<Option<(RecordRef<'_>, usize)>, CorruptReason> {
    check_header_prefix(buf)?;
    let Some((header, rest)) = buf.split_first_chunk::<RECORD_HEADER_BYTES>() else {
        return Ok(None);
    };
    let (prefix, stored_crc) = split_header(header);
    let (kind, body_len) = header_fields(&prefix);
    // check_header_prefix bounded body_len by the limit, so this conversion
    // cannot fail on any target that can hold such a buffer.
    let Ok(body_len) = usize::try_from(body_len) else {
        return Err(CorruptReason::LengthOverLimit { body_len });
    };
    let Some(body) = rest.get(..body_len) else {
        return Ok(None);
    };
    let actual = record_crc(&prefix, body);
    if actual != stored_crc {
        return Err(CorruptReason::CrcMismatch { expected: stored_crc, actual });
    }
    Ok(Some((RecordRef { kind, body }, encoded_len(body_len))))
}

/// Validates every header field fully contained in `buf`, which may be
/// shorter than a header. Checking partial headers lets a scan reject
/// garbage immediately instead of calling it "incomplete".
fn check_header_prefix(buf: &[u8]) -> Result<(), CorruptReason> {
    // zip stops at the shorter side, so a partial magic is compared too.
    if buf.iter().zip(MAGIC_BYTES).any(|(have, want)| *have != want) {
        return Err(CorruptReason::BadMagic);
    }
    let mut reserved = buf.iter().skip(RESERVED_START).take(RESERVED_LEN);
    if reserved.any(|b| *b != 0) {
        return Err(CorruptReason::NonZeroReserved);
    }
    if let Some(len_bytes) = buf.get(BODY_LEN_FIELD) {
        let body_len = read_u32(len_bytes);
        let within_limit = usize::try_from(body_len).is_ok_and(|len| len <= RECORD_BODY_BYTES_MAX);
        if !within_limit {
            return Err(CorruptReason::LengthOverLimit { body_len });
        }
    }
    Ok(())
}

/// Builds the CRC-covered part of a header.
fn crc_prefix(kind: u8, body_len: u32) -> CrcPrefix {
    let [m0, m1, m2, m3] = MAGIC_BYTES;
    let [l0, l1, l2, l3] = body_len.to_le_bytes();
    [m0, m1, m2, m3, kind, 0, 0, 0, l0, l1, l2, l3]
}

/// Splits a full header into its CRC-covered prefix and the stored CRC.
fn split_header(header: &[u8; RECORD_HEADER_BYTES]) -> (CrcPrefix, u32) {
    let [prefix @ .., c0, c1, c2, c3] = *header;
    (prefix, u32::from_le_bytes([c0, c1, c2, c3]))
}

/// Extracts `kind` and `body_len`; magic and reserved are checked elsewhere.
fn header_fields(prefix: &CrcPrefix) -> (u8, u32) {
    let [_, _, _, _, kind, _, _, _, l0, l1, l2, l3] = *prefix;
    (kind, u32::from_le_bytes([l0, l1, l2, l3]))
}

fn record_crc(prefix: &CrcPrefix, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(prefix), body)
}

/// Reads a little-endian u32 from a slice the caller obtained with a
/// 4-byte range; any other length yields 0 rather than panicking.
fn read_u32(bytes: &[u8]) -> u32 {
    <[u8; 4]>::try_from(bytes).map_or(0, u32::from_le_bytes)
}

#[cfg(test)]
mod in_place_tests {
    use super::*;

    #[test]
    fn sealed_record_equals_encoded_record() {
        let mut expected = vec![9u8];
        encode_record(7, b"body bytes", &mut expected).unwrap();
        let mut built = vec![9u8];
        let start = begin_record(7, &mut built);
        built.extend_from_slice(b"body ");
        built.extend_from_slice(b"bytes");
        seal_record(&mut built, start).unwrap();
        assert_eq!(built, expected);
    }

    #[test]
    fn oversize_sealed_record_is_removed() {
        let mut built = vec![1u8, 2];
        let start = begin_record(1, &mut built);
        built.resize(built.len() + RECORD_BODY_BYTES_MAX + 1, 0);
        assert!(matches!(seal_record(&mut built, start), Err(JournalError::BodyTooLarge { .. })));
        assert_eq!(built, vec![1u8, 2]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(kind, body, &mut out).expect("encodable body");
        out
    }

    fn corrupt_reason(buf: &[u8]) -> CorruptReason {
        match decode_record(buf, 1234) {
            Err(JournalError::Corrupt { offset, reason }) => {
                assert_eq!(offset, 1234);
                reason
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn header_layout_is_documented_layout() {
        let bytes = encode(7, b"abc");
        assert_eq!(bytes.get(..4), Some(&b"SRJ1"[..]));
        assert_eq!(bytes.get(4..8), Some(&[7, 0, 0, 0][..]));
        assert_eq!(bytes.get(8..12), Some(&3u32.to_le_bytes()[..]));
        let mut crc_input = bytes.get(..12).unwrap().to_vec();
        crc_input.extend_from_slice(b"abc");
        let crc = crc32c::crc32c(&crc_input).to_le_bytes();
        assert_eq!(bytes.get(12..16), Some(&crc[..]));
        assert_eq!(bytes.get(16..), Some(&b"abc"[..]));
        assert_eq!(bytes.len(), encoded_len(3));
    }

    #[test]
    fn encode_appends_without_clobbering() {
        let mut out = b"prefix".to_vec();
        encode_record(1, b"x", &mut out).unwrap();
        assert_eq!(out.get(..6), Some(&b"prefix"[..]));
        let (rec, used) = decode_record(out.get(6..).unwrap(), 6).unwrap().unwrap();
        assert_eq!((rec.kind, rec.body, used), (1, &b"x"[..], 17));
    }

    #[test]
    fn zero_length_body_round_trips() {
        let bytes = encode(0, b"");
        assert_eq!(bytes.len(), RECORD_HEADER_BYTES);
        let (rec, used) = decode_record(&bytes, 0).unwrap().unwrap();
        assert_eq!((rec.kind, rec.body.len(), used), (0, 0, RECORD_HEADER_BYTES));
    }

    #[test]
    fn max_size_body_round_trips() {
        let body = vec![0xa5; RECORD_BODY_BYTES_MAX];
        let bytes = encode(255, &body);
        let (rec, used) = decode_record(&bytes, 0).unwrap().unwrap();
        assert_eq!(rec.kind, 255);
        assert_eq!(rec.body, &body[..]);
        assert_eq!(used, encoded_len(RECORD_BODY_BYTES_MAX));
    }

    #[test]
    fn body_over_limit_is_rejected_and_out_untouched() {
        let body = vec![0; RECORD_BODY_BYTES_MAX + 1];
        let mut out = b"keep".to_vec();
        let err = encode_record(1, &body, &mut out).unwrap_err();
        assert_eq!(
            err,
            JournalError::BodyTooLarge {
                body_len: RECORD_BODY_BYTES_MAX + 1,
                max: RECORD_BODY_BYTES_MAX
            }
        );
        assert_eq!(out, b"keep");
    }

    #[test]
    fn bad_magic_is_corrupt_even_in_a_partial_header() {
        let mut bytes = encode(1, b"body");
        bytes[1] ^= 0x01;
        assert_eq!(corrupt_reason(&bytes), CorruptReason::BadMagic);
        assert_eq!(corrupt_reason(&bytes[..2]), CorruptReason::BadMagic);
    }

    #[test]
    fn non_zero_reserved_is_corrupt_even_in_a_partial_header() {
        let mut bytes = encode(1, b"body");
        bytes[6] = 1;
        assert_eq!(corrupt_reason(&bytes), CorruptReason::NonZeroReserved);
        assert_eq!(corrupt_reason(&bytes[..7]), CorruptReason::NonZeroReserved);
    }

    #[test]
    fn length_over_limit_is_rejected_before_the_body() {
        let over = u32::try_from(RECORD_BODY_BYTES_MAX + 1).unwrap();
        let mut header = crc_prefix(3, over).to_vec();
        // Only the length field is present: no CRC, no body, still corrupt.
        assert_eq!(corrupt_reason(&header), CorruptReason::LengthOverLimit { body_len: over });
        header.extend_from_slice(&[0; 4]);
        assert_eq!(corrupt_reason(&header), CorruptReason::LengthOverLimit { body_len: over });
        let max = crc_prefix(3, u32::MAX);
        assert_eq!(corrupt_reason(&max), CorruptReason::LengthOverLimit { body_len: u32::MAX });
    }

    #[test]
    fn crc_mismatch_reports_both_values() {
        let mut bytes = encode(1, b"body");
        bytes[16] ^= 0x80;
        let actual = record_crc(&crc_prefix(1, 4), &bytes[16..]);
        let expected = crc32c::crc32c_append(crc32c::crc32c(&crc_prefix(1, 4)), b"body");
        assert_eq!(corrupt_reason(&bytes), CorruptReason::CrcMismatch { expected, actual });
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let bytes = encode(9, b"hello world");
        for cut in 0..bytes.len() {
            assert_eq!(decode_record(&bytes[..cut], 0), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn trailing_bytes_are_not_consumed() {
        let mut bytes = encode(2, b"ab");
        bytes.extend_from_slice(b"trailing garbage");
        let (rec, used) = decode_record(&bytes, 0).unwrap().unwrap();
        assert_eq!((rec.body, used), (&b"ab"[..], 18));
    }

    #[test]
    fn encoded_len_saturates() {
        assert_eq!(encoded_len(0), RECORD_HEADER_BYTES);
        assert_eq!(encoded_len(usize::MAX), usize::MAX);
    }
}
