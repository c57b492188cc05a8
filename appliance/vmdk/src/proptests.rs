//! Property tests: the parsers and the whole open/read path survive any bytes and any mutation
//! of valid images, and random chains read like a byte model.

use proptest::prelude::*;
use proptest::sample::Index;

use crate::mem::MemOpener;
use crate::testimage::{build, descriptor, model, pattern, Content, Spec, S};
use crate::{Descriptor, Disk, SparseHeader, GRAIN_SECTORS_MAX, GTES_PER_GT_MAX};

const CAP: u64 = 72; // 9 grains of 8 sectors
const GRAIN: u64 = 8;
const GTES: u32 = 4;

fn valid_sparse() -> Vec<u8> {
    let mut spec = Spec::new(CAP, GRAIN, GTES);
    spec.descriptor = Some(descriptor(0x42, None, "monolithicSparse", "RW 72 SPARSE \"d.vmdk\""));
    build(
        &spec,
        &[
            (0, Content::Data(pattern(1, 4096))),
            (3, Content::Zero),
            (8, Content::Data(pattern(2, 4096))),
        ],
    )
}

fn valid_stream() -> Vec<u8> {
    let mut spec = Spec::new(CAP, GRAIN, GTES);
    spec.stream = true;
    spec.all_tables = false;
    spec.descriptor = Some(descriptor(0x43, None, "streamOptimized", "RW 72 SPARSE \"d.vmdk\""));
    build(&spec, &[(1, Content::Data(pattern(3, 4096))), (6, Content::Data(pattern(4, 100)))])
}

const VALID_DESCRIPTOR: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=9abcdef0\n\
parentFileNameHint=\"base.vmdk\"\ncreateType=\"twoGbMaxExtentSparse\"\n\nRW 4192256 SPARSE \"d-s001.vmdk\"\n\
RW 8 FLAT \"d-f.vmdk\" 16\nRDONLY 8 ZERO\n\nddb.adapterType = \"lsilogic\"\n";

const SNIPPETS: &[&str] = &[
    "\n",
    "\"",
    "=",
    "#",
    " ",
    "RW ",
    "RDONLY ",
    "NOACCESS ",
    " SPARSE ",
    " FLAT ",
    " ZERO",
    " VMFS ",
    " SESPARSE ",
    "createType=\"seSparse\"\n",
    "createType=\"streamOptimized\"\n",
    "CID=ffffffff\n",
    "parentCID=\n",
    "parentFileNameHint=\"\"\n",
    "encryption.data = \"x\"\n",
    "version=2\n",
    "18446744073709551615",
    "0",
    "\r\n",
    "\0",
];

/// Opens and exercises a disk built from (possibly mutated) files; only panics matter.
fn exercise(opener: &MemOpener, name: &str) {
    let Ok(disk) = Disk::open(opener, name) else { return };
    let cap = disk.capacity_bytes();
    let mut buf = vec![0u8; 64 * 1024];
    for offset in [0, cap / 3, cap.saturating_sub(buf.len() as u64)] {
        let len = (buf.len() as u64).min(cap - offset.min(cap)) as usize;
        let _ = disk.read_at(&mut buf[..len], offset);
    }
    let _ = disk.read_at(&mut buf[..10], cap.saturating_sub(5));
    let _ = disk.allocated_extents();
    let _ = disk.chain();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn header_parser_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = SparseHeader::parse("x", &bytes);
        let mut magic = b"KDMV".to_vec();
        magic.extend_from_slice(&bytes);
        let _ = SparseHeader::parse("x", &magic);
    }

    #[test]
    fn mutated_headers_never_panic_and_accepted_ones_are_sane(
        edits in prop::collection::vec((0usize..96, any::<u8>()), 1..8),
    ) {
        let mut bytes = valid_sparse()[..512].to_vec();
        for (at, value) in edits {
            bytes[at] = value;
        }
        if let Ok(h) = SparseHeader::parse("x", &bytes) {
            prop_assert!((1..=3).contains(&h.version));
            prop_assert!(h.grain_size.is_power_of_two() && h.grain_size <= GRAIN_SECTORS_MAX);
            prop_assert!(h.gtes_per_gt >= 1 && h.gtes_per_gt <= GTES_PER_GT_MAX);
            prop_assert!(h.gd_entries() <= crate::GD_ENTRIES_MAX);
        }
    }

    #[test]
    fn descriptor_parser_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = Descriptor::parse("x", &bytes);
    }

    #[test]
    fn mutated_descriptors_never_panic(
        edits in prop::collection::vec((any::<Index>(), any::<Index>(), 0u8..3), 1..6),
    ) {
        let mut text = VALID_DESCRIPTOR.as_bytes().to_vec();
        for (at, snippet, op) in edits {
            let at = at.index(text.len() + 1);
            match op {
                0 => { text.splice(at..at, SNIPPETS[snippet.index(SNIPPETS.len())].bytes()); }
                1 => { if at < text.len() { text.remove(at); } }
                _ => { text.truncate(at); }
            }
        }
        if let Ok(d) = Descriptor::parse("x", &text) {
            prop_assert!(!d.extents.is_empty());
            prop_assert_eq!(d.parent_cid.is_some(), d.parent_file_name_hint.is_some());
        }
    }

    #[test]
    fn mutated_sparse_images_never_panic(
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..10),
        metadata_only in any::<bool>(),
    ) {
        let mut bytes = valid_sparse();
        // Bias the mutations toward the metadata (header, descriptor, directory, tables).
        let limit = if metadata_only { 4096.min(bytes.len()) } else { bytes.len() };
        for (at, value) in edits {
            let at = at.index(limit);
            bytes[at] = value;
        }
        let mut opener = MemOpener::new();
        opener.insert("d.vmdk", bytes);
        exercise(&opener, "d.vmdk");
    }

    #[test]
    fn mutated_stream_images_never_panic(
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..10),
        cut in any::<Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_stream();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let mut opener = MemOpener::new();
        opener.insert("d.vmdk", bytes);
        exercise(&opener, "d.vmdk");
    }

    #[test]
    fn mutated_chains_never_panic(edits in prop::collection::vec((any::<bool>(), any::<Index>(), any::<u8>()), 1..8)) {
        let mut spec = Spec::new(CAP, GRAIN, GTES);
        spec.descriptor = Some(descriptor(0x1, None, "monolithicSparse", "RW 72 SPARSE \"p.vmdk\""));
        let mut parent = build(&spec, &[(0, Content::Data(pattern(1, 4096)))]);
        spec.descriptor = Some(descriptor(0x2, Some((0x1, "p.vmdk")), "monolithicSparse", "RW 72 SPARSE \"c.vmdk\""));
        let mut child = build(&spec, &[(1, Content::Data(pattern(2, 4096)))]);
        for (which, at, value) in edits {
            let file = if which { &mut parent } else { &mut child };
            let at = at.index(4096.min(file.len()));
            file[at] = value;
        }
        let mut opener = MemOpener::new();
        opener.insert("p.vmdk", parent);
        opener.insert("c.vmdk", child);
        exercise(&opener, "c.vmdk");
    }

    /// Random writes into a random chain (sparse links, zero grains, a streamOptimized base)
    /// read exactly like a byte model, and the top link's allocation is its own grains.
    #[test]
    fn chains_read_like_the_model(
        links in prop::collection::vec(
            prop::collection::vec((0u64..9, prop::option::of(any::<u8>())), 0..6),
            1..4,
        ),
        stream_base in any::<bool>(),
        reads in prop::collection::vec((0u64..CAP * 512, 1usize..20_000), 1..6),
    ) {
        let mut opener = MemOpener::new();
        let mut all: Vec<(u64, Content)> = Vec::new();
        let mut top_grains = Vec::new();
        for (i, writes) in links.iter().enumerate() {
            let grains: Vec<(u64, Content)> = writes
                .iter()
                .map(|(g, seed)| (*g, match seed {
                    Some(seed) => Content::Data(pattern(*seed, GRAIN as usize * S)),
                    None => Content::Zero,
                }))
                .collect();
            let name = format!("l{i}.vmdk");
            let parent_name = format!("l{}.vmdk", i.wrapping_sub(1));
            let parent = (i > 0).then(|| (i as u32 - 1 + 0x10, parent_name.as_str()));
            let stream = i == 0 && stream_base;
            let mut spec = Spec::new(CAP, GRAIN, GTES);
            spec.stream = stream;
            spec.all_tables = !stream;
            let create_type = if stream { "streamOptimized" } else { "monolithicSparse" };
            spec.descriptor = Some(descriptor(i as u32 + 0x10, parent, create_type, &format!("RW {CAP} SPARSE \"{name}\"")));
            // A streamOptimized base holds no zero grains in this model (and writes each grain once).
            let mut grains = grains;
            if stream {
                grains.retain(|(_, c)| matches!(c, Content::Data(_)));
                let mut seen = std::collections::HashSet::new();
                grains.retain(|(g, _)| seen.insert(*g));
            }
            opener.insert(name, build(&spec, &grains));
            top_grains = grains.clone();
            all.extend(grains);
        }
        let disk = Disk::open(&opener, &format!("l{}.vmdk", links.len() - 1)).unwrap();
        let expected = model(CAP, GRAIN, &all);
        let mut whole = vec![0u8; expected.len()];
        disk.read_at(&mut whole, 0).unwrap();
        prop_assert!(whole == expected);
        for (offset, len) in reads {
            let len = len.min((CAP * 512 - offset) as usize);
            let mut buf = vec![0u8; len];
            disk.read_at(&mut buf, offset).unwrap();
            prop_assert!(buf[..] == expected[offset as usize..offset as usize + len]);
        }
        // Allocation of the top link: every grain it wrote, last write's kind wins.
        let mut kinds = std::collections::BTreeMap::new();
        for (g, c) in &top_grains {
            kinds.insert(*g, matches!(c, Content::Zero));
        }
        let mut got = std::collections::BTreeMap::new();
        for r in disk.allocated_extents().unwrap() {
            let mut off = r.offset;
            while off < r.offset + r.len {
                got.insert(off / (GRAIN * 512), r.zero);
                off += GRAIN * 512;
            }
        }
        prop_assert_eq!(got, kinds);
    }
}
