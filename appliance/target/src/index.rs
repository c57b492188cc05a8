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
    /// File position of the record that holds it (a sealed record is opened whole).
    pub(crate) record: u64,
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
    /// Opens sealed records for reads of the head (`[security] encrypt_at_rest`).
    head_opener: Option<Opener>,
}

impl JournalIndex {
    pub(crate) fn new(key: Option<Arc<journal::RecordKey>>) -> JournalIndex {
        JournalIndex {
            extents: VecDeque::new(),
            segments: BTreeMap::new(),
            head: ExtentMap::new(),
            head_opener: key.map(Opener::new),
        }
    }

    pub(crate) fn key(&self) -> Option<&Arc<journal::RecordKey>> {
        self.head_opener.as_ref().map(|opener| &opener.key)
    }

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
        let opener = self.key().cloned().map(Opener::new);
        PointView { size_bytes, base, segments, map, opener }
    }

    /// Reads the disk as it is now (base plus every durable journal write).
    pub(crate) fn read_head(&self, base: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let segment = |id| self.segments.get(&id).map(|s| &*s.file);
        read_through(&self.head, base, segment, self.head_opener.as_ref(), buf, offset)
    }

    /// Reads stored data at `location` (plus `skip`) into `out`, opening a sealed record.
    pub(crate) fn read_stored(
        &self,
        file: &File,
        location: &Location,
        out: &mut [u8],
    ) -> io::Result<()> {
        read_stored(file, location, 0, self.head_opener.as_ref(), out)
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
    opener: Option<Opener>,
}

impl PointView {
    /// Fills `buf` with the point's bytes at `offset`; past the disk's end reads zeroes.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let segment = |id| self.segments.get(&id).map(|f| &**f);
        read_through(&self.map, &self.base, segment, self.opener.as_ref(), buf, offset)
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
    opener: Option<&Opener>,
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
                    read_stored(file, &location, skip, opener, out)?;
                }
                at += len as usize;
            }
        }
    }
    assert_eq!(at, buf.len(), "pieces cover the read exactly");
    Ok(())
}

fn read_stored(
    file: &File,
    location: &Location,
    skip: u64,
    opener: Option<&Opener>,
    out: &mut [u8],
) -> io::Result<()> {
    match opener {
        None => file.read_exact_at(out, location.pos + skip),
        Some(opener) => opener.read(file, location, skip, out),
    }
}

/// Reads from sealed journal records (`[security] encrypt_at_rest`). A record is read and
/// opened whole (its tag covers all of it); the last one opened is kept, since reads come in
/// runs through one record.
#[derive(Debug)]
pub(crate) struct Opener {
    key: Arc<journal::RecordKey>,
    last: std::sync::Mutex<Option<OpenedRecord>>,
}

/// The record last opened: its file (device, inode), position and plaintext body.
type OpenedRecord = ((u64, u64), u64, Arc<Vec<u8>>);

impl Opener {
    fn new(key: Arc<journal::RecordKey>) -> Opener {
        Opener { key, last: std::sync::Mutex::new(None) }
    }

    fn read(&self, file: &File, location: &Location, skip: u64, out: &mut [u8]) -> io::Result<()> {
        let body = self.body(file, location.record)?;
        let header = journal::limits::RECORD_HEADER_BYTES as u64;
        let from = location.pos + skip - location.record - header;
        let from = usize::try_from(from).map_err(io::Error::other)?;
        let piece = body.get(from..from + out.len()).ok_or_else(|| {
            io::Error::other(format!(
                "journal record at {} is shorter than its index says",
                location.record
            ))
        })?;
        out.copy_from_slice(piece);
        Ok(())
    }

    fn body(&self, file: &File, record: u64) -> io::Result<Arc<Vec<u8>>> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        let identity = (meta.dev(), meta.ino());
        if let Some((cached, at, body)) = &*self.last.lock().expect("opener lock") {
            if *cached == identity && *at == record {
                return Ok(body.clone());
            }
        }
        let header_len = journal::limits::RECORD_HEADER_BYTES;
        let mut bytes = vec![0u8; header_len];
        file.read_exact_at(&mut bytes, record)?;
        let body_len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        if body_len > journal::limits::RECORD_BODY_BYTES_MAX {
            return Err(io::Error::other(format!(
                "journal record at {record}: body of {body_len} bytes"
            )));
        }
        bytes.resize(header_len + body_len, 0);
        file.read_exact_at(&mut bytes[header_len..], record + header_len as u64)?;
        let sealed = match journal::decode_record(&bytes, record) {
            Ok(Some((sealed, _))) => sealed,
            Ok(None) => {
                return Err(io::Error::other(format!("journal record at {record} is incomplete")))
            }
            Err(error) => return Err(io::Error::other(error.to_string())),
        };
        let mut plain = Vec::with_capacity(body_len);
        let opened = self
            .key
            .decrypt_body(sealed.kind, sealed.body, &mut plain)
            .map_err(|error| io::Error::other(format!("journal record at {record}: {error}")))?
            .len();
        plain.truncate(opened);
        let body = Arc::new(plain);
        *self.last.lock().expect("opener lock") = Some((identity, record, body.clone()));
        Ok(body)
    }
}
