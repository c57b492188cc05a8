//! Which recovery points a retention policy keeps (design.md §5): every point of the recent
//! past, then one per bucket (the newest of each hour, say) up to the window, plus the newest
//! app-consistent points by their own count. The newest point is always kept, so a disk whose
//! replication stopped for longer than the window still has something to fail over to.
//!
//! Thinning is stable: applying the policy to the points it kept keeps all of them again, so
//! pruning repeatedly never loses more than one pass would.

use std::collections::BTreeMap;

/// Longest retention window (the commercial product's maximum).
pub const WINDOW_SECS_MAX: u64 = 15 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Crash,
    App,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub id: u64,
    pub time_unix_ms: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Points newer than this are all kept.
    pub keep_all_secs: u64,
    /// Older than `keep_all_secs`, one point per bucket of this length (aligned to the epoch).
    pub bucket_secs: u64,
    /// Points older than this are dropped (except the newest point).
    pub window_secs: u64,
    /// The newest app-consistent points within the window kept whatever the thinning.
    pub app_consistent_count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "retention window of {0} s is longer than the maximum of {WINDOW_SECS_MAX} s (15 days)"
    )]
    WindowTooLong(u64),
    #[error("retention window must be at least 1 s")]
    WindowZero,
    #[error("keep-all period of {keep_all} s is longer than the retention window of {window} s")]
    KeepAllBeyondWindow { keep_all: u64, window: u64 },
    #[error("thinning bucket must be at least 1 s")]
    BucketZero,
}

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.window_secs == 0 {
            return Err(PolicyError::WindowZero);
        }
        if self.window_secs > WINDOW_SECS_MAX {
            return Err(PolicyError::WindowTooLong(self.window_secs));
        }
        if self.keep_all_secs > self.window_secs {
            return Err(PolicyError::KeepAllBeyondWindow {
                keep_all: self.keep_all_secs,
                window: self.window_secs,
            });
        }
        if self.bucket_secs == 0 {
            return Err(PolicyError::BucketZero);
        }
        Ok(())
    }
}

/// The ids of the points to keep at `now_unix_ms`, in the order of `points`.
pub fn keep(points: &[Point], policy: &Policy, now_unix_ms: u64) -> Vec<u64> {
    let age_ms = |point: &Point| now_unix_ms.saturating_sub(point.time_unix_ms);
    let window_ms = policy.window_secs.saturating_mul(1000);
    let keep_all_ms = policy.keep_all_secs.saturating_mul(1000);
    let bucket_ms = policy.bucket_secs.max(1).saturating_mul(1000);
    let newest = points.iter().max_by_key(|point| (point.time_unix_ms, point.id)).map(|p| p.id);
    // Newest point of each bucket, among points older than the keep-all period.
    let mut bucket_newest: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for point in points.iter().filter(|p| age_ms(p) >= keep_all_ms && age_ms(p) <= window_ms) {
        let bucket = point.time_unix_ms / bucket_ms;
        let candidate = (point.time_unix_ms, point.id);
        let slot = bucket_newest.entry(bucket).or_insert(candidate);
        *slot = (*slot).max(candidate);
    }
    let mut apps: Vec<(u64, u64)> = points
        .iter()
        .filter(|p| p.kind == Kind::App && age_ms(p) <= window_ms)
        .map(|p| (p.time_unix_ms, p.id))
        .collect();
    apps.sort_unstable_by(|a, b| b.cmp(a));
    apps.truncate(policy.app_consistent_count);
    points
        .iter()
        .filter(|point| {
            let age = age_ms(point);
            Some(point.id) == newest
                || (age < keep_all_ms)
                || (age <= window_ms
                    && bucket_newest.get(&(point.time_unix_ms / bucket_ms))
                        == Some(&(point.time_unix_ms, point.id)))
                || apps.contains(&(point.time_unix_ms, point.id))
        })
        .map(|point| point.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn policy() -> Policy {
        Policy {
            keep_all_secs: 2 * 3600,
            bucket_secs: 3600,
            window_secs: 72 * 3600,
            app_consistent_count: 2,
        }
    }

    #[test]
    fn recent_points_all_older_one_per_hour_nothing_past_the_window() {
        let now = 100 * HOUR_MS;
        // One crash point every 15 minutes for the last 80 hours.
        let points: Vec<Point> = (0..320)
            .map(|i| Point { id: i, time_unix_ms: now - i * HOUR_MS / 4, kind: Kind::Crash })
            .collect();
        let kept = keep(&points, &policy(), now);
        // 8 points within the 2 h keep-all period (ages 0..1h45), then one per hour up to 72 h.
        assert!((0..8).all(|id| kept.contains(&id)));
        assert_eq!(kept.len(), 8 + 71);
        assert!(kept.iter().all(|&id| points[id as usize].time_unix_ms >= now - 72 * HOUR_MS));
    }

    #[test]
    fn newest_survives_an_expired_window_and_apps_are_counted() {
        let now = 1000 * HOUR_MS;
        let points = [
            Point { id: 1, time_unix_ms: 10 * HOUR_MS, kind: Kind::Crash },
            Point { id: 2, time_unix_ms: now - 10 * HOUR_MS, kind: Kind::App },
            Point { id: 3, time_unix_ms: now - 10 * HOUR_MS + 1000, kind: Kind::Crash },
            Point { id: 4, time_unix_ms: now - 20 * HOUR_MS, kind: Kind::App },
            Point { id: 5, time_unix_ms: now - 30 * HOUR_MS, kind: Kind::App },
        ];
        let kept = keep(&points[..1], &policy(), now);
        assert_eq!(kept, vec![1], "the only point stays even past the window");
        let kept = keep(&points, &policy(), now);
        // 3 wins its hour over 2, but 2 and 4 are the two newest app points; 5 is the newest
        // of its own hour.
        assert_eq!(kept, vec![2, 3, 4, 5]);
    }

    #[test]
    fn policy_limits_are_checked() {
        let mut bad = policy();
        bad.window_secs = WINDOW_SECS_MAX + 1;
        assert_eq!(bad.validate(), Err(PolicyError::WindowTooLong(WINDOW_SECS_MAX + 1)));
        bad = policy();
        bad.keep_all_secs = bad.window_secs + 1;
        assert!(matches!(bad.validate(), Err(PolicyError::KeepAllBeyondWindow { .. })));
        bad = policy();
        bad.bucket_secs = 0;
        assert_eq!(bad.validate(), Err(PolicyError::BucketZero));
        assert_eq!(policy().validate(), Ok(()));
    }
}
