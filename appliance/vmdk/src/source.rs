//! The two traits through which the reader reaches files.

use std::io;

/// A positioned, read-only byte source: one file of a VMDK (descriptor, sparse or flat
/// extent). Shared by reads from several threads, hence `&self` and `Send + Sync`.
pub trait Source: Send + Sync {
    /// The length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the source holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` from `offset`; a short source is an error (`UnexpectedEof`).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// Opens the files a VMDK refers to. Names are relative to the opener's root (the directory
/// of the descriptor given to [`crate::Disk::open`]); the reader composes the names of
/// extents and parents itself (`dir/of/child.vmdk` + `parent.vmdk` → `dir/of/parent.vmdk`),
/// so an opener only joins them to its root. A name may also be absolute (an absolute
/// `parentFileNameHint`); an opener may refuse that.
pub trait Opener {
    fn open(&self, name: &str) -> io::Result<Box<dyn Source>>;
}
