//! The on-disk form of one recovery point in a disk's point log: fixed-size, so a log is a
//! sequence of CRC-checked journal records whose bodies this module encodes and decodes.

use crate::retention::Kind;

/// Bytes of an encoded point.
pub const POINT_RECORD_BYTES: usize = 40;

/// A recovery point as the target stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredPoint {
    /// Per-disk point number, never reused within a disk's history.
    pub id: u64,
    /// Position in the disk's write stream: the point is everything up to this sequence.
    pub seq: u64,
    pub time_unix_ms: u64,
    /// The marker's id: for a group point, the id every disk of the group shares.
    pub marker_id: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointRecordError {
    #[error("point record is {0} bytes, expected {POINT_RECORD_BYTES}")]
    Length(usize),
    #[error("point record has unknown kind {0}")]
    Kind(u8),
    #[error("point record has non-zero reserved bytes")]
    Reserved,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::App => "app",
            Kind::Group => "group",
        }
    }

    fn code(self) -> u8 {
        match self {
            Kind::Crash => 1,
            Kind::App => 2,
            Kind::Group => 3,
        }
    }

    fn from_code(code: u8) -> Result<Kind, PointRecordError> {
        match code {
            1 => Ok(Kind::Crash),
            2 => Ok(Kind::App),
            3 => Ok(Kind::Group),
            other => Err(PointRecordError::Kind(other)),
        }
    }
}

impl StoredPoint {
    pub fn encode(&self) -> [u8; POINT_RECORD_BYTES] {
        let mut out = [0u8; POINT_RECORD_BYTES];
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.time_unix_ms.to_le_bytes());
        out[24..32].copy_from_slice(&self.marker_id.to_le_bytes());
        out[32] = self.kind.code();
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredPoint, PointRecordError> {
        if bytes.len() != POINT_RECORD_BYTES {
            return Err(PointRecordError::Length(bytes.len()));
        }
        let u64_at = |at: usize| {
            let mut field = [0u8; 8];
            field.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(field)
        };
        if bytes[33..].iter().any(|&byte| byte != 0) {
            return Err(PointRecordError::Reserved);
        }
        Ok(StoredPoint {
            id: u64_at(0),
            seq: u64_at(8),
            time_unix_ms: u64_at(16),
            marker_id: u64_at(24),
            kind: Kind::from_code(bytes[32])?,
        })
    }

    /// What retention needs to know of this point.
    pub fn retention_point(&self) -> crate::retention::Point {
        crate::retention::Point { id: self.id, time_unix_ms: self.time_unix_ms, kind: self.kind }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Crash), Just(Kind::App), Just(Kind::Group)]
    }

    proptest! {
        #[test]
        fn round_trips(id: u64, seq: u64, time: u64, marker: u64, kind in kind()) {
            let point = StoredPoint { id, seq, time_unix_ms: time, marker_id: marker, kind };
            prop_assert_eq!(StoredPoint::decode(&point.encode()), Ok(point));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = StoredPoint::decode(&bytes);
        }
    }

    #[test]
    fn bad_records_are_named() {
        let mut bytes =
            StoredPoint { id: 1, seq: 2, time_unix_ms: 3, marker_id: 4, kind: Kind::App }.encode();
        assert_eq!(StoredPoint::decode(&bytes[..39]), Err(PointRecordError::Length(39)));
        bytes[32] = 9;
        assert_eq!(StoredPoint::decode(&bytes), Err(PointRecordError::Kind(9)));
        bytes[32] = 1;
        bytes[39] = 1;
        assert_eq!(StoredPoint::decode(&bytes), Err(PointRecordError::Reserved));
    }
}
