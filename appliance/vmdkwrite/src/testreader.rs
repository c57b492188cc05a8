//! A strict little reader of what this crate writes, for the tests: it checks the structure
//! and gives back the virtual disk's bytes, by the grain directory and (for streams) also by
//! walking the markers front to back as a streaming importer does.

use std::io::Read;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) version: u32,
    pub(crate) flags: u32,
    pub(crate) capacity_sectors: u64,
    pub(crate) descriptor: String,
    /// The virtual disk, `capacity_sectors * 512` bytes.
    pub(crate) disk: Vec<u8>,
    /// Grains with a non-zero grain table entry.
    pub(crate) allocated: u64,
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data).read_to_end(&mut out).expect("zlib stream");
    out
}

/// Parse `file` (a whole VMDK), panicking with a message on anything malformed.
pub(crate) fn parse(file: &[u8]) -> Parsed {
    assert!(file.len() >= 512 && file.len() % 512 == 0, "file length {}", file.len());
    let h = &file[..512];
    assert_eq!(&h[0..4], b"KDMV", "magic");
    let version = u32_at(h, 4);
    let flags = u32_at(h, 8);
    let capacity_sectors = u64_at(h, 12);
    assert_eq!(u64_at(h, 20), 128, "grain size");
    let desc_off = u64_at(h, 28) as usize;
    let desc_size = u64_at(h, 36) as usize;
    assert_eq!(u32_at(h, 44), 512, "GTEs per GT");
    let mut gd_offset = u64_at(h, 56);
    let overhead = u64_at(h, 64);
    assert_eq!(&h[73..77], b"\n \r\n", "newline detection");
    assert!(h[79..].iter().all(|&b| b == 0), "header padding");
    let raw = &file[desc_off * 512..(desc_off + desc_size) * 512];
    let text_len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let descriptor = String::from_utf8(raw[..text_len].to_vec()).expect("utf-8 descriptor");
    assert!(raw[text_len..].iter().all(|&b| b == 0));
    assert!(
        descriptor.contains(&format!("\nRW {capacity_sectors} SPARSE \"")),
        "extent line in {descriptor}"
    );

    let grains = capacity_sectors.div_ceil(128);
    let tables = grains.div_ceil(512);
    let stream = flags & (1 << 17) != 0;
    if stream {
        assert_eq!(version, 3);
        assert_eq!(flags, 0x30001);
        assert_eq!(u16::from_le_bytes([h[77], h[78]]), 1, "deflate");
        assert_eq!(gd_offset, u64::MAX, "GD at end");
        let n = file.len();
        let footer_marker = &file[n - 1536..n - 1024];
        assert_eq!((u64_at(footer_marker, 0), u32_at(footer_marker, 8)), (1, 0));
        assert_eq!(u32_at(footer_marker, 12), 3, "footer marker");
        let footer = &file[n - 1024..n - 512];
        assert_eq!(&footer[..56], &h[..56], "footer repeats the header");
        assert_eq!(&footer[64..], &h[64..], "footer repeats the header");
        gd_offset = u64_at(footer, 56);
        assert!(file[n - 512..].iter().all(|&b| b == 0), "EOS marker");
    } else {
        assert_eq!(version, 1);
        assert_eq!(flags, 3);
        assert_eq!(overhead % 128, 0);
    }

    let mut disk = vec![0u8; (capacity_sectors * 512) as usize];
    let mut allocated = 0;
    let gd = |at: u64, i: u64| u32_at(file, (at * 512 + i * 4) as usize) as u64;
    for t in 0..tables {
        let gt_at = gd(gd_offset, t);
        if gt_at == 0 {
            assert!(stream, "monolithicSparse preallocates every table");
            continue;
        }
        if !stream {
            let rgd = u64_at(h, 48);
            let rgt_at = gd(rgd, t);
            let (a, b) = ((gt_at * 512) as usize, (rgt_at * 512) as usize);
            assert_eq!(file.get(a..a + 2048), file.get(b..b + 2048), "redundant GT {t}");
        } else {
            let m = ((gt_at - 1) * 512) as usize;
            assert_eq!((u64_at(file, m), u32_at(file, m + 8), u32_at(file, m + 12)), (4, 0, 1));
        }
        for e in 0..512u64 {
            let g = t * 512 + e;
            // A table past the file's end (a hole never written) reads as zeros.
            let at = (gt_at * 512 + e * 4) as usize;
            let entry = if at + 4 <= file.len() { u32_at(file, at) as u64 } else { 0 };
            if entry == 0 {
                continue;
            }
            assert!(g < grains, "entry {e} of table {t} past the capacity");
            allocated += 1;
            let dst = (g * 65536) as usize;
            let want = (disk.len() - dst).min(65536);
            let grain: Vec<u8> = if stream {
                let m = (entry * 512) as usize;
                assert_eq!(u64_at(file, m), g * 128, "grain marker lba");
                let size = u32_at(file, m + 8) as usize;
                inflate(&file[m + 12..m + 12 + size])
            } else {
                assert!(entry >= overhead && (entry - overhead) % 128 == 0, "grain offset");
                file[(entry * 512) as usize..(entry * 512) as usize + 65536].to_vec()
            };
            assert_eq!(grain.len(), 65536, "grain {g} size");
            disk[dst..dst + want].copy_from_slice(&grain[..want]);
        }
    }
    if stream {
        assert_eq!(walk_stream(file, overhead, capacity_sectors), disk, "streamed read");
    }
    Parsed { version, flags, capacity_sectors, descriptor, disk, allocated }
}

/// Read a stream front to back by its markers only, as an importer does.
fn walk_stream(file: &[u8], overhead: u64, capacity_sectors: u64) -> Vec<u8> {
    let mut disk = vec![0u8; (capacity_sectors * 512) as usize];
    let mut at = (overhead * 512) as usize;
    let mut seen = [false; 4];
    let mut last_lba = None;
    loop {
        let (val, size, kind) = (u64_at(file, at), u32_at(file, at + 8), u32_at(file, at + 12));
        if size > 0 {
            assert!(!seen[2], "grain after the GD");
            assert!(last_lba.is_none_or(|l| val > l), "grains in disk order");
            last_lba = Some(val);
            let grain = inflate(&file[at + 12..at + 12 + size as usize]);
            let dst = (val * 512) as usize;
            let want = (disk.len() - dst).min(grain.len());
            disk[dst..dst + want].copy_from_slice(&grain[..want]);
            at += (12 + size as usize).div_ceil(512) * 512;
            continue;
        }
        assert!(file[at + 16..at + 512].iter().all(|&b| b == 0), "marker padding");
        match kind {
            0 => {
                assert_eq!(at + 512, file.len(), "EOS is last");
                assert!(seen[2] && seen[3]);
                return disk;
            }
            1 => assert!(!seen[2]),
            2 => assert!(!seen[2]),
            3 => assert!(seen[2] && !seen[3]),
            k => panic!("marker type {k}"),
        }
        seen[kind as usize] = true;
        at += 512 + val as usize * 512;
    }
}
