//! The in-memory index of a disk's redo journal (design.md §5): every write still in the
//! journal, in sequence order, with where its data lies in which segment file. From it come
//! the disk's current contents (`head`) and, for any retained point, a [`PointView`] that
//! reads the disk as of that point without copying anything.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use points::{ExtentMap, Piece};

/// Where the newest bytes of an extent live: in a journal segment, or nowhere (zeroes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// The sequence of the frame that wrote it.
    pub(crate) seq: u64,
    pub(crate) segment: u64,
    /// File position of the extent's first data byte within the segment.
    pub(crate) pos: u64,
    /// A zero or trim extent: no data stored, reads as zeroes.
    pub(crate) zero: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexedExtent {
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) location: Location,
}

/// A journal segment file, open for reading. Views hold their own `Arc`, so a segment that
/// pruning deletes stays readable for a test failover that still uses it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    /// Highest sequence with a record in this segment (0 if none yet).
    pub(crate) last_seq: u64,
    pub(crate) bytes: u64,
}

#[derive(Debug)]
pub(crate) struct JournalIndex {
    /// Every journaled extent newer than the base image, in sequence order.
    pub(crate) extents: VecDeque<IndexedExtent>,
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// The newest location of every journaled byte: the disk as it is now.
    head: ExtentMap<Location>,
}

impl Default for JournalIndex {
    fn default() -> Self {
        JournalIndex { extents: VecDeque::new(), segments: BTreeMap::new(), head: ExtentMap::new() }
    }
}

impl JournalIndex {
    pub(crate) fn push(&mut self, extent: IndexedExtent) {
        if let Some(last) = self.extents.back() {
            assert!(last.location.seq <= extent.location.seq, "journal order is sequence order");
        }
        self.head.insert(extent.offset, u64::from(extent.len), extent.location);
        self.extents.push_back(extent);
    }

    /// Journal bytes on disk, all segments together.
    pub(crate) fn bytes(&self) -> u64 {
        self.segments.values().map(|segment| segment.bytes).sum()
    }

    /// Forgets every extent the base image now holds (sequence `<= base_seq`).
    pub(crate) fn drop_through(&mut self, base_seq: u64) {
        while self.extents.front().is_some_and(|extent| extent.location.seq <= base_seq) {
            self.extents.pop_front();
        }
        self.head.retain(|location| location.seq > base_seq);
    }

    /// The disk as of sequence `seq` (which must not be older than the base image).
    pub(crate) fn view(&self, seq: u64, base: Arc<File>, size_bytes: u64) -> PointView {
        let mut map = ExtentMap::new();
        for extent in self.extents.iter().take_while(|extent| extent.location.seq <= seq) {
            map.insert(extent.offset, u64::from(extent.len), extent.location);
        }
        let segments =
            self.segments.iter().map(|(&id, segment)| (id, segment.file.clone())).collect();
        PointView { size_bytes, base, segments, map }
    }

    /// Reads the disk as it is now (base plus every durable journal write).
    pub(crate) fn read_head(&self, base: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_through(&self.head, base, |id| self.segments.get(&id).map(|s| &*s.file), buf, offset)
    }
}

/// A recovery point opened for reading: the base image overlaid with the journal's newest
/// extents up to the point.
#[derive(Debug)]
pub(crate) struct PointView {
    pub(crate) size_bytes: u64,
    base: Arc<File>,
    segments: BTreeMap<u64, Arc<File>>,
    map: ExtentMap<Location>,
}

impl PointView {
    /// Fills `buf` with the point's bytes at `offset`; past the disk's end reads zeroes.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_through(&self.map, &self.base, |id| self.segments.get(&id).map(|f| &**f), buf, offset)
    }

    /// Journal extents the view overlays on the base.
    pub(crate) fn extent_count(&self) -> usize {
        self.map.len()
    }

    /// Ranges of `[offset, offset + len)` that may hold data (at most `max`): the journal's
    /// extents and the base image's allocated ranges. Anything else reads as zeroes.
    pub(crate) fn data_ranges(&self, offset: u64, len: u64, max: usize) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut add = |start: u64, len: u64| match ranges.last_mut() {
            Some((last_start, last_len)) if *last_start + *last_len == start => *last_len += len,
            _ => ranges.push((start, len)),
        };
        for piece in self.map.read(offset, len) {
            match piece {
                Piece::Stored { offset, len, location, .. } if !location.zero => add(offset, len),
                Piece::Stored { .. } => {}
                Piece::Base { offset, len } => {
                    let base = fsio::data_ranges(&self.base, offset, len, max)
                        .unwrap_or_else(|_| vec![(offset, len)]);
                    for (start, len) in base {
                        add(start, len);
                    }
                }
            }
        }
        ranges.truncate(max);
        ranges
    }
}

fn read_through<'f>(
    map: &ExtentMap<Location>,
    base: &File,
    segment: impl Fn(u64) -> Option<&'f File>,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<()> {
    let mut at = 0usize;
    for piece in map.read(offset, buf.len() as u64) {
        match piece {
            Piece::Base { len, offset } => {
                let out = &mut buf[at..at + len as usize];
                fsio::read_at_padded(base, out, offset)?;
                at += len as usize;
            }
            Piece::Stored { len, location, skip, .. } => {
                let out = &mut buf[at..at + len as usize];
                if location.zero {
                    out.fill(0);
                } else {
                    let file = segment(location.segment).ok_or_else(|| {
                        io::Error::other(format!(
                            "journal segment {} is gone while a read needs it",
                            location.segment
                        ))
                    })?;
                    file.read_exact_at(out, location.pos + skip)?;
                }
                at += len as usize;
            }
        }
    }
    assert_eq!(at, buf.len(), "pieces cover the read exactly");
    Ok(())
}
