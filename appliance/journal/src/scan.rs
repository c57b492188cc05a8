//! Sequential iteration over the valid records of a buffer.

use crate::error::CorruptReason;
use crate::record::{decode_at, RecordRef};
use crate::to_offset;

/// Iterator over the valid records at the start of a buffer, yielding
/// `(offset, record)`.
///
/// Iteration stops at the end of the buffer or at the first incomplete or
/// corrupt record; [`Records::stopped_at`] tells which.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    /// Start of the first byte not yet consumed as a valid record.
    pos: usize,
    /// Set once iteration hit an incomplete or corrupt record at `pos`.
    halt: Option<CorruptReason>,
}

/// Iterates over the valid records of `buf`, starting at offset 0.
pub fn records(buf: &[u8]) -> Records<'_> {
    Records { buf, pos: 0, halt: None }
}

impl<'a> Records<'a> {
    /// Offset just past the last record yielded so far. After iteration
    /// ends this is the length of the valid prefix of the buffer.
    pub fn next_offset(&self) -> u64 {
        to_offset(self.pos)
    }

    /// After the iterator returned `None`: the offset and reason of the
    /// record that stopped it, or `None` if it reached the end of the buffer
    /// cleanly (or has not stopped yet). An incomplete final record is
    /// reported as [`CorruptReason::Incomplete`].
    pub fn stopped_at(&self) -> Option<(u64, &CorruptReason)> {
        self.halt.as_ref().map(|reason| (self.next_offset(), reason))
    }

    /// Like [`Records::next_offset`] but as a buffer index, for in-crate use.
    pub(crate) fn consumed(&self) -> usize {
        self.pos
    }

    fn stop(&mut self, reason: CorruptReason) -> Option<(u64, RecordRef<'a>)> {
        self.halt = Some(reason);
        None
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u64, RecordRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.halt.is_some() {
            return None;
        }
        let buf: &'a [u8] = self.buf;
        let rest = buf.get(self.pos..).filter(|rest| !rest.is_empty())?;
        let offset = self.next_offset();
        match decode_at(rest) {
            Ok(Some((record, used))) => {
                // used <= rest.len(), so pos stays within the buffer.
                self.pos = self.pos.saturating_add(used);
                Some((offset, record))
            }
            Ok(None) => self.stop(CorruptReason::Incomplete { available: to_offset(rest.len()) }),
            Err(reason) => self.stop(reason),
        }
    }
}

impl std::iter::FusedIterator for Records<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_record;

    fn log_of(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, body) in bodies.iter().enumerate() {
            encode_record(u8::try_from(kind).unwrap(), body, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn yields_offsets_and_records_in_order() {
        let log = log_of(&[b"a", b"", b"ccc"]);
        let got: Vec<_> = records(&log).map(|(o, r)| (o, r.kind, r.body)).collect();
        assert_eq!(got, vec![(0, 0, &b"a"[..]), (17, 1, &b""[..]), (33, 2, &b"ccc"[..])]);
    }

    #[test]
    fn empty_buffer_is_clean() {
        let mut it = records(&[]);
        assert_eq!(it.next(), None);
        assert_eq!((it.next_offset(), it.stopped_at()), (0, None));
    }

    #[test]
    fn stops_at_incomplete_tail() {
        let mut log = log_of(&[b"a"]);
        log.extend_from_slice(b"SRJ1");
        let mut it = records(&log);
        assert_eq!(it.by_ref().count(), 1);
        let reason = CorruptReason::Incomplete { available: 4 };
        assert_eq!(it.stopped_at(), Some((17, &reason)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn stops_at_corruption_and_stays_stopped() {
        let mut log = log_of(&[b"a", b"b", b"c"]);
        log[17] = b'X';
        let mut it = records(&log);
        assert_eq!(it.by_ref().count(), 1);
        assert_eq!(it.stopped_at(), Some((17, &CorruptReason::BadMagic)));
        assert_eq!(it.next(), None);
        assert_eq!(it.next_offset(), 17);
    }
}
