//! Hand-built VMDK images for unit and property tests: hosted sparse extents (with or without
//! an embedded descriptor) and streamOptimized files with a footer (GD_AT_END), written from
//! the specification independently of the reader.

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::Compression;

pub(crate) const S: usize = 512;

/// What a grain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    /// Grain data; shorter data is zero-padded to the grain.
    Data(Vec<u8>),
    /// Grain table entry 1.
    Zero,
}

#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub capacity: u64,
    pub grain: u64,
    pub gtes: u32,
    pub version: u32,
    pub zeroed_flag: bool,
    /// Embedded descriptor text, if any.
    pub descriptor: Option<String>,
    pub stream: bool,
    /// Allocate every grain table even when empty (as qemu does).
    pub all_tables: bool,
}

impl Spec {
    pub(crate) fn new(capacity: u64, grain: u64, gtes: u32) -> Spec {
        Spec {
            capacity,
            grain,
            gtes,
            version: 1,
            zeroed_flag: true,
            descriptor: None,
            stream: false,
            all_tables: true,
        }
    }
}

pub(crate) fn descriptor(
    cid: u32,
    parent: Option<(u32, &str)>,
    create_type: &str,
    extents: &str,
) -> String {
    let mut text = format!("# Disk DescriptorFile\nversion=1\nCID={cid:08x}\n");
    match parent {
        Some((pcid, hint)) => {
            text += &format!("parentCID={pcid:08x}\nparentFileNameHint=\"{hint}\"\n");
        }
        None => text += "parentCID=ffffffff\n",
    }
    text += &format!(
        "createType=\"{create_type}\"\n\n# Extent description\n{extents}\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n"
    );
    text
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn header(
    version: u32,
    flags: u32,
    capacity: u64,
    grain: u64,
    desc_offset: u64,
    desc_size: u64,
    gtes: u32,
    rgd: u64,
    gd: u64,
    overhead: u64,
    compress: u16,
) -> Vec<u8> {
    let mut h = vec![0u8; S];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&version.to_le_bytes());
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&grain.to_le_bytes());
    h[28..36].copy_from_slice(&desc_offset.to_le_bytes());
    h[36..44].copy_from_slice(&desc_size.to_le_bytes());
    h[44..48].copy_from_slice(&gtes.to_le_bytes());
    h[48..56].copy_from_slice(&rgd.to_le_bytes());
    h[56..64].copy_from_slice(&gd.to_le_bytes());
    h[64..72].copy_from_slice(&overhead.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&compress.to_le_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    let len = out.len().div_ceil(S) * S;
    out.resize(len, 0);
}

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn marker(val: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; S];
    m[0..8].copy_from_slice(&val.to_le_bytes());
    put_u32(&mut m, 12, kind);
    m
}

/// Builds a sparse extent holding `grains` (grain index, content); grains past the capacity
/// are a test bug.
pub(crate) fn build(spec: &Spec, grains: &[(u64, Content)]) -> Vec<u8> {
    let grain_bytes = spec.grain as usize * S;
    let gtes = u64::from(spec.gtes);
    let entries = spec.capacity.div_ceil(spec.grain * gtes) as usize;
    let gt_sectors = (gtes as usize * 4).div_ceil(S);
    let gd_sectors = (entries * 4).div_ceil(S).max(1);
    let desc_sectors =
        spec.descriptor.as_ref().map_or(0, |d| d.len().div_ceil(S).max(1) as u64 + 1);
    let mut flags = 1u32; // newline test
    if spec.zeroed_flag {
        flags |= 1 << 2;
    }
    if spec.stream {
        flags |= (1 << 16) | (1 << 17);
    }
    let compress = u16::from(spec.stream);
    let mut gd = vec![0u32; entries];
    let mut tables = vec![vec![0u32; gtes as usize]; entries];
    let mut used = vec![spec.all_tables; entries];
    for (g, _) in grains {
        used[(*g / gtes) as usize] = true;
    }

    if !spec.stream {
        let gd_sector = 1 + desc_sectors;
        let mut next = gd_sector + gd_sectors as u64;
        for (i, u) in used.iter().enumerate() {
            if *u {
                gd[i] = next as u32;
                next += gt_sectors as u64;
            }
        }
        let overhead = next.div_ceil(spec.grain) * spec.grain;
        let mut out = header(
            spec.version,
            flags,
            spec.capacity,
            spec.grain,
            if desc_sectors > 0 { 1 } else { 0 },
            desc_sectors,
            spec.gtes,
            0,
            gd_sector,
            overhead,
            compress,
        );
        if let Some(d) = &spec.descriptor {
            out.extend_from_slice(d.as_bytes());
            out.resize((1 + desc_sectors as usize) * S, 0);
        }
        let mut grain_area = Vec::new();
        let mut at = overhead;
        for (g, content) in grains {
            let entry = match content {
                Content::Zero => 1,
                Content::Data(data) => {
                    let mut block = data.clone();
                    block.resize(grain_bytes, 0);
                    grain_area.extend_from_slice(&block);
                    let e = at as u32;
                    at += spec.grain;
                    e
                }
            };
            tables[(*g / gtes) as usize][(*g % gtes) as usize] = entry;
        }
        let mut gd_bytes = vec![0u8; gd_sectors * S];
        for (i, e) in gd.iter().enumerate() {
            put_u32(&mut gd_bytes, i * 4, *e);
        }
        out.extend_from_slice(&gd_bytes);
        for (i, u) in used.iter().enumerate() {
            if *u {
                let mut t = vec![0u8; gt_sectors * S];
                for (j, e) in tables[i].iter().enumerate() {
                    put_u32(&mut t, j * 4, *e);
                }
                out.extend_from_slice(&t);
            }
        }
        out.resize(overhead as usize * S, 0);
        out.extend_from_slice(&grain_area);
        return out;
    }

    // streamOptimized: header with GD_AT_END, descriptor, grains, tables, directory, footer.
    let overhead = 1 + desc_sectors;
    let first = |gd: u64| {
        header(
            spec.version,
            flags,
            spec.capacity,
            spec.grain,
            if desc_sectors > 0 { 1 } else { 0 },
            desc_sectors,
            spec.gtes,
            0,
            gd,
            overhead,
            compress,
        )
    };
    let mut out = first(u64::MAX);
    if let Some(d) = &spec.descriptor {
        out.extend_from_slice(d.as_bytes());
        out.resize((1 + desc_sectors as usize) * S, 0);
    }
    for (g, content) in grains {
        let entry = match content {
            Content::Zero => 1,
            Content::Data(data) => {
                let mut block = data.clone();
                block.resize(grain_bytes, 0);
                let compressed = zlib(&block);
                let e = (out.len() / S) as u32;
                out.extend_from_slice(&(g * spec.grain).to_le_bytes());
                out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
                out.extend_from_slice(&compressed);
                pad(&mut out);
                e
            }
        };
        tables[(*g / gtes) as usize][(*g % gtes) as usize] = entry;
    }
    for (i, u) in used.iter().enumerate() {
        if *u {
            out.extend_from_slice(&marker(gt_sectors as u64, 1));
            gd[i] = (out.len() / S) as u32;
            let mut t = vec![0u8; gt_sectors * S];
            for (j, e) in tables[i].iter().enumerate() {
                put_u32(&mut t, j * 4, *e);
            }
            out.extend_from_slice(&t);
        }
    }
    out.extend_from_slice(&marker(gd_sectors as u64, 2));
    let gd_sector = (out.len() / S) as u64;
    let mut gd_bytes = vec![0u8; gd_sectors * S];
    for (i, e) in gd.iter().enumerate() {
        put_u32(&mut gd_bytes, i * 4, *e);
    }
    out.extend_from_slice(&gd_bytes);
    out.extend_from_slice(&marker(1, 3));
    out.extend_from_slice(&first(gd_sector));
    out.extend_from_slice(&marker(0, 0));
    out
}

/// The disk a set of grains describes: `capacity` sectors, zero where nothing is written.
pub(crate) fn model(capacity: u64, grain: u64, grains: &[(u64, Content)]) -> Vec<u8> {
    let grain_bytes = grain as usize * S;
    let mut disk = vec![0u8; capacity as usize * S];
    for (g, content) in grains {
        let start = *g as usize * grain_bytes;
        let end = (start + grain_bytes).min(disk.len());
        let piece = &mut disk[start..end];
        match content {
            Content::Zero => piece.fill(0),
            Content::Data(data) => {
                piece.fill(0);
                let n = data.len().min(piece.len());
                piece[..n].copy_from_slice(&data[..n]);
            }
        }
    }
    disk
}

/// `len` bytes of a pattern seeded by `seed`.
pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 9) as u8))
        .collect()
}
