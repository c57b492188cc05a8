//! [`Source`] and [`Opener`] over byte vectors: images built in memory (tests, tools).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use crate::{Opener, Source};

/// Bytes as a [`Source`].
#[derive(Debug, Clone)]
pub struct MemSource(pub Arc<Vec<u8>>);

impl Source for MemSource {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        let bytes = self.0.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Named byte vectors; names are matched exactly (no path normalization).
#[derive(Debug, Clone, Default)]
pub struct MemOpener {
    files: HashMap<String, Arc<Vec<u8>>>,
}

impl MemOpener {
    pub fn new() -> MemOpener {
        MemOpener::default()
    }

    /// Adds or replaces a file.
    pub fn insert(&mut self, name: impl Into<String>, bytes: Vec<u8>) -> &mut MemOpener {
        self.files.insert(name.into(), Arc::new(bytes));
        self
    }
}

impl Opener for MemOpener {
    fn open(&self, name: &str) -> io::Result<Box<dyn Source>> {
        match self.files.get(name) {
            Some(bytes) => Ok(Box::new(MemSource(Arc::clone(bytes)))),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
        }
    }
}
