//! Recovery points, the pure part (design.md §5): what a point's disk image is made of, and
//! which points retention keeps.
//!
//! - [`ExtentMap`]: non-overlapping extents of a disk, each pointing at the newest data for
//!   its bytes (a location in the redo journal). Built from the journal's writes up to a
//!   point's sequence, it answers "where do bytes X..Y of the disk as of this point live",
//!   with holes meaning "in the base image". Building it is one pass over the journal index,
//!   so a point is readable at once, without copying the disk.
//! - [`retention`]: which points a thinning policy keeps.
//! - [`StoredPoint`]: a point's fixed-size record in the target's point log.
//!
//! No files, clocks or sockets here: the target's shell feeds journal entries in and reads
//! data from the locations that come out.

// Pure logic with nothing to gain from `unsafe`; forbidding it keeps the proof burden at zero.
#![forbid(unsafe_code)]

mod extent_map;
mod record;
pub mod retention;

pub use extent_map::{ExtentMap, Piece};
pub use record::{PointRecordError, StoredPoint, POINT_RECORD_BYTES};

#[cfg(test)]
mod proptests;
