//! `base:allocation` block status extents from a map of allocated ranges.

use crate::consts::{STATE_HOLE, STATE_ZERO};
use crate::limits::BLOCK_STATUS_EXTENTS_MAX;

const DATA: u32 = 0;
const HOLE: u32 = STATE_HOLE | STATE_ZERO;

/// Describes `[offset, min(offset + length, export_size))` as `(length, status)` extents:
/// status 0 for bytes inside `allocated`, `STATE_HOLE | STATE_ZERO` elsewhere.
///
/// `allocated` holds `(start, length)` data ranges sorted by start; overlaps and empty
/// ranges are tolerated. Adjacent extents with equal status are merged, so consecutive
/// extents always differ. The extents cover a prefix of the range: all of it unless
/// `req_one` (then only the first extent) or [`BLOCK_STATUS_EXTENTS_MAX`] is reached,
/// which the specification allows since the client asks again for the rest. Every
/// extent is non-empty, and none reaches past the requested range.
///
/// Time is linear in the ranges before the end of the request, so callers with large
/// maps should pass the sub-slice starting near `offset`.
pub fn block_status_extents(
    offset: u64,
    length: u32,
    export_size: u64,
    allocated: &[(u64, u64)],
    req_one: bool,
) -> Vec<(u32, u32)> {
    let end = offset.saturating_add(length.into()).min(export_size);
    let max = if req_one { 1 } else { BLOCK_STATUS_EXTENTS_MAX };
    let mut extents = Extents { list: Vec::new(), max };
    let mut pos = offset;
    for &(start, len) in allocated {
        let data_end = start.saturating_add(len).min(end);
        if start >= end {
            break;
        }
        if data_end <= pos {
            continue;
        }
        let data_start = start.max(pos);
        if !extents.push(data_start - pos, HOLE) || !extents.push(data_end - data_start, DATA) {
            return extents.list;
        }
        pos = data_end;
    }
    if pos < end {
        extents.push(end - pos, HOLE);
    }
    extents.list
}

#[derive(Debug)]
struct Extents {
    list: Vec<(u32, u32)>,
    max: usize,
}

impl Extents {
    /// Adds `len` bytes of `status`; false once a new extent no longer fits, after which
    /// nothing may be added or the extents would stop being a contiguous prefix.
    fn push(&mut self, len: u64, status: u32) -> bool {
        // Every extent lies within a range of at most u32::MAX bytes.
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if len == 0 {
            return true;
        }
        if let Some((last_len, last_status)) = self.list.last_mut() {
            if *last_status == status {
                *last_len = last_len.saturating_add(len);
                return true;
            }
        }
        if self.list.len() == self.max {
            return false;
        }
        self.list.push((len, status));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_holes_are_merged_and_clamped() {
        let allocated = [(0, 10), (10, 5), (20, 100)];
        assert_eq!(
            block_status_extents(5, 100, 50, &allocated, false),
            [(10, DATA), (5, HOLE), (30, DATA)]
        );
        assert_eq!(block_status_extents(5, 100, 50, &allocated, true), [(10, DATA)]);
        assert_eq!(block_status_extents(0, 8, 1 << 30, &[], false), [(8, HOLE)]);
        assert!(block_status_extents(50, 8, 50, &allocated, false).is_empty());
    }

    #[test]
    fn stops_at_the_extent_limit() {
        let allocated: Vec<_> = (0..5000).map(|i| (i * 2, 1)).collect();
        let extents = block_status_extents(0, 10_000, 10_000, &allocated, false);
        assert_eq!(extents.len(), BLOCK_STATUS_EXTENTS_MAX);
        assert!(extents.iter().enumerate().all(|(i, &e)| e == (1, [DATA, HOLE][i % 2])));
    }
}
