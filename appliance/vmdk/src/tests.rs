//! Unit tests on hand-built images (see `testimage`).

use crate::mem::MemOpener;
use crate::testimage::{build, descriptor, header, model, pattern, zlib, Content, Spec, S};
use crate::{
    support_catalogue, AllocatedRange, CreateType, Descriptor, Disk, SparseHeader, VmdkError,
    CAPACITY_MAX_BYTES, CHAIN_DEPTH_MAX, DESCRIPTOR_MAX,
};

const CAP: u64 = 100; // sectors: 12.5 grains of 8 sectors, the last one partial
const GRAIN: u64 = 8;
const GTES: u32 = 4; // 4 grains per table: 4 tables

fn mono(cid: u32, parent: Option<(u32, &str)>, name: &str, grains: &[(u64, Content)]) -> Vec<u8> {
    let mut spec = Spec::new(CAP, GRAIN, GTES);
    spec.descriptor =
        Some(descriptor(cid, parent, "monolithicSparse", &format!("RW {CAP} SPARSE \"{name}\"")));
    build(&spec, grains)
}

fn stream(name: &str, grains: &[(u64, Content)]) -> Vec<u8> {
    let mut spec = Spec::new(CAP, GRAIN, GTES);
    spec.stream = true;
    spec.version = 3;
    spec.all_tables = false;
    spec.descriptor =
        Some(descriptor(0x1234, None, "streamOptimized", &format!("RW {CAP} SPARSE \"{name}\"")));
    build(&spec, grains)
}

fn data(seed: u8) -> Content {
    Content::Data(pattern(seed, GRAIN as usize * S))
}

fn open1(name: &str, bytes: Vec<u8>) -> Result<Disk, VmdkError> {
    let mut opener = MemOpener::new();
    opener.insert(name, bytes);
    Disk::open(&opener, name)
}

fn read_all(disk: &Disk) -> Vec<u8> {
    let mut buf = vec![0u8; disk.capacity_bytes() as usize];
    disk.read_at(&mut buf, 0).unwrap();
    buf
}

fn err_text(result: Result<Disk, VmdkError>) -> String {
    result.expect_err("expected an error").to_string()
}

fn grains_a() -> Vec<(u64, Content)> {
    vec![
        (0, data(1)),
        (2, data(2)),
        (3, data(3)),
        (5, Content::Zero),
        (12, Content::Data(pattern(4, 4 * S))),
    ]
}

#[test]
fn monolithic_sparse_reads_like_the_model() {
    let grains = grains_a();
    let disk = open1("disk.vmdk", mono(0xabcdef01, None, "disk.vmdk", &grains)).unwrap();
    assert_eq!(disk.capacity_bytes(), CAP * 512);
    let expected = model(CAP, GRAIN, &grains);
    assert_eq!(read_all(&disk), expected);
    // Unaligned small reads across grain and table boundaries.
    for (off, len) in [(1, 1), (4095, 2), (4096 * 3 - 7, 9000), (CAP as usize * S - 3, 3), (0, 0)] {
        let mut buf = vec![0xeeu8; len];
        disk.read_at(&mut buf, off as u64).unwrap();
        assert_eq!(buf, expected[off..off + len], "read at {off} +{len}");
    }
    let chain = disk.chain();
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].create_type, CreateType::MonolithicSparse);
    assert_eq!(chain[0].cid, Some(0xabcdef01));
    assert!(chain[0].embedded_descriptor);
}

#[test]
fn allocated_extents_merge_and_flag_zero_grains() {
    let disk = open1("disk.vmdk", mono(1, None, "disk.vmdk", &grains_a())).unwrap();
    let g = GRAIN * 512;
    assert_eq!(
        disk.allocated_extents().unwrap(),
        vec![
            AllocatedRange { offset: 0, len: g, zero: false },
            AllocatedRange { offset: 2 * g, len: 2 * g, zero: false },
            AllocatedRange { offset: 5 * g, len: g, zero: true },
            // The last grain is partial: 100 sectors = 12 grains + 4 sectors.
            AllocatedRange { offset: 12 * g, len: 4 * 512, zero: false },
        ]
    );
}

#[test]
fn renamed_monolithic_sparse_still_opens() {
    // The embedded descriptor names the file as it was created; the extent is the file itself.
    let disk = open1("renamed.vmdk", mono(1, None, "original.vmdk", &grains_a())).unwrap();
    assert_eq!(read_all(&disk), model(CAP, GRAIN, &grains_a()));
}

#[test]
fn bare_sparse_extent_without_descriptor() {
    let grains = grains_a();
    let disk = open1("x-s001.vmdk", build(&Spec::new(CAP, GRAIN, GTES), &grains)).unwrap();
    assert_eq!(read_all(&disk), model(CAP, GRAIN, &grains));
    assert_eq!(disk.chain()[0].cid, None);
    assert!(!disk.chain()[0].embedded_descriptor);
}

#[test]
fn stream_optimized_with_footer() {
    let grains =
        vec![(0, data(9)), (1, data(8)), (7, data(7)), (12, Content::Data(pattern(6, 4 * S)))];
    let bytes = stream("s.vmdk", &grains);
    let disk = open1("s.vmdk", bytes).unwrap();
    assert_eq!(disk.chain()[0].create_type, CreateType::StreamOptimized);
    let expected = model(CAP, GRAIN, &grains);
    assert_eq!(read_all(&disk), expected);
    // Partial reads inside one compressed grain, served from the inflated-grain cache.
    for off in [7 * 4096 + 5, 7 * 4096 + 100, 7 * 4096 + 4000] {
        let mut buf = [0u8; 50];
        disk.read_at(&mut buf, off as u64).unwrap();
        assert_eq!(buf[..], expected[off..off + 50]);
    }
    let g = GRAIN * 512;
    assert_eq!(
        disk.allocated_extents().unwrap(),
        vec![
            AllocatedRange { offset: 0, len: 2 * g, zero: false },
            AllocatedRange { offset: 7 * g, len: g, zero: false },
            AllocatedRange { offset: 12 * g, len: 2048, zero: false },
        ]
    );
}

#[test]
fn stream_optimized_grain_checks() {
    // Replace grain 0's compressed data by a stream that inflates to more than a grain.
    let grains = vec![(0, data(1))];
    let base = stream("s.vmdk", &grains);
    let first_grain = 2 * S + S; // header, descriptor (2 sectors): grain marker at sector 3
    let lba = u64::from_le_bytes(base[first_grain..first_grain + 8].try_into().unwrap());
    assert_eq!(lba, 0);
    let size =
        u32::from_le_bytes(base[first_grain + 8..first_grain + 12].try_into().unwrap()) as usize;

    let mut big = base.clone();
    let bomb = zlib(&vec![0u8; GRAIN as usize * S + 1]);
    assert!(bomb.len() <= size + 100);
    big[first_grain + 8..first_grain + 12].copy_from_slice(&(bomb.len() as u32).to_le_bytes());
    big[first_grain + 12..first_grain + 12 + bomb.len()].copy_from_slice(&bomb);
    let disk = open1("s.vmdk", big).unwrap();
    let err = disk.read_at(&mut [0u8; 512], 0).unwrap_err().to_string();
    assert!(err.contains("inflates to more than the grain size (4096 bytes)"), "{err}");

    let mut short = base.clone();
    let small = zlib(&[7u8; 100]);
    short[first_grain + 8..first_grain + 12].copy_from_slice(&(small.len() as u32).to_le_bytes());
    short[first_grain + 12..first_grain + 12 + small.len()].copy_from_slice(&small);
    let err = open1("s.vmdk", short).unwrap().read_at(&mut [0u8; 512], 0).unwrap_err().to_string();
    assert!(err.contains("inflates to 100 bytes, expected 4096"), "{err}");

    let mut truncated = base.clone();
    truncated[first_grain + 8..first_grain + 12]
        .copy_from_slice(&((size / 2) as u32).to_le_bytes());
    let err =
        open1("s.vmdk", truncated).unwrap().read_at(&mut [0u8; 512], 0).unwrap_err().to_string();
    assert!(err.contains("truncated") || err.contains("invalid zlib"), "{err}");

    let mut wrong_lba = base.clone();
    wrong_lba[first_grain] = 8;
    let err =
        open1("s.vmdk", wrong_lba).unwrap().read_at(&mut [0u8; 512], 0).unwrap_err().to_string();
    assert!(err.contains("holds the grain for LBA 8, not 0"), "{err}");

    let mut huge = base.clone();
    huge[first_grain + 8..first_grain + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = open1("s.vmdk", huge).unwrap().read_at(&mut [0u8; 512], 0).unwrap_err().to_string();
    assert!(err.contains("claims 4294967295 bytes"), "{err}");

    let mut no_footer = base.clone();
    let n = no_footer.len();
    no_footer[n - 3 * S + 12] = 9; // footer marker type
    let err = err_text(open1("s.vmdk", no_footer));
    assert!(err.contains("no footer marker"), "{err}");
}

fn chain_opener() -> (MemOpener, Vec<u8>, Vec<(u64, Content)>) {
    let base_grains = vec![(0, data(1)), (1, data(2)), (4, data(3)), (9, data(4)), (12, data(5))];
    let mid_grains = vec![(1, data(20)), (2, data(21)), (9, Content::Zero)];
    let top_grains = vec![(2, data(30)), (4, Content::Zero), (10, data(31))];
    let mut opener = MemOpener::new();
    opener.insert("base.vmdk", mono(0x11, None, "base.vmdk", &base_grains));
    opener.insert("mid.vmdk", mono(0x22, Some((0x11, "base.vmdk")), "mid.vmdk", &mid_grains));
    opener.insert("top.vmdk", mono(0x33, Some((0x22, "mid.vmdk")), "top.vmdk", &top_grains));
    let all: Vec<_> = base_grains.into_iter().chain(mid_grains).chain(top_grains.clone()).collect();
    (opener, model(CAP, GRAIN, &all), top_grains)
}

#[test]
fn three_link_chain() {
    let (opener, expected, _) = chain_opener();
    let disk = Disk::open(&opener, "top.vmdk").unwrap();
    assert_eq!(read_all(&disk), expected);
    let cids: Vec<_> = disk.chain().iter().map(|l| (l.file.clone(), l.cid, l.parent_cid)).collect();
    assert_eq!(
        cids,
        vec![
            ("top.vmdk".to_owned(), Some(0x33), Some(0x22)),
            ("mid.vmdk".to_owned(), Some(0x22), Some(0x11)),
            ("base.vmdk".to_owned(), Some(0x11), None),
        ]
    );
    let g = GRAIN * 512;
    assert_eq!(
        disk.allocated_extents().unwrap(),
        vec![
            AllocatedRange { offset: 2 * g, len: g, zero: false },
            AllocatedRange { offset: 4 * g, len: g, zero: true },
            AllocatedRange { offset: 10 * g, len: g, zero: false },
        ]
    );
    // The middle link opened alone.
    let mid = Disk::open(&opener, "mid.vmdk").unwrap();
    assert_eq!(mid.chain().len(), 2);
}

#[test]
fn parent_cid_mismatch_names_both() {
    let (mut opener, _, _) = chain_opener();
    opener.insert("mid.vmdk", mono(0x22, Some((0xdeadbeef, "base.vmdk")), "mid.vmdk", &[]));
    let err = Disk::open(&opener, "top.vmdk").unwrap_err().to_string();
    assert_eq!(
        err,
        "vmdk: mid.vmdk has parentCID=deadbeef but its parent base.vmdk has CID=00000011"
    );
}

#[test]
fn chain_loops_and_depth() {
    let mut opener = MemOpener::new();
    opener.insert("a.vmdk", mono(0xa, Some((0xb, "b.vmdk")), "a.vmdk", &[]));
    opener.insert("b.vmdk", mono(0xb, Some((0xa, "./a.vmdk")), "b.vmdk", &[]));
    opener.insert("./a.vmdk", mono(0xa, Some((0xb, "b.vmdk")), "a.vmdk", &[]));
    let err = Disk::open(&opener, "a.vmdk").unwrap_err().to_string();
    assert_eq!(err, "vmdk: b.vmdk: snapshot chain loops: ./a.vmdk is already in the chain");

    opener.insert("self.vmdk", mono(0x5, Some((0x5, "self.vmdk")), "self.vmdk", &[]));
    assert!(matches!(Disk::open(&opener, "self.vmdk"), Err(VmdkError::ChainLoop { .. })));

    // 33 links: l0 (base) .. l32 (top).
    let mut opener = MemOpener::new();
    for i in 0..=CHAIN_DEPTH_MAX as u32 {
        let name = format!("l{i}.vmdk");
        let parent_name = format!("l{}.vmdk", i.wrapping_sub(1));
        let parent = (i > 0).then(|| (i - 1 + 0x100, parent_name.as_str()));
        opener.insert(name.clone(), mono(i + 0x100, parent, &name, &[]));
    }
    let err = Disk::open(&opener, &format!("l{CHAIN_DEPTH_MAX}.vmdk")).unwrap_err().to_string();
    assert_eq!(err, "vmdk: l1.vmdk: snapshot chain is longer than the limit of 32 links");
    let ok = Disk::open(&opener, &format!("l{}.vmdk", CHAIN_DEPTH_MAX - 1)).unwrap();
    assert_eq!(ok.chain().len(), CHAIN_DEPTH_MAX);
}

#[test]
fn parent_resolution_relative_to_child_and_windows_hint_fallback() {
    let mut opener = MemOpener::new();
    let base_text = descriptor(0x77, None, "monolithicFlat", "RW 100 FLAT \"base-flat.vmdk\" 0");
    opener.insert("snaps/../base/base.vmdk", base_text.into_bytes());
    opener.insert("snaps/../base/base-flat.vmdk", pattern(3, CAP as usize * S));
    opener.insert(
        "snaps/child.vmdk",
        mono(0x78, Some((0x77, "../base/base.vmdk")), "child.vmdk", &[(1, data(5))]),
    );
    let disk = Disk::open(&opener, "snaps/child.vmdk").unwrap();
    let mut expected = pattern(3, CAP as usize * S);
    expected[GRAIN as usize * S..2 * GRAIN as usize * S]
        .copy_from_slice(&pattern(5, GRAIN as usize * S));
    assert_eq!(read_all(&disk), expected);
    assert_eq!(disk.chain()[1].extent_files, vec!["snaps/../base/base-flat.vmdk".to_owned()]);

    // A Windows absolute hint: not found as such, found by its last component next to the child.
    let mut opener = MemOpener::new();
    opener.insert("vm/base.vmdk", mono(0x1, None, "base.vmdk", &[(0, data(1))]));
    opener.insert(
        "vm/child.vmdk",
        mono(0x2, Some((0x1, "C:\\VMs\\vm\\base.vmdk")), "child.vmdk", &[]),
    );
    let disk = Disk::open(&opener, "vm/child.vmdk").unwrap();
    assert_eq!(disk.chain()[1].file, "vm/base.vmdk");

    // Missing parent: the error names the resolved file.
    let mut opener = MemOpener::new();
    opener.insert("child.vmdk", mono(0x2, Some((0x1, "gone.vmdk")), "child.vmdk", &[]));
    let err = Disk::open(&opener, "child.vmdk").unwrap_err().to_string();
    assert_eq!(err, "vmdk: gone.vmdk: cannot open the parent of child.vmdk: no such file");
}

#[test]
fn child_larger_than_parent_reads_zeros_past_parent() {
    let mut opener = MemOpener::new();
    let mut small = Spec::new(16, GRAIN, GTES);
    small.descriptor = Some(descriptor(1, None, "monolithicSparse", "RW 16 SPARSE \"p.vmdk\""));
    opener.insert("p.vmdk", build(&small, &[(0, data(1)), (1, data(2))]));
    opener.insert("c.vmdk", mono(2, Some((1, "p.vmdk")), "c.vmdk", &[(0, data(3))]));
    let disk = Disk::open(&opener, "c.vmdk").unwrap();
    let mut expected = model(CAP, GRAIN, &[(0, data(3)), (1, data(2))]);
    expected.truncate(CAP as usize * S);
    assert_eq!(read_all(&disk), expected);
}

#[test]
fn flat_zero_and_two_sparse_extents_in_a_text_descriptor() {
    let mut opener = MemOpener::new();
    let extents = "RW 16 FLAT \"d-f001.vmdk\" 4\nRDONLY 8 ZERO\nRW 100 SPARSE \"d-s001.vmdk\"\nRW 100 SPARSE \"d-s002.vmdk\"";
    opener.insert("d.vmdk", descriptor(9, None, "twoGbMaxExtentSparse", extents).into_bytes());
    let flat = pattern(7, 20 * S);
    opener.insert("d-f001.vmdk", flat.clone());
    let g1 = vec![(0, data(1)), (12, data(2))];
    let g2 = vec![(3, data(3)), (4, Content::Zero)];
    opener.insert("d-s001.vmdk", build(&Spec::new(CAP, GRAIN, GTES), &g1));
    opener.insert("d-s002.vmdk", build(&Spec::new(CAP, GRAIN, GTES), &g2));
    let disk = Disk::open(&opener, "d.vmdk").unwrap();
    assert_eq!(disk.capacity_bytes(), (16 + 8 + 200) * 512);
    let mut expected = flat[4 * S..20 * S].to_vec();
    expected.extend_from_slice(&[0u8; 8 * S]);
    expected.extend_from_slice(&model(CAP, GRAIN, &g1));
    expected.extend_from_slice(&model(CAP, GRAIN, &g2));
    assert_eq!(read_all(&disk), expected);
    let mut buf = vec![0u8; 40 * S];
    disk.read_at(&mut buf, 10 * 512).unwrap();
    assert_eq!(buf, expected[10 * S..50 * S]);
    let alloc = disk.allocated_extents().unwrap();
    assert_eq!(alloc[0], AllocatedRange { offset: 0, len: 16 * 512, zero: false });
    assert_eq!(alloc[1], AllocatedRange { offset: 16 * 512, len: 8 * 512, zero: true });
    assert_eq!(alloc[2], AllocatedRange { offset: 24 * 512, len: 4096, zero: false });
    assert_eq!(alloc.len(), 6);
    assert_eq!(disk.chain()[0].extent_files, vec!["d-f001.vmdk", "d-s001.vmdk", "d-s002.vmdk"]);

    // qemu rewrites the CID by writing back its whole descriptor buffer: a new CID two digits
    // shorter leaves the old text's last bytes after the NUL (seen once in CI).
    let text = descriptor(0x1234_5678, None, "twoGbMaxExtentSparse", extents);
    let short = text.replace("CID=12345678", "CID=123456");
    assert_ne!(short, text);
    let mut rewritten = short.into_bytes();
    rewritten.push(0);
    rewritten.extend_from_slice(&text.as_bytes()[rewritten.len()..]);
    rewritten.resize(1024, 0);
    opener.insert("d.vmdk", rewritten);
    assert_eq!(read_all(&Disk::open(&opener, "d.vmdk").unwrap()), expected);

    // A flat file shorter than its extent line.
    opener.insert("d-f001.vmdk", vec![0u8; 19 * S]);
    let err = Disk::open(&opener, "d.vmdk").unwrap_err().to_string();
    assert_eq!(
        err,
        "vmdk: d-f001.vmdk: flat extent is truncated: need 10240 bytes, the file has 9728"
    );
}

#[test]
fn reads_outside_the_disk_are_refused() {
    let disk = open1("disk.vmdk", mono(1, None, "disk.vmdk", &[])).unwrap();
    let err = disk.read_at(&mut [0u8; 2], CAP * 512 - 1).unwrap_err().to_string();
    assert_eq!(err, "vmdk: read of 2 bytes at offset 51199 is outside the disk (51200 bytes)");
    assert!(disk.read_at(&mut [0u8; 1], u64::MAX).is_err());
}

#[test]
fn unsupported_create_types_and_extent_types() {
    for create_type in
        ["seSparse", "vmfsSparse", "vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap", "custom"]
    {
        let text = descriptor(1, None, create_type, "RW 100 SPARSE \"x.vmdk\"");
        let err = err_text(open1("disk.vmdk", text.into_bytes()));
        assert_eq!(
            err,
            format!(
                "vmdk: disk.vmdk: create type {create_type:?} is not supported (supported: monolithicSparse, \
                 twoGbMaxExtentSparse, monolithicFlat, twoGbMaxExtentFlat, streamOptimized, vmfs)"
            )
        );
    }
    let err =
        err_text(open1("disk.vmdk", descriptor(1, None, "fancyNewType", "RW 1 ZERO").into_bytes()));
    assert!(
        err.starts_with("vmdk: disk.vmdk: create type \"fancyNewType\" is unknown (supported: "),
        "{err}"
    );
    let text = descriptor(1, None, "vmfs", "RW 100 SESPARSE \"x.vmdk\"");
    let err = err_text(open1("disk.vmdk", text.into_bytes()));
    assert_eq!(
        err,
        "vmdk: disk.vmdk: descriptor line 8: extent type \"SESPARSE\" is not supported (supported: SPARSE, FLAT, VMFS, ZERO)"
    );
}

#[test]
fn encrypted_disks_are_refused() {
    let mut text = descriptor(1, None, "monolithicSparse", "RW 100 SPARSE \"x.vmdk\"");
    text += "encryption.keySafe = \"vmware:key/list/(pair/(phrase/...))\"\n";
    let err = err_text(open1("disk.vmdk", text.into_bytes()));
    assert_eq!(
        err,
        "vmdk: disk.vmdk: disk is encrypted (descriptor key \"encryption.keySafe\"); encrypted disks are not supported"
    );
    let mut text = descriptor(1, None, "monolithicSparse", "RW 100 SPARSE \"x.vmdk\"");
    text += "ddb.encryption = \"on\"\n";
    assert!(matches!(open1("disk.vmdk", text.into_bytes()), Err(VmdkError::Encrypted { .. })));
    // An unknown header flag (what an encrypted or newer sparse extent would carry).
    let mut bytes = mono(1, None, "disk.vmdk", &[]);
    bytes[10] |= 0x10; // flag bit 20
    let err = err_text(open1("disk.vmdk", bytes));
    assert_eq!(
        err,
        "vmdk: disk.vmdk: sparse extent flags 0x00100005 include unsupported bits 0x00100000 (encrypted or newer format?)"
    );
}

#[test]
fn hostile_headers() {
    let good = mono(1, None, "disk.vmdk", &grains_a());
    let check = |bytes: Vec<u8>, expected: &str| {
        let err = err_text(open1("disk.vmdk", bytes));
        assert!(err.contains(expected), "{err:?} does not contain {expected:?}");
    };
    check(
        good[..300].to_vec(),
        "sparse extent header is truncated: need 512 bytes, the file has 300",
    );
    check(b"KDM".to_vec(), "descriptor line 1: neither a key = value line");
    let mut bad = good.clone();
    bad[0] = b'X';
    check(bad, "neither a sparse extent (no \"KDMV\" magic) nor a text descriptor (binary byte at offset 8)");
    let mut cowd = good.clone();
    cowd[..4].copy_from_slice(b"COWD");
    check(cowd, "\"COWD\" sparse extent (vmfsSparse / ESX 2 redo log) is not supported");
    let mut v4 = good.clone();
    v4[4] = 4;
    check(v4, "sparse extent version 4 is not supported (supported: 1, 2, 3)");
    let mut comp = good.clone();
    comp[77] = 2;
    check(comp, "compression algorithm 2 is not supported");
    let mut cap = good.clone();
    cap[12..20].copy_from_slice(&((CAPACITY_MAX_BYTES / 512) + 1).to_le_bytes());
    check(cap, "capacity of 70368744178176 bytes is more than the limit of 70368744177664");
    let mut gd = good.clone();
    gd[12..20].copy_from_slice(&(CAPACITY_MAX_BYTES / 512).to_le_bytes()); // 2^37 / 32 entries
    check(gd, "grain directory of 4294967296 entries is more than the limit of 4194304");
    let mut grain = good.clone();
    grain[20] = 12;
    check(grain, "grain size of 12 sectors is not a power of two");
    let mut newline = good.clone();
    newline[75] = b'\n';
    check(newline, "newline detection bytes are altered");
    let mut desc = good.clone();
    desc[36..44].copy_from_slice(&1000u64.to_le_bytes());
    check(desc, "embedded descriptor of 1000 sectors is more than the limit of 65536 bytes");
    let mut desc_eof = good.clone();
    desc_eof[28..36].copy_from_slice(&100_000u64.to_le_bytes());
    check(desc_eof, "embedded descriptor is truncated");
    let mut cap_small = good.clone();
    cap_small[12..20].copy_from_slice(&50u64.to_le_bytes());
    check(cap_small, "the descriptor gives the extent 100 sectors, its header only 50");
}

/// Offsets in the hand-built `mono` image: header, descriptor, directory, then tables.
fn layout(bytes: &[u8]) -> (usize, usize) {
    let h = SparseHeader::parse("x", bytes).unwrap();
    let gd = h.gd_offset as usize * S;
    let first_gt = u32::from_le_bytes(bytes[gd..gd + 4].try_into().unwrap()) as usize * S;
    (gd, first_gt)
}

#[test]
fn hostile_grain_directories_and_tables() {
    let good = mono(1, None, "disk.vmdk", &grains_a());
    let (gd, first_gt) = layout(&good);
    let check = |bytes: Vec<u8>, expected: &str| {
        let result = open1("disk.vmdk", bytes).and_then(|disk| {
            let mut buf = vec![0u8; disk.capacity_bytes() as usize];
            disk.read_at(&mut buf, 0).map(|_| disk)
        });
        let err = err_text(result);
        assert!(err.contains(expected), "{err:?} does not contain {expected:?}");
    };
    // Two directory entries pointing at the same table.
    let mut dup = good.clone();
    dup.copy_within(gd..gd + 4, gd + 4);
    check(dup, "grain directory entries 0 and 1 point at overlapping grain tables");
    // An entry pointing at the directory itself.
    let mut at_gd = good.clone();
    at_gd[gd..gd + 4].copy_from_slice(&((gd / S) as u32).to_le_bytes());
    check(at_gd, "grain directory entry 0 points at a grain table at sector 3 that overlaps the grain directory");
    // An entry pointing into the embedded descriptor.
    let mut at_desc = good.clone();
    at_desc[gd..gd + 4].copy_from_slice(&1u32.to_le_bytes());
    check(at_desc, "overlaps the embedded descriptor");
    // An entry pointing past the end of the file.
    let mut past = good.clone();
    past[gd + 8..gd + 12].copy_from_slice(&1_000_000u32.to_le_bytes());
    check(
        past,
        "grain directory entry 2 points at a grain table at sector 1000000 that lies past the end",
    );
    // The directory itself past the end of the file.
    let mut gd_past = good.clone();
    gd_past[56..64].copy_from_slice(&1_000_000u64.to_le_bytes());
    check(gd_past, "grain directory (4 entries at sector 1000000) lies outside the file");
    // A grain table entry pointing past the end of the file.
    let mut gte = good.clone();
    gte[first_gt + 4..first_gt + 8].copy_from_slice(&100_000u32.to_le_bytes());
    check(gte, "grain 1 (grain table at sector 4, entry 1) points at sector 100000, past the end of the file");
}

#[test]
fn descriptor_parsing_details() {
    let text = "# Disk DescriptorFile\r\nversion=1\r\nencoding=\"UTF-8\"\r\nCID=fffffffe\r\nparentCID=ffffffff\r\n\
                isNativeSnapshot=\"no\"\r\ncreateType=\"monolithicflat\"\r\n\r\n# Extent description\r\n\
                RW 2048 FLAT \"my disk-flat.vmdk\" 0\r\n  NOACCESS   10   ZERO  \r\n\r\nddb.uuid = \"60 00 C2 9a\"\r\n";
    let d = Descriptor::parse("d.vmdk", text.as_bytes()).unwrap();
    assert_eq!(d.create_type, CreateType::MonolithicFlat);
    assert_eq!(d.cid, Some(0xfffffffe));
    assert_eq!(d.parent_cid, None);
    assert_eq!(d.extents.len(), 2);
    assert_eq!(d.extents[0].file.as_deref(), Some("my disk-flat.vmdk"));
    assert_eq!(d.capacity_sectors(), 2058);

    let err = |text: &str| Descriptor::parse("d.vmdk", text.as_bytes()).unwrap_err().to_string();
    assert_eq!(err("createType=\"vmfs\"\n"), "vmdk: d.vmdk: descriptor lists no extents");
    assert_eq!(err("RW 1 ZERO\n"), "vmdk: d.vmdk: descriptor has no \"createType\" key");
    assert_eq!(
        err("createType=vmfs\ncreateType=vmfs\n"),
        "vmdk: d.vmdk: descriptor line 2: key \"createType\" appears twice"
    );
    assert_eq!(
        err("createType=vmfs\nRW x FLAT \"f\"\n"),
        "vmdk: d.vmdk: descriptor line 2: extent size \"x\" is not a number of sectors"
    );
    assert_eq!(
        err("createType=vmfs\nRW 1 FLAT f\n"),
        "vmdk: d.vmdk: descriptor line 2: extent file name must be in double quotes"
    );
    assert_eq!(
        err("createType=vmfs\nversion=7\nRW 1 ZERO\n"),
        "vmdk: d.vmdk: descriptor version \"7\" is not supported (supported: 1, 2, 3)"
    );
    assert_eq!(
        err("createType=vmfs\nCID=xyz\nRW 1 ZERO\n"),
        "vmdk: d.vmdk: descriptor line 2: CID \"xyz\" is not 1 to 8 hex digits"
    );
    assert_eq!(
        err("createType=vmfs\nparentFileNameHint=\"p.vmdk\"\nRW 1 ZERO\n"),
        "vmdk: d.vmdk: descriptor names parent \"p.vmdk\" but has no parentCID (or ffffffff)"
    );
    assert_eq!(
        err("createType=vmfs\nRW 1 SPARSE \"s\" 5\n"),
        "vmdk: d.vmdk: descriptor line 2: only FLAT and VMFS extents take an offset"
    );
    let huge = format!("createType=vmfs\nRW {} ZERO\nRW 1 ZERO\n", CAPACITY_MAX_BYTES / 512);
    assert_eq!(
        err(&huge),
        "vmdk: d.vmdk: capacity of 70368744178176 bytes is more than the limit of 70368744177664"
    );
    let err_name = Descriptor::parse("evil\nname", b"RW 1 ZERO\n").unwrap_err().to_string();
    assert_eq!(err_name, "vmdk: evil\\nname: descriptor has no \"createType\" key");
}

#[test]
fn overlong_descriptor_and_non_vmdk_files() {
    let big = vec![b'#'; DESCRIPTOR_MAX as usize + 1];
    let err = err_text(open1("disk.vmdk", big));
    assert_eq!(
        err,
        "vmdk: disk.vmdk: neither a sparse extent (no \"KDMV\" magic) nor a text descriptor \
         (65537 bytes, more than the descriptor limit of 65536)"
    );
    let err = err_text(open1("disk.vmdk", Vec::new()));
    assert_eq!(err, "vmdk: disk.vmdk: descriptor has no \"createType\" key");
    let err = err_text(open1("disk.vmdk", vec![0xff; 100]));
    assert_eq!(err, "vmdk: disk.vmdk: descriptor is not text (first bad byte at offset 0)");
    let err = err_text(Disk::open(&MemOpener::new(), "missing.vmdk"));
    assert_eq!(err, "vmdk: missing.vmdk: cannot open the disk: no such file");
}

#[test]
fn hand_built_header_parses() {
    let h = header(2, 0x30005, 1 << 21, 128, 1, 20, 512, 21, 0x1a, 128, 1);
    let parsed = SparseHeader::parse("x", &h).unwrap();
    assert_eq!(parsed.grain_size, 128);
    assert!(parsed.compressed());
    assert!(parsed.zeroed_gte());
    assert_eq!(parsed.gd_entries(), 32);
    let mut no_markers = h.clone();
    no_markers[10] = 1; // compressed without markers
    let err = SparseHeader::parse("x", &no_markers).unwrap_err().to_string();
    assert_eq!(err, "vmdk: x: invalid sparse extent header: compressed grains without markers are not supported");
}

#[test]
fn catalogue_lists_supported_and_unsupported() {
    let text = support_catalogue();
    for t in crate::SUPPORTED_CREATE_TYPES {
        assert!(text.contains(t));
    }
    for t in ["seSparse", "vmfsSparse", "encrypted", "vmfsRawDeviceMap"] {
        assert!(text.contains(t), "{t}");
    }
}

#[test]
fn disk_is_send_and_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Disk>();
    let disk = open1("disk.vmdk", mono(1, None, "disk.vmdk", &[])).unwrap();
    assert!(format!("{disk:?}").contains("MonolithicSparse"));
}
