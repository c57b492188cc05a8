//! A map of non-overlapping disk extents to data locations, where a later insert replaces
//! whatever it overlaps (splitting extents it covers partly): the newest write wins, as on
//! the disk.

use std::collections::BTreeMap;

/// Where bytes come from when reading a range: a stored location (with the offset of these
/// bytes within the stored extent), or the base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<L> {
    /// `len` bytes at `location`, starting `skip` bytes into the extent stored there.
    Stored { offset: u64, len: u64, location: L, skip: u64 },
    /// `len` bytes of the base image at `offset`.
    Base { offset: u64, len: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent<L> {
    end: u64,
    location: L,
    /// Bytes of the stored extent before this one's start (after an earlier split).
    skip: u64,
}

/// Extents keyed by start offset; never overlapping, never empty.
#[derive(Debug, Clone, Default)]
pub struct ExtentMap<L> {
    extents: BTreeMap<u64, Extent<L>>,
}

impl<L: Copy> ExtentMap<L> {
    pub fn new() -> Self {
        ExtentMap { extents: BTreeMap::new() }
    }

    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Records that `[offset, offset + len)` now lives at `location` (its first byte at the
    /// start of what `location` stores). Newer than everything inserted before.
    pub fn insert(&mut self, offset: u64, len: u64, location: L) {
        let Some(end) = offset.checked_add(len).filter(|_| len > 0) else { return };
        self.cut(offset, end);
        self.extents.insert(offset, Extent { end, location, skip: 0 });
    }

    /// Removes `[start, end)` from every extent, keeping the parts outside it.
    fn cut(&mut self, start: u64, end: u64) {
        // An extent starting before `start` may reach into the range: keep its head, and its
        // tail if it reaches past `end`.
        if let Some((&first, &extent)) = self.extents.range(..start).next_back() {
            if extent.end > start {
                self.extents.insert(first, Extent { end: start, ..extent });
                if extent.end > end {
                    let skip = extent.skip + (end - first);
                    self.extents.insert(end, Extent { end: extent.end, skip, ..extent });
                }
            }
        }
        let inside: Vec<u64> = self.extents.range(start..end).map(|(&at, _)| at).collect();
        for at in inside {
            let extent = self.extents.remove(&at).expect("listed above");
            if extent.end > end {
                let skip = extent.skip + (end - at);
                self.extents.insert(end, Extent { end: extent.end, skip, ..extent });
            }
        }
    }

    /// Drops the extents whose location fails `keep` (their bytes fall back to the base).
    pub fn retain(&mut self, mut keep: impl FnMut(&L) -> bool) {
        self.extents.retain(|_, extent| keep(&extent.location));
    }

    /// The pieces `[offset, offset + len)` is made of, in order, covering it exactly.
    pub fn read(&self, offset: u64, len: u64) -> Vec<Piece<L>> {
        let mut pieces = Vec::new();
        let end = offset.saturating_add(len);
        let mut at = offset;
        let first = self
            .extents
            .range(..=offset)
            .next_back()
            .filter(|(_, extent)| extent.end > offset)
            .map(|(&start, _)| start)
            .unwrap_or(offset);
        for (&start, extent) in self.extents.range(first..end) {
            if start > at {
                pieces.push(Piece::Base { offset: at, len: start - at });
                at = start;
            }
            let piece_end = extent.end.min(end);
            if piece_end > at {
                let skip = extent.skip + (at - start);
                pieces.push(Piece::Stored {
                    offset: at,
                    len: piece_end - at,
                    location: extent.location,
                    skip,
                });
                at = piece_end;
            }
        }
        if at < end {
            pieces.push(Piece::Base { offset: at, len: end - at });
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_write_wins_and_splits_older_ones() {
        let mut map = ExtentMap::new();
        map.insert(0, 100, 'a');
        map.insert(40, 20, 'b');
        assert_eq!(
            map.read(0, 120),
            vec![
                Piece::Stored { offset: 0, len: 40, location: 'a', skip: 0 },
                Piece::Stored { offset: 40, len: 20, location: 'b', skip: 0 },
                Piece::Stored { offset: 60, len: 40, location: 'a', skip: 60 },
                Piece::Base { offset: 100, len: 20 },
            ]
        );
        assert_eq!(map.len(), 3);
        map.insert(0, 100, 'c');
        assert_eq!(map.len(), 1);
        assert_eq!(
            map.read(10, 5),
            vec![Piece::Stored { offset: 10, len: 5, location: 'c', skip: 10 }]
        );
    }

    #[test]
    fn retain_drops_extents_back_to_the_base() {
        let mut map = ExtentMap::new();
        map.insert(0, 10, 1);
        map.insert(10, 10, 2);
        map.retain(|location| *location != 1);
        assert_eq!(
            map.read(0, 20),
            vec![
                Piece::Base { offset: 0, len: 10 },
                Piece::Stored { offset: 10, len: 10, location: 2, skip: 0 },
            ]
        );
    }

    #[test]
    fn empty_and_overflowing_inserts_are_ignored() {
        let mut map = ExtentMap::new();
        map.insert(5, 0, 1);
        map.insert(u64::MAX, 2, 1);
        assert!(map.is_empty());
        assert_eq!(map.read(0, 8), vec![Piece::Base { offset: 0, len: 8 }]);
    }
}
