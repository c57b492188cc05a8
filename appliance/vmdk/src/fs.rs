//! [`Source`] and [`Opener`] over `std::fs`: the only module that touches files.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::{Disk, Opener, Source, VmdkError};

/// A file as a [`Source`].
#[derive(Debug)]
pub struct FileSource(pub File);

impl Source for FileSource {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_exact_at(&self.0, buf, offset)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens names relative to a directory.
#[derive(Debug, Clone)]
pub struct FsOpener {
    root: PathBuf,
    confined: bool,
}

impl FsOpener {
    /// Opens any name: relative ones under `root`, absolute ones as they are.
    pub fn new(root: impl Into<PathBuf>) -> FsOpener {
        FsOpener { root: root.into(), confined: false }
    }

    /// Opens only names that stay under `root`: absolute names and `..` components are refused
    /// (`PermissionDenied`). For images from outside, whose descriptors could otherwise name
    /// any file on the appliance as an extent.
    pub fn confined(root: impl Into<PathBuf>) -> FsOpener {
        FsOpener { root: root.into(), confined: true }
    }
}

impl Opener for FsOpener {
    fn open(&self, name: &str) -> io::Result<Box<dyn Source>> {
        let path = Path::new(name);
        if self.confined
            && path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "name leaves the image directory (confined opener)",
            ));
        }
        Ok(Box::new(FileSource(File::open(self.root.join(path))?)))
    }
}

/// Opens the disk (with its whole snapshot chain) whose descriptor is at `path`; extents and
/// parents are resolved relative to its directory, and may be anywhere.
pub fn open(path: &Path) -> Result<Disk, VmdkError> {
    let (opener, name) = split(path, FsOpener::new);
    Disk::open(&opener, &name)
}

/// Like [`open`], but every file of the chain must stay in the descriptor's directory or below
/// (see [`FsOpener::confined`]).
pub fn open_confined(path: &Path) -> Result<Disk, VmdkError> {
    let (opener, name) = split(path, FsOpener::confined);
    Disk::open(&opener, &name)
}

fn split(path: &Path, make: fn(PathBuf) -> FsOpener) -> (FsOpener, String) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (make(dir), name)
}
