//! Property tests on generated sources:
//! - a small disk (up to a few hundred KiB, any length, random data, zero and patterned
//!   runs) written as monolithicSparse or streamOptimized and read back by the test reader
//!   gives the disk's bytes, padded to a sector, with exactly its non-zero grains allocated;
//! - declaring the data ranges exactly changes nothing in the output;
//! - any capacity up to 1 TiB with a few data points writes without panicking, and the
//!   report adds up.
//! - the OVF environment reader never panics: on any text, on markup-heavy text, or on a
//!   valid environment with bytes changed; a valid environment cut anywhere before the end
//!   of its root element is an error, and cut after it reads whole;
//! - an environment written with `xml_escape`d keys and values (any prefix, quote and
//!   element form) reads back to the same properties.

use std::collections::BTreeMap;
use std::io::Cursor;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::ovfenv::properties;
use crate::testreader::parse;
use crate::tests::{Patched, Sink};
use crate::{
    write_monolithic_sparse, write_stream_optimized, xml_escape, VmdkOptions, GRAIN_BYTES,
};

/// A patch: where, and its bytes (random, or one repeated byte that may be zero).
fn patch(len: u64) -> impl Strategy<Value = (u64, Vec<u8>)> {
    (0..len, 1usize..20_000, any::<bool>(), any::<u8>(), any::<u64>()).prop_map(
        move |(at, n, random, byte, seed)| {
            let n = n.min((len - at) as usize);
            let bytes = if random {
                let mut x = seed | 1;
                (0..n)
                    .map(|_| {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        (x >> 56) as u8
                    })
                    .collect()
            } else {
                vec![byte; n]
            };
            (at, bytes)
        },
    )
}

fn disk() -> impl Strategy<Value = Patched> {
    (1u64..400_000)
        .prop_flat_map(|len| (Just(len), vec(patch(len), 0..8)))
        .prop_map(|(len, patches)| Patched { len, patches })
}

fn nonzero_grains(flat: &[u8]) -> u64 {
    flat.chunks(GRAIN_BYTES as usize).filter(|g| g.iter().any(|&b| b != 0)).count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn written_images_read_back(src in disk(), level in 0u32..=9) {
        let mut flat = src.flat();
        let grains = nonzero_grains(&flat);
        flat.resize(flat.len().div_ceil(512) * 512, 0);

        let mut out = Cursor::new(Vec::new());
        let r = write_monolithic_sparse(&src, &mut out, &VmdkOptions::default()).unwrap();
        let file = out.into_inner();
        let p = parse(&file);
        prop_assert_eq!(&p.disk, &flat);
        prop_assert_eq!(p.allocated, grains);
        prop_assert_eq!(r.grains_written, grains);
        prop_assert_eq!(r.file_bytes, file.len() as u64);
        prop_assert_eq!(r.capacity_bytes, flat.len() as u64);

        let mut out = Vec::new();
        let r = write_stream_optimized(&src, &mut out, level, &VmdkOptions::default()).unwrap();
        let p = parse(&out);
        prop_assert_eq!(&p.disk, &flat);
        prop_assert_eq!(p.allocated, grains);
        prop_assert_eq!(r.grains_written, grains);
        prop_assert_eq!(r.file_bytes, out.len() as u64);
    }

    #[test]
    fn declared_ranges_change_nothing(src in disk()) {
        let flat = src.flat();
        let mut a = Cursor::new(Vec::new());
        let mut b = Cursor::new(Vec::new());
        write_monolithic_sparse(&src, &mut a, &VmdkOptions::default()).unwrap();
        write_monolithic_sparse(&flat, &mut b, &VmdkOptions::default()).unwrap();
        prop_assert_eq!(a.into_inner(), b.into_inner());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_stream_optimized(&src, &mut a, 1, &VmdkOptions::default()).unwrap();
        write_stream_optimized(&flat, &mut b, 1, &VmdkOptions::default()).unwrap();
        prop_assert_eq!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_capacity_writes(
        shift in 0u32..=40,
        extra in any::<u64>(),
        points in vec((any::<u64>(), any::<u8>()), 0..4),
    ) {
        let len = ((1u64 << shift) + extra % (1u64 << shift)).max(1);
        let patches = points
            .into_iter()
            .map(|(at, b)| (at % len, vec![b | 1]))
            .collect::<Vec<_>>();
        let mut grains: Vec<u64> = patches.iter().map(|(at, _)| at / GRAIN_BYTES).collect();
        grains.sort_unstable();
        grains.dedup();
        let src = Patched { len, patches };

        let mut sink = Sink::default();
        let r = write_monolithic_sparse(&src, &mut sink, &VmdkOptions::default()).unwrap();
        prop_assert_eq!(r.grains_written, grains.len() as u64);
        prop_assert_eq!(r.file_bytes, sink.len);
        prop_assert_eq!(r.capacity_bytes, len.div_ceil(512) * 512);
        prop_assert_eq!(r.grains_total, len.div_ceil(GRAIN_BYTES));

        let mut out = Vec::new();
        let r = write_stream_optimized(&src, &mut out, 6, &VmdkOptions::default()).unwrap();
        prop_assert_eq!(r.grains_written, grains.len() as u64);
        prop_assert_eq!(r.file_bytes, out.len() as u64);
        if len <= 64 << 20 {
            prop_assert_eq!(parse(&out).allocated, grains.len() as u64);
        }
    }
}

/// How one property is written: its prefix, its quote, and whether it is an empty element.
type PropertyStyle = (usize, bool, bool);

/// Printable text with a good share of what XML escapes (`[ -~]` holds `& < > " '`), and
/// any Unicode text without control characters.
fn printable(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).unwrap(),
        proptest::string::string_regex(&format!("\\PC{{0,{max}}}")).unwrap(),
    ]
}

fn environment_properties() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(
        printable(40).prop_filter("a key is not empty", |k| !k.is_empty()),
        printable(80),
        0..24,
    )
}

/// An OVF environment holding `properties`, each written in the next of `styles`.
fn environment(properties: &BTreeMap<String, String>, styles: &[PropertyStyle]) -> String {
    let mut doc = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Environment \
         xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\" \
         xmlns:e=\"http://schemas.dmtf.org/ovf/environment/1\" oe:id=\"\">\n  \
         <PlatformSection>\n    <Kind>test</Kind>\n  </PlatformSection>\n  <PropertySection>\n",
    );
    for ((key, value), &(prefix, single, empty)) in properties.iter().zip(styles.iter().cycle()) {
        let prefix = ["oe:", "", "e:"][prefix % 3];
        let quote = if single { '\'' } else { '"' };
        let end = if empty { "/>".to_string() } else { format!("></{prefix}Property>") };
        doc += &format!(
            "    <{prefix}Property {prefix}key={quote}{}{quote} \
             {prefix}value={quote}{}{quote}{end}\n",
            xml_escape(key),
            xml_escape(value)
        );
    }
    doc + "  </PropertySection>\n</Environment>\n"
}

fn styles() -> impl Strategy<Value = Vec<PropertyStyle>> {
    vec((0usize..3, any::<bool>(), any::<bool>()), 1..6)
}

/// Text made of the pieces an environment is made of, to reach past the first check.
fn markup_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<"),
        Just(">"),
        Just("/"),
        Just("="),
        Just("'"),
        Just("\""),
        Just("&"),
        Just(";"),
        Just("&amp;"),
        Just("&#x41;"),
        Just("&#"),
        Just("<!--"),
        Just("-->"),
        Just("<?xml"),
        Just("?>"),
        Just("<![CDATA["),
        Just("Environment"),
        Just("PropertySection"),
        Just("Property"),
        Just("oe:key"),
        Just("oe:value"),
        Just(" "),
        Just("\n"),
        Just("a"),
        Just("é"),
    ];
    vec(piece, 0..200).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn environment_reader_never_panics_on_any_text(text in any::<String>(), soup in markup_soup()) {
        let _ = properties(&text);
        let _ = properties(&soup);
    }

    #[test]
    fn environment_reader_never_panics_on_a_damaged_environment(
        map in environment_properties(),
        styles in styles(),
        changes in vec((any::<Index>(), any::<u8>()), 1..8),
        cut in any::<Index>(),
    ) {
        let doc = environment(&map, &styles);
        let mut bytes = doc.clone().into_bytes();
        for (at, byte) in &changes {
            let at = at.index(bytes.len());
            bytes[at] = *byte;
        }
        let damaged = String::from_utf8_lossy(&bytes);
        if let Ok(read) = properties(&damaged) {
            prop_assert!(read.len() <= map.len() + changes.len());
        }
        let damaged = String::from_utf8_lossy(&bytes[..cut.index(bytes.len())]);
        let _ = properties(&damaged);

        // A cut document is refused, unless the cut only drops what follows the root.
        let mut cut = cut.index(doc.len());
        while !doc.is_char_boundary(cut) {
            cut -= 1;
        }
        let root_end = doc.rfind("</Environment>").unwrap() + "</Environment>".len();
        if cut < root_end {
            prop_assert!(properties(&doc[..cut]).is_err(), "{:?}", &doc[..cut]);
        } else {
            prop_assert_eq!(properties(&doc[..cut]), Ok(map));
        }
    }

    #[test]
    fn escaped_properties_read_back(map in environment_properties(), styles in styles()) {
        let doc = environment(&map, &styles);
        prop_assert_eq!(properties(&doc), Ok(map), "{}", doc);
    }
}
