//! A disk's recovery points (`disks/NAME/points.log`): CRC-checked journal records of
//! [`StoredPoint`]s, appended as points are taken and rewritten when retention drops some.
//!
//! The newest consistency boundary is always a point (the "latest" a user fails over to).
//! Otherwise points are about `point_interval` apart: a crash marker within the interval
//! after the point before the newest replaces the newest (a provisional point, itself that
//! close), so a disk flushing a thousand times a second keeps at most two points per interval.
//!
//! Appends are not fsynced: the markers they come from are durable in the redo journal, and
//! opening a disk takes points again from every journaled marker newer than the log's last
//! point, with the same rule. A rewrite (dropping points) is atomic and durable, and always
//! happens before pruning moves the base image past a dropped point.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use points::retention::Kind;
use points::StoredPoint;

use crate::error::TargetError;

const POINT_RECORD_KIND: u8 = 1;
/// The same body: this point replaces the newest one (a provisional point moving forward).
const REPLACE_RECORD_KIND: u8 = 2;
/// Points per disk. At a 1 s interval this is over four hours of keep-all retention.
pub(crate) const POINTS_MAX: usize = 16_384;

/// A consistency marker as the journal holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MarkerEntry {
    pub(crate) seq: u64,
    pub(crate) kind: Kind,
    pub(crate) marker_id: u64,
    pub(crate) time_unix_ms: u64,
}

#[derive(Debug)]
pub(crate) struct PointLog {
    path: PathBuf,
    file: File,
    /// Oldest first (ascending sequence and id).
    pub(crate) points: Vec<StoredPoint>,
    pub(crate) next_id: u64,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TargetError {
    let path = path.to_path_buf();
    move |source| TargetError::Io { action, path, source }
}

impl PointLog {
    /// Opens (or creates) the log; a torn final record (a crash during an append) is dropped,
    /// as the journal's marker brings that point back.
    pub(crate) fn open(disk_dir: &Path, next_id_floor: u64) -> Result<PointLog, TargetError> {
        let path = disk_dir.join("points.log");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io_error("read", &path)(error)),
        };
        let mut points: Vec<StoredPoint> = Vec::new();
        let mut records = journal::records(&bytes);
        for (_, record) in records.by_ref() {
            if record.kind == REPLACE_RECORD_KIND {
                points.pop();
            } else if record.kind != POINT_RECORD_KIND {
                continue;
            }
            let point = StoredPoint::decode(record.body).map_err(|error| {
                TargetError::Metadata { path: path.clone(), reason: error.to_string() }
            })?;
            if points.last().is_some_and(|last| last.seq > point.seq || last.id >= point.id) {
                return Err(TargetError::Metadata {
                    path: path.clone(),
                    reason: format!("point {} is out of order", point.id),
                });
            }
            points.push(point);
        }
        let valid_len = records.next_offset();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        if valid_len < bytes.len() as u64 {
            log::warn!(
                "{}: dropping a torn record at byte {valid_len} (a crash during an append)",
                path.display()
            );
            file.set_len(valid_len).map_err(io_error("truncate", &path))?;
        }
        let next_id = points.last().map_or(1, |last| last.id + 1).max(next_id_floor);
        Ok(PointLog { path, file, points, next_id })
    }

    /// Whether a crash marker at `time_unix_ms` replaces the newest point: that point is a
    /// crash point less than `interval_ms` after the one before it (provisional), and so is
    /// the marker. A marker past the interval keeps the provisional point and follows it.
    fn replaces_newest(&self, time_unix_ms: u64, interval_ms: u64) -> bool {
        match self.points.as_slice() {
            [.., before, newest] => {
                let window_end = before.time_unix_ms.saturating_add(interval_ms);
                newest.kind == Kind::Crash
                    && newest.time_unix_ms < window_end
                    && time_unix_ms < window_end
            }
            _ => false,
        }
    }

    /// Takes the point `marker` makes (every marker is the newest boundary), replacing a
    /// provisional newest point unless `pinned` says it is in use.
    pub(crate) fn on_marker(
        &mut self,
        marker: &MarkerEntry,
        interval_ms: u64,
        pinned: impl Fn(u64) -> bool,
    ) -> Result<Option<StoredPoint>, TargetError> {
        if self.points.last().is_some_and(|last| last.seq >= marker.seq) {
            return Ok(None);
        }
        let replace = marker.kind == Kind::Crash
            && self.replaces_newest(marker.time_unix_ms, interval_ms)
            && !self.points.last().is_some_and(|newest| pinned(newest.id));
        let point = StoredPoint {
            id: self.next_id,
            seq: marker.seq,
            time_unix_ms: marker.time_unix_ms,
            marker_id: marker.marker_id,
            kind: marker.kind,
        };
        let kind = if replace { REPLACE_RECORD_KIND } else { POINT_RECORD_KIND };
        let mut record = Vec::with_capacity(64);
        journal::encode_record(kind, &point.encode(), &mut record)
            .expect("a point record is small");
        self.file.write_all(&record).map_err(io_error("append", &self.path))?;
        self.next_id += 1;
        if replace {
            self.points.pop();
        }
        self.points.push(point);
        Ok(Some(point))
    }

    /// Keeps only the points `keep` says, durably.
    pub(crate) fn retain(
        &mut self,
        mut keep: impl FnMut(&StoredPoint) -> bool,
    ) -> Result<usize, TargetError> {
        let before = self.points.len();
        self.points.retain(|point| keep(point));
        let dropped = before - self.points.len();
        if dropped == 0 {
            return Ok(0);
        }
        let mut bytes = Vec::with_capacity(self.points.len() * 64);
        for point in &self.points {
            journal::encode_record(POINT_RECORD_KIND, &point.encode(), &mut bytes)
                .expect("a point record is small");
        }
        fsio::write_atomic(&self.path, &bytes).map_err(io_error("write", &self.path))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_error("open", &self.path))?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pointlog-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn crash(seq: u64, time_unix_ms: u64) -> MarkerEntry {
        MarkerEntry { seq, kind: Kind::Crash, marker_id: seq, time_unix_ms }
    }

    fn summary(log: &PointLog) -> Vec<(u64, u64)> {
        log.points.iter().map(|point| (point.id, point.seq)).collect()
    }

    #[test]
    fn markers_within_the_interval_move_one_provisional_point() {
        let dir = temp_dir("interval");
        let mut log = PointLog::open(&dir, 1).unwrap();
        let none = |_| false;
        log.on_marker(&crash(10, 1_000), 1_000, none).unwrap();
        log.on_marker(&crash(20, 1_100), 1_000, none).unwrap();
        log.on_marker(&crash(30, 1_200), 1_000, none).unwrap();
        // 20 was provisional (100 ms after 10): 30 replaced it.
        assert_eq!(summary(&log), vec![(1, 10), (3, 30)]);
        // Past the interval after 10: 30 stays and 40 follows it.
        log.on_marker(&crash(40, 2_100), 1_000, none).unwrap();
        assert_eq!(summary(&log), vec![(1, 10), (3, 30), (4, 40)]);
        // App-consistent points are never replaced.
        let app = MarkerEntry { seq: 50, kind: Kind::App, marker_id: 50, time_unix_ms: 2_150 };
        log.on_marker(&app, 1_000, none).unwrap();
        log.on_marker(&crash(60, 2_160), 1_000, none).unwrap();
        assert_eq!(summary(&log), vec![(1, 10), (3, 30), (4, 40), (5, 50), (6, 60)]);
        // A pinned provisional point is kept.
        log.on_marker(&crash(70, 2_170), 1_000, |id| id == 6).unwrap();
        assert_eq!(summary(&log).last(), Some(&(7, 70)));
        assert_eq!(log.points.len(), 6);
        // Old markers (replayed after a crash) are ignored.
        assert_eq!(log.on_marker(&crash(65, 9_000), 1_000, none).unwrap(), None);
        let before = summary(&log);
        drop(log);
        let reopened = PointLog::open(&dir, 1).unwrap();
        assert_eq!(summary(&reopened), before, "replacements survive a reopen");
        assert_eq!(reopened.next_id, 8);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_append_is_dropped_and_retain_rewrites_durably() {
        let dir = temp_dir("torn");
        let mut log = PointLog::open(&dir, 1).unwrap();
        for (index, seq) in [5u64, 9, 14].into_iter().enumerate() {
            log.on_marker(&crash(seq, index as u64 * 10_000), 1_000, |_| false).unwrap();
        }
        let path = dir.join("points.log");
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 7]).unwrap();
        let mut log = PointLog::open(&dir, 1).unwrap();
        assert_eq!(summary(&log), vec![(1, 5), (2, 9)]);
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, full.len() / 3 * 2);
        assert_eq!(log.retain(|point| point.seq != 5).unwrap(), 1);
        let log = PointLog::open(&dir, 7).unwrap();
        assert_eq!(summary(&log), vec![(2, 9)]);
        assert_eq!(log.next_id, 7, "ids never go back below the recorded floor");
        fs::remove_dir_all(&dir).unwrap();
    }
}
