//! Property tests for encoding, scanning and crash recovery.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::limits::{RECORD_BODY_BYTES_MAX, RECORD_HEADER_BYTES};
use crate::{
    decode_record, encode_record, encoded_len, records, recover, JournalError, Recovery, Tail,
};

/// A log built from `(kind, body)` pairs, with each record's byte range.
struct Log {
    bytes: Vec<u8>,
    starts: Vec<usize>,
    ends: Vec<usize>,
}

fn build_log(entries: &[(u8, Vec<u8>)]) -> Log {
    let mut log = Log { bytes: Vec::new(), starts: Vec::new(), ends: Vec::new() };
    for (kind, body) in entries {
        log.starts.push(log.bytes.len());
        encode_record(*kind, body, &mut log.bytes).expect("body within limit");
        log.ends.push(log.bytes.len());
    }
    log
}

fn entries(max_len: usize) -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    vec((any::<u8>(), vec(any::<u8>(), 0..1024)), 1..max_len)
}

/// Random bytes, half of the time behind a plausible header so decoding
/// reaches the length, completeness and CRC checks.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = vec(any::<u8>(), 0..4096);
    let with_magic = (any::<u8>(), any::<u32>(), vec(any::<u8>(), 0..4096)).prop_map(
        |(kind, body_len, tail)| {
            let mut bytes = b"SRJ1".to_vec();
            bytes.extend_from_slice(&[kind, 0, 0, 0]);
            bytes.extend_from_slice(&(body_len % 8192).to_le_bytes());
            bytes.extend_from_slice(&tail);
            bytes
        },
    );
    prop_oneof![raw, with_magic]
}

fn flip_bit(bytes: &mut [u8], record_start: usize, bit: usize) {
    let byte = bytes.get_mut(record_start + bit / 8).expect("bit inside the log");
    *byte ^= 1 << (bit % 8);
}

fn offset(n: usize) -> u64 {
    u64::try_from(n).unwrap()
}

proptest! {
    #[test]
    fn single_record_round_trips(kind: u8, body in vec(any::<u8>(), 0..4096)) {
        let mut bytes = Vec::new();
        encode_record(kind, &body, &mut bytes).unwrap();
        prop_assert_eq!(bytes.len(), encoded_len(body.len()));
        let (record, used) = decode_record(&bytes, 0).unwrap().unwrap();
        prop_assert_eq!(record.kind, kind);
        prop_assert_eq!(record.body, &body[..]);
        prop_assert_eq!(used, bytes.len());
    }

    #[test]
    fn sequences_scan_in_order_and_recover_clean(entries in entries(12)) {
        let log = build_log(&entries);
        let scanned: Vec<_> = records(&log.bytes).collect();
        prop_assert_eq!(scanned.len(), entries.len());
        for ((at, record), ((kind, body), start)) in scanned.iter().zip(entries.iter().zip(&log.starts)) {
            prop_assert_eq!(*at, offset(*start));
            prop_assert_eq!(record.kind, *kind);
            prop_assert_eq!(record.body, &body[..]);
        }
        let expected = Recovery {
            valid_len: offset(log.bytes.len()),
            record_count: offset(entries.len()),
            tail: Tail::Clean,
        };
        prop_assert_eq!(recover(&log.bytes), Ok(expected));
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overreach(bytes in hostile_bytes(), base: u64) {
        match decode_record(&bytes, base) {
            Ok(Some((record, used))) => {
                prop_assert!(record.body.len() <= RECORD_BODY_BYTES_MAX);
                prop_assert_eq!(used, encoded_len(record.body.len()));
                prop_assert!(used <= bytes.len());
            }
            Ok(None) => prop_assert!(bytes.len() < RECORD_HEADER_BYTES + RECORD_BODY_BYTES_MAX),
            Err(JournalError::Corrupt { offset, .. }) => prop_assert_eq!(offset, base),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
        if let Ok(recovery) = recover(&bytes) {
            prop_assert!(recovery.valid_len <= offset(bytes.len()));
        }
        for (at, record) in records(&bytes) {
            prop_assert!(record.body.len() <= RECORD_BODY_BYTES_MAX);
            prop_assert!(at < offset(bytes.len()));
        }
    }

    #[test]
    fn truncation_recovers_the_whole_records_before_the_cut(
        entries in entries(8),
        cut in any::<Index>(),
    ) {
        let log = build_log(&entries);
        let cut = cut.index(log.bytes.len() + 1);
        let whole = log.ends.iter().filter(|end| **end <= cut).count();
        let valid_len = whole.checked_sub(1).map_or(0, |last| log.ends[last]);
        let recovery = recover(&log.bytes[..cut]).unwrap();
        prop_assert_eq!(recovery.valid_len, offset(valid_len));
        prop_assert_eq!(recovery.record_count, offset(whole));
        match recovery.tail {
            Tail::Clean => prop_assert_eq!(cut, valid_len),
            Tail::Torn { offset: at, .. } => {
                prop_assert!(cut > valid_len);
                prop_assert_eq!(at, offset(valid_len));
            }
        }
    }

    #[test]
    fn bit_flip_in_last_record_is_a_torn_tail(
        entries in entries(6),
        bit in any::<Index>(),
    ) {
        let mut log = build_log(&entries);
        let last = entries.len() - 1;
        let start = log.starts[last];
        flip_bit(&mut log.bytes, start, bit.index((log.ends[last] - start) * 8));
        let recovery = recover(&log.bytes).unwrap();
        prop_assert_eq!(recovery.valid_len, offset(start));
        prop_assert_eq!(recovery.record_count, offset(last));
        let torn_at = match recovery.tail {
            Tail::Torn { offset, .. } => Some(offset),
            Tail::Clean => None,
        };
        prop_assert_eq!(torn_at, Some(offset(start)));
    }

    #[test]
    fn bit_flip_in_earlier_record_is_refused(
        entries in vec((any::<u8>(), vec(any::<u8>(), 0..1024)), 2..6),
        victim in any::<Index>(),
        bit in any::<Index>(),
    ) {
        let mut log = build_log(&entries);
        let victim = victim.index(entries.len() - 1);
        let start = log.starts[victim];
        flip_bit(&mut log.bytes, start, bit.index((log.ends[victim] - start) * 8));
        match recover(&log.bytes) {
            Err(JournalError::CorruptBeforeValidData { offset: at, next_valid_offset, .. }) => {
                prop_assert_eq!(at, offset(start));
                prop_assert_eq!(next_valid_offset, offset(log.ends[victim]));
            }
            other => prop_assert!(false, "expected CorruptBeforeValidData, got {:?}", other),
        }
    }
}
