//! A disk: the snapshot chain from the top link down to its base, read as one disk.

use std::fmt;
use std::io;

use crate::descriptor::{CreateType, Descriptor, ExtentLine, ExtentType};
use crate::error::shown;
use crate::header::{COWD_MAGIC, MAGIC, SPARSE_HEADER_LEN};
use crate::sparse::SparseExtent;
use crate::{Opener, Source, SparseHeader, VmdkError, CHAIN_DEPTH_MAX, DESCRIPTOR_MAX, SECTOR};

/// One link of a snapshot chain, as [`Disk::chain`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The descriptor's name, as given to the opener.
    pub file: String,
    pub create_type: CreateType,
    /// `None` for a bare sparse extent (no descriptor) or a descriptor without `CID`.
    pub cid: Option<u32>,
    /// `None` for the base of the chain.
    pub parent_cid: Option<u32>,
    pub parent_file_name_hint: Option<String>,
    pub capacity_bytes: u64,
    /// The extent files, as given to the opener (ZERO extents have none).
    pub extent_files: Vec<String>,
    /// Whether the descriptor is embedded in the sparse extent (monolithicSparse,
    /// streamOptimized) rather than a text file of its own.
    pub embedded_descriptor: bool,
}

/// A range of the disk held by the top link, from [`Disk::allocated_extents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatedRange {
    /// Byte offset in the disk.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Held as "zeros" (zeroed-grain entries, ZERO extents) rather than as data.
    pub zero: bool,
}

enum ExtentData {
    Zero,
    Flat { file: String, source: Box<dyn Source>, offset: u64 },
    Sparse(Box<SparseExtent>),
}

struct Extent {
    /// Disk byte offset.
    start: u64,
    len: u64,
    data: ExtentData,
}

struct Link {
    info: LinkInfo,
    extents: Vec<Extent>,
}

/// An opened VMDK with its snapshot chain. Reads take `&self` and may run from several
/// threads.
pub struct Disk {
    /// `links[0]` is the top (the file opened), the last one the base.
    links: Vec<Link>,
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disk").field("chain", &self.chain()).finish()
    }
}

/// `dir/of/` of `dir/of/name` (empty for a bare name).
fn dir_of(name: &str) -> &str {
    match name.rfind('/') {
        Some(i) => &name[..=i],
        None => "",
    }
}

/// `rel` relative to `dir`; an absolute `rel` as is.
fn join(dir: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        rel.to_owned()
    } else {
        format!("{dir}{rel}")
    }
}

/// Last component of a hint, with `/` or `\` as separators.
fn base_name(hint: &str) -> &str {
    hint.rsplit(['/', '\\']).next().unwrap_or(hint)
}

/// Lexical normalization for loop detection: drops `.` and empty components, folds `x/..`.
fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if name.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

fn read_head(name: &str, source: &dyn Source, len: u64) -> Result<Vec<u8>, VmdkError> {
    let mut head = vec![0u8; len.min(SPARSE_HEADER_LEN as u64) as usize];
    source
        .read_exact_at(&mut head, 0)
        .map_err(|e| VmdkError::io(name, "cannot read the header", e))?;
    Ok(head)
}

fn source_len(name: &str, source: &dyn Source) -> Result<u64, VmdkError> {
    source.len().map_err(|e| VmdkError::io(name, "cannot get the length", e))
}

fn open_named(opener: &dyn Opener, name: &str, what: &str) -> Result<Box<dyn Source>, VmdkError> {
    opener.open(name).map_err(|e| VmdkError::io(name, format!("cannot open {what}"), e))
}

/// Opens one link: its descriptor (embedded or not) and extents.
fn open_link(
    opener: &dyn Opener,
    name: &str,
    source: Box<dyn Source>,
) -> Result<(Link, Descriptor), VmdkError> {
    let len = source_len(name, source.as_ref())?;
    let head = read_head(name, source.as_ref(), len)?;
    let magic = head.get(..4);
    if magic == Some(&MAGIC[..]) || magic == Some(&COWD_MAGIC[..]) {
        let header = SparseHeader::parse(name, &head)?;
        let (descriptor, embedded) = if header.descriptor_offset == 0 {
            let descriptor = Descriptor {
                version: 1,
                cid: None,
                parent_cid: None,
                create_type: if header.compressed() {
                    CreateType::StreamOptimized
                } else {
                    CreateType::MonolithicSparse
                },
                parent_file_name_hint: None,
                extents: vec![ExtentLine {
                    access: crate::Access::ReadWrite,
                    sectors: header.capacity,
                    kind: ExtentType::Sparse,
                    file: Some(name.to_owned()),
                    offset: 0,
                }],
            };
            (descriptor, false)
        } else {
            let start = header.descriptor_offset * SECTOR;
            let size = header.descriptor_size * SECTOR;
            let need = start.saturating_add(size);
            if need > len {
                return Err(VmdkError::truncated(name, "embedded descriptor", need, len));
            }
            let mut text = vec![0u8; size as usize];
            source
                .read_exact_at(&mut text, start)
                .map_err(|e| VmdkError::io(name, "cannot read the embedded descriptor", e))?;
            let descriptor = Descriptor::parse(name, &text)?;
            if descriptor.extents.len() != 1 || descriptor.extents[0].kind != ExtentType::Sparse {
                return Err(VmdkError::BadEmbeddedDescriptor {
                    file: shown(name),
                    extents: descriptor.extents.len(),
                });
            }
            (descriptor, true)
        };
        // The extent is this file, whatever name the embedded descriptor gives it (the file
        // may have been renamed).
        let sectors = descriptor.extents[0].sectors;
        let sparse = SparseExtent::open(name, source, len, header, sectors)?;
        let info = LinkInfo {
            file: name.to_owned(),
            create_type: descriptor.create_type,
            cid: descriptor.cid,
            parent_cid: descriptor.parent_cid,
            parent_file_name_hint: descriptor.parent_file_name_hint.clone(),
            capacity_bytes: sectors * SECTOR,
            extent_files: vec![name.to_owned()],
            embedded_descriptor: embedded,
        };
        let extents = vec![Extent {
            start: 0,
            len: sectors * SECTOR,
            data: ExtentData::Sparse(Box::new(sparse)),
        }];
        return Ok((Link { info, extents }, descriptor));
    }

    if len > DESCRIPTOR_MAX {
        return Err(VmdkError::DescriptorTooLong { file: shown(name), len });
    }
    let mut text = vec![0u8; len as usize];
    source
        .read_exact_at(&mut text, 0)
        .map_err(|e| VmdkError::io(name, "cannot read the descriptor", e))?;
    drop(source);
    // The descriptor ends at its first NUL, as in qemu. When qemu rewrites the CID it writes
    // back a whole buffer, so a new CID shorter than the old one leaves stale bytes of the old
    // text after the NUL: those are ignored if the NUL ends a line. A NUL inside a line
    // followed by more bytes means a binary file.
    if let Some(first) = text.iter().position(|&b| b == 0) {
        let ends_a_line = first > 0 && text[first - 1] == b'\n';
        if let Some(offset) = text[first..].iter().position(|&b| b != 0).filter(|_| !ends_a_line) {
            return Err(VmdkError::NotVmdk { file: shown(name), offset: first + offset });
        }
    }
    let descriptor = Descriptor::parse(name, &text)?;
    let dir = dir_of(name);
    let mut extents = Vec::with_capacity(descriptor.extents.len());
    let mut extent_files = Vec::new();
    let mut start = 0u64;
    for line in &descriptor.extents {
        let bytes = line.sectors * SECTOR;
        let data = match (line.kind, &line.file) {
            (ExtentType::Zero, _) | (_, None) => ExtentData::Zero,
            (ExtentType::Flat | ExtentType::Vmfs, Some(file)) => {
                let file = join(dir, file);
                let source = open_named(opener, &file, "flat extent")?;
                let file_len = source_len(&file, source.as_ref())?;
                let offset = line.offset * SECTOR;
                let need = offset.saturating_add(bytes);
                if need > file_len {
                    return Err(VmdkError::truncated(&file, "flat extent", need, file_len));
                }
                extent_files.push(file.clone());
                ExtentData::Flat { file, source, offset }
            }
            (ExtentType::Sparse, Some(file)) => {
                let file = join(dir, file);
                let source = open_named(opener, &file, "sparse extent")?;
                let file_len = source_len(&file, source.as_ref())?;
                let head = read_head(&file, source.as_ref(), file_len)?;
                let header = SparseHeader::parse(&file, &head)?;
                extent_files.push(file.clone());
                ExtentData::Sparse(Box::new(SparseExtent::open(
                    &file,
                    source,
                    file_len,
                    header,
                    line.sectors,
                )?))
            }
        };
        if bytes > 0 {
            extents.push(Extent { start, len: bytes, data });
        }
        start += bytes;
    }
    let info = LinkInfo {
        file: name.to_owned(),
        create_type: descriptor.create_type,
        cid: descriptor.cid,
        parent_cid: descriptor.parent_cid,
        parent_file_name_hint: descriptor.parent_file_name_hint.clone(),
        capacity_bytes: start,
        extent_files,
        embedded_descriptor: false,
    };
    Ok((Link { info, extents }, descriptor))
}

impl Disk {
    /// Opens the VMDK named `name` (a descriptor file, or a sparse extent with an embedded
    /// descriptor, or a bare sparse extent) and its parents, checking every link.
    pub fn open(opener: &dyn Opener, name: &str) -> Result<Disk, VmdkError> {
        let source = open_named(opener, name, "the disk")?;
        let (mut link, mut descriptor) = open_link(opener, name, source)?;
        let mut seen = vec![normalize(name)];
        let mut links = Vec::new();
        loop {
            let hint = descriptor.parent_file_name_hint.take();
            let parent_cid = descriptor.parent_cid;
            let child = link.info.file.clone();
            links.push(link);
            let (Some(hint), Some(parent_cid)) = (hint, parent_cid) else { break };
            if links.len() >= CHAIN_DEPTH_MAX {
                return Err(VmdkError::ChainTooDeep { file: shown(&child) });
            }
            let dir = dir_of(&child);
            let mut parent = join(dir, &hint);
            let source = match opener.open(&parent) {
                Ok(source) => source,
                Err(e) if e.kind() == io::ErrorKind::NotFound && base_name(&hint) != hint => {
                    let alternative = join(dir, base_name(&hint));
                    match opener.open(&alternative) {
                        Ok(source) => {
                            parent = alternative;
                            source
                        }
                        Err(_) => {
                            return Err(VmdkError::io(
                                &parent,
                                format!("cannot open the parent of {child}"),
                                e,
                            ))
                        }
                    }
                }
                Err(e) => {
                    return Err(VmdkError::io(
                        &parent,
                        format!("cannot open the parent of {child}"),
                        e,
                    ))
                }
            };
            let key = normalize(&parent);
            if seen.contains(&key) {
                return Err(VmdkError::ChainLoop { file: shown(&child), parent: shown(&parent) });
            }
            seen.push(key);
            let (next, next_descriptor) = open_link(opener, &parent, source)?;
            if next.info.cid != Some(parent_cid) {
                return Err(VmdkError::ParentCidMismatch {
                    child: shown(&child),
                    parent_cid,
                    parent: shown(&parent),
                    found: next.info.cid,
                });
            }
            link = next;
            descriptor = next_descriptor;
        }
        Ok(Disk { links })
    }

    /// Size of the disk (of the top link) in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.links[0].info.capacity_bytes
    }

    /// The links, top first.
    pub fn chain(&self) -> Vec<LinkInfo> {
        self.links.iter().map(|l| l.info.clone()).collect()
    }

    /// Reads `buf.len()` bytes at `offset` as the whole chain shows them: each grain from the
    /// topmost link that holds it, zeros where none does (or past a smaller parent's end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), VmdkError> {
        let capacity = self.capacity_bytes();
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > capacity) {
            return Err(VmdkError::OutOfRange { offset, len, capacity });
        }
        self.read_link(0, buf, offset)
    }

    fn read_link(&self, level: usize, buf: &mut [u8], offset: u64) -> Result<(), VmdkError> {
        let Some(link) = self.links.get(level) else {
            buf.fill(0);
            return Ok(());
        };
        let capacity = link.info.capacity_bytes;
        let inside = capacity.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (buf, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        let mut index = link.extents.partition_point(|e| e.start + e.len <= offset);
        let mut done = 0usize;
        while done < buf.len() {
            let Some(extent) = link.extents.get(index) else {
                // Unreachable: the extents cover the capacity.
                buf[done..].fill(0);
                break;
            };
            let pos = offset + done as u64;
            let rel = pos - extent.start;
            let n = (extent.len - rel).min((buf.len() - done) as u64) as usize;
            let piece = &mut buf[done..done + n];
            match &extent.data {
                ExtentData::Zero => piece.fill(0),
                ExtentData::Flat { file, source, offset: base } => {
                    source.read_exact_at(piece, base + rel).map_err(|e| {
                        VmdkError::io(
                            file,
                            format!("cannot read {n} bytes at offset {}", base + rel),
                            e,
                        )
                    })?;
                }
                ExtentData::Sparse(sparse) => {
                    let start = extent.start;
                    sparse.read(piece, rel, &mut |hole, at| {
                        self.read_link(level + 1, hole, start + at)
                    })?;
                }
            }
            done += n;
            index += 1;
        }
        Ok(())
    }

    /// The ranges the top link holds, in order, adjacent grains of the same kind merged: for a
    /// snapshot delta, the blocks changed since its parent. Sparse extents report their
    /// allocated grains (zeroed grains with `zero`), flat extents all of themselves, ZERO
    /// extents all of themselves with `zero`.
    pub fn allocated_extents(&self) -> Result<Vec<AllocatedRange>, VmdkError> {
        let mut out: Vec<AllocatedRange> = Vec::new();
        self.visit_allocated(&mut |range| match out.last_mut() {
            Some(last) if last.offset + last.len == range.offset && last.zero == range.zero => {
                last.len += range.len;
            }
            _ => out.push(range),
        })?;
        Ok(out)
    }

    /// Like [`Disk::allocated_extents`] without building the list: `f` gets each allocated
    /// grain (or whole flat / ZERO extent) in disk order, unmerged.
    pub fn visit_allocated(&self, f: &mut dyn FnMut(AllocatedRange)) -> Result<(), VmdkError> {
        for extent in &self.links[0].extents {
            match &extent.data {
                ExtentData::Zero => {
                    f(AllocatedRange { offset: extent.start, len: extent.len, zero: true })
                }
                ExtentData::Flat { .. } => {
                    f(AllocatedRange { offset: extent.start, len: extent.len, zero: false })
                }
                ExtentData::Sparse(sparse) => {
                    sparse.visit_allocated(&mut |offset, len, zero| {
                        f(AllocatedRange { offset: extent.start + offset, len, zero })
                    })?
                }
            }
        }
        Ok(())
    }

    /// The sparse header of the top link's first sparse extent (for diagnostics).
    pub fn top_sparse_header(&self) -> Option<&SparseHeader> {
        self.links[0].extents.iter().find_map(|e| match &e.data {
            ExtentData::Sparse(s) => Some(s.header()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(dir_of("a/b/c.vmdk"), "a/b/");
        assert_eq!(dir_of("c.vmdk"), "");
        assert_eq!(join("a/", "p.vmdk"), "a/p.vmdk");
        assert_eq!(join("a/", "/abs/p.vmdk"), "/abs/p.vmdk");
        assert_eq!(base_name("C:\\VMs\\base.vmdk"), "base.vmdk");
        assert_eq!(normalize("./a/../b//c.vmdk"), "b/c.vmdk");
        assert_eq!(normalize("../x.vmdk"), "../x.vmdk");
        assert_eq!(normalize("/a/./b.vmdk"), "/a/b.vmdk");
    }
}
