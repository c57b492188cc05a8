//! Property tests on generated sources:
//! - a small disk (up to a few hundred KiB, any length, random data, zero and patterned
//!   runs) written as monolithicSparse or streamOptimized and read back by the test reader
//!   gives the disk's bytes, padded to a sector, with exactly its non-zero grains allocated;
//! - declaring the data ranges exactly changes nothing in the output;
//! - any capacity up to 1 TiB with a few data points writes without panicking, and the
//!   report adds up.

use std::io::Cursor;

use proptest::collection::vec;
use proptest::prelude::*;

use crate::testreader::parse;
use crate::tests::{Patched, Sink};
use crate::{write_monolithic_sparse, write_stream_optimized, VmdkOptions, GRAIN_BYTES};

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
