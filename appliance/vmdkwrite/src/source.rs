//! The source of a disk's bytes.

use std::io;

/// A disk image readable at any offset.
pub trait ReadAt {
    /// The image's length in bytes.
    fn len(&self) -> u64;

    /// Whether the image has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill all of `buf` with the bytes at `offset`. The writers only ask for bytes
    /// inside `0..len()`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Which parts of `offset..offset + len` may hold data, as `(offset, len)` pairs;
    /// every byte outside them is taken to be zero and never read. The pairs need not be
    /// sorted, merged or clipped to the window. The default says everything may.
    fn data_ranges(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        vec![(offset, len)]
    }
}

fn out_of_range(offset: u64, want: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {want} bytes at {offset} past the end ({len} bytes)"),
    )
}

impl ReadAt for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let total = <[u8]>::len(self) as u64;
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= total);
        match end {
            // Both bounds are ≤ the slice's length, so they fit a usize.
            Some(end) => {
                buf.copy_from_slice(&self[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(out_of_range(offset, buf.len(), total)),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }

    fn data_ranges(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        (**self).data_ranges(offset, len)
    }
}

/// A file as a source: its length is taken once, when it is wrapped.
#[cfg(unix)]
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

#[cfg(unix)]
impl FileSource {
    /// Wrap `file`, reading its length now.
    pub fn new(file: std::fs::File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

#[cfg(unix)]
impl ReadAt for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
}
