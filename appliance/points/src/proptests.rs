//! Property tests of the pure parts against simple models.

use proptest::prelude::*;

use crate::retention::{keep, Kind, Point, Policy};
use crate::{ExtentMap, Piece};

proptest! {
    /// Reading through the map equals a byte-by-byte model of "newest write wins".
    #[test]
    fn extent_map_matches_a_byte_model(
        writes in proptest::collection::vec((0u64..200, 0u64..60), 0..40),
        reads in proptest::collection::vec((0u64..260, 0u64..80), 1..10),
    ) {
        let mut map = ExtentMap::new();
        let mut model: Vec<Option<(usize, u64)>> = vec![None; 400];
        for (index, &(offset, len)) in writes.iter().enumerate() {
            map.insert(offset, len, index);
            for (k, byte) in (offset..offset + len).enumerate() {
                model[byte as usize] = Some((index, k as u64));
            }
        }
        for &(offset, len) in &reads {
            let pieces = map.read(offset, len);
            let mut at = offset;
            for piece in &pieces {
                match *piece {
                    Piece::Stored { offset: start, len, location, skip } => {
                        prop_assert_eq!(start, at);
                        prop_assert!(len > 0);
                        for k in 0..len {
                            prop_assert_eq!(model[(start + k) as usize], Some((location, skip + k)));
                        }
                        at += len;
                    }
                    Piece::Base { offset: start, len } => {
                        prop_assert_eq!(start, at);
                        prop_assert!(len > 0);
                        for k in 0..len {
                            prop_assert_eq!(model[(start + k) as usize], None);
                        }
                        at += len;
                    }
                }
            }
            prop_assert_eq!(at, offset + len);
        }
    }

    /// Thinning keeps the newest point, everything recent, at most one older point per bucket
    /// (besides app points), nothing past the window but the newest, and is stable.
    #[test]
    fn retention_rules_hold_and_thinning_is_stable(
        ages in proptest::collection::vec((0u64..400_000, 0u8..3), 1..60),
        keep_all in 0u64..100,
        bucket in 1u64..50,
        extra in 0u64..300,
        apps in 0usize..4,
    ) {
        let now = 1_000_000_000u64;
        let policy = Policy {
            keep_all_secs: keep_all,
            bucket_secs: bucket,
            window_secs: keep_all + extra + 1,
            app_consistent_count: apps,
        };
        prop_assert!(policy.validate().is_ok());
        let points: Vec<Point> = ages.iter().enumerate().map(|(id, &(age, kind))| Point {
            id: id as u64,
            time_unix_ms: now - age,
            kind: [Kind::Crash, Kind::App, Kind::Group][kind as usize],
        }).collect();
        let kept = keep(&points, &policy, now);
        let newest = points.iter().max_by_key(|p| (p.time_unix_ms, p.id)).unwrap();
        prop_assert!(kept.contains(&newest.id));
        for point in &points {
            let age = now - point.time_unix_ms;
            if age < keep_all * 1000 {
                prop_assert!(kept.contains(&point.id));
            }
            if age > policy.window_secs * 1000 && point.id != newest.id {
                prop_assert!(!kept.contains(&point.id));
            }
        }
        let mut per_bucket = std::collections::HashMap::new();
        for point in points.iter().filter(|p| kept.contains(&p.id)) {
            let age = now - point.time_unix_ms;
            if age >= keep_all * 1000 && point.kind != Kind::App && point.id != newest.id {
                *per_bucket.entry(point.time_unix_ms / (bucket * 1000)).or_insert(0) += 1;
            }
        }
        prop_assert!(per_bucket.values().all(|&count| count <= 1));
        let survivors: Vec<Point> = points.iter().copied().filter(|p| kept.contains(&p.id)).collect();
        prop_assert_eq!(keep(&survivors, &policy, now), kept);
    }
}
