//! The dirty bitmap: which grains of a disk hold writes that are not in the replication
//! stream (the buffer overflowed, or the relay was away). Pure: the capture module decides when
//! the encoded form is written to disk (no later than the client's FLUSH).
//!
//! File format (little endian): magic `SRDM`, version u32, generation [16], disk bytes u64,
//! grain bytes u64, word count u64, the bitmap words (u64 each, bit i of word w is grain
//! 64*w+i), then CRC32C over everything before it. A file that fails any check is
//! "unverifiable", which forces a full checksum resync (design.md invariant 4).

use wire::Generation;

const MAGIC: &[u8; 4] = b"SRDM";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 4 + 4 + 16 + 8 + 8 + 8;
/// Most grains a map may have: 2^32 grains is 256 TiB at 64 KiB, and 512 MiB of bitmap.
pub(crate) const GRAINS_MAX: u64 = 1 << 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirtyMap {
    grain_bytes: u64,
    disk_bytes: u64,
    words: Vec<u64>,
    dirty_grains: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DirtyMapError {
    #[error("grain size {0} is not a power of two of at least 512 bytes")]
    Grain(u64),
    #[error("{disk_bytes} bytes at {grain_bytes}-byte grains needs more than {GRAINS_MAX} grains")]
    TooManyGrains { disk_bytes: u64, grain_bytes: u64 },
    #[error("{0} bytes, shorter than a dirty bitmap header")]
    Truncated(usize),
    #[error("bad magic (not a dirty bitmap)")]
    Magic,
    #[error("version {0} is not supported (expected {VERSION})")]
    Version(u32),
    #[error("it belongs to generation {theirs}, not {ours}")]
    Generation { ours: String, theirs: String },
    #[error(
        "it is for {theirs} bytes at {theirs_grain}-byte grains, not {ours} bytes at {ours_grain}"
    )]
    Geometry { ours: u64, theirs: u64, ours_grain: u64, theirs_grain: u64 },
    #[error("length {len} does not match its {words} words")]
    Length { len: usize, words: u64 },
    #[error("checksum mismatch (torn or damaged write)")]
    Checksum,
}

impl DirtyMap {
    pub(crate) fn new(disk_bytes: u64, grain_bytes: u64) -> Result<DirtyMap, DirtyMapError> {
        if !grain_bytes.is_power_of_two() || grain_bytes < 512 {
            return Err(DirtyMapError::Grain(grain_bytes));
        }
        let grains = disk_bytes.div_ceil(grain_bytes);
        if grains > GRAINS_MAX {
            return Err(DirtyMapError::TooManyGrains { disk_bytes, grain_bytes });
        }
        let words = vec![0u64; grains.div_ceil(64) as usize];
        Ok(DirtyMap { grain_bytes, disk_bytes, words, dirty_grains: 0 })
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.dirty_grains == 0
    }

    /// Bytes covered by dirty grains (the last grain counts only up to the disk's end).
    pub(crate) fn dirty_bytes(&self) -> u64 {
        let mut bytes = self.dirty_grains * self.grain_bytes;
        let last = self.grains().saturating_sub(1);
        if self.dirty_grains > 0 && self.get(last) {
            bytes -= self.grains() * self.grain_bytes - self.disk_bytes;
        }
        bytes
    }

    fn grains(&self) -> u64 {
        self.disk_bytes.div_ceil(self.grain_bytes)
    }

    fn get(&self, grain: u64) -> bool {
        self.words[(grain / 64) as usize] & (1 << (grain % 64)) != 0
    }

    /// The grains touched by `[offset, offset+len)`, clamped to the disk.
    fn grain_range(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(self.disk_bytes);
        if len == 0 || offset >= end {
            return 0..0;
        }
        offset / self.grain_bytes..end.div_ceil(self.grain_bytes)
    }

    pub(crate) fn mark(&mut self, offset: u64, len: u64) {
        for grain in self.grain_range(offset, len) {
            let word = &mut self.words[(grain / 64) as usize];
            let bit = 1 << (grain % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.dirty_grains += 1;
            }
        }
    }

    pub(crate) fn any_dirty(&self, offset: u64, len: u64) -> bool {
        self.grain_range(offset, len).any(|grain| self.get(grain))
    }

    /// Clears whole grains in `[offset, offset+len)`; the caller has just read them.
    pub(crate) fn clear(&mut self, offset: u64, len: u64) {
        for grain in self.grain_range(offset, len) {
            let word = &mut self.words[(grain / 64) as usize];
            let bit = 1 << (grain % 64);
            if *word & bit != 0 {
                *word &= !bit;
                self.dirty_grains -= 1;
            }
        }
    }

    /// The first run of dirty grains at or after byte `from`, at most `max_bytes` long (at
    /// least one grain), as a byte range clamped to the disk.
    pub(crate) fn next_run(&self, from: u64, max_bytes: u64) -> Option<(u64, u64)> {
        if self.dirty_grains == 0 {
            return None;
        }
        let grains = self.grains();
        let mut grain = from.div_ceil(self.grain_bytes);
        // Skip clean words quickly: a sparse map over a large disk is the common case.
        while grain < grains {
            let word = self.words[(grain / 64) as usize] >> (grain % 64);
            if word == 0 {
                grain = (grain / 64 + 1) * 64;
                continue;
            }
            grain += u64::from(word.trailing_zeros());
            break;
        }
        if grain >= grains {
            return None;
        }
        let first = grain;
        let max_grains = (max_bytes / self.grain_bytes).max(1);
        while grain < grains && grain - first < max_grains && self.get(grain) {
            grain += 1;
        }
        let offset = first * self.grain_bytes;
        let end = (grain * self.grain_bytes).min(self.disk_bytes);
        Some((offset, end - offset))
    }

    pub(crate) fn encode(&self, generation: &Generation, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(HEADER_BYTES + self.words.len() * 8 + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(generation);
        out.extend_from_slice(&self.disk_bytes.to_le_bytes());
        out.extend_from_slice(&self.grain_bytes.to_le_bytes());
        out.extend_from_slice(&(self.words.len() as u64).to_le_bytes());
        for word in &self.words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        let crc = crc32c::crc32c(out);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a map written by `encode` for this generation and geometry.
    pub(crate) fn decode(
        bytes: &[u8],
        generation: &Generation,
        disk_bytes: u64,
        grain_bytes: u64,
    ) -> Result<DirtyMap, DirtyMapError> {
        if bytes.len() < HEADER_BYTES + 4 {
            return Err(DirtyMapError::Truncated(bytes.len()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if &bytes[0..4] != MAGIC {
            return Err(DirtyMapError::Magic);
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4"));
        if version != VERSION {
            return Err(DirtyMapError::Version(version));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(DirtyMapError::Checksum);
        }
        if &bytes[8..24] != generation {
            return Err(DirtyMapError::Generation {
                ours: wire::generation_to_hex(generation),
                theirs: wire::generation_to_hex(bytes[8..24].try_into().expect("16")),
            });
        }
        let (theirs, theirs_grain) = (u64_at(24), u64_at(32));
        if theirs != disk_bytes || theirs_grain != grain_bytes {
            return Err(DirtyMapError::Geometry {
                ours: disk_bytes,
                theirs,
                ours_grain: grain_bytes,
                theirs_grain,
            });
        }
        let mut map = DirtyMap::new(disk_bytes, grain_bytes)?;
        let words = u64_at(40);
        if words != map.words.len() as u64 || body.len() != HEADER_BYTES + map.words.len() * 8 {
            return Err(DirtyMapError::Length { len: bytes.len(), words });
        }
        for (index, word) in map.words.iter_mut().enumerate() {
            *word = u64_at(HEADER_BYTES + index * 8);
        }
        // Bits past the last grain would be drained as out-of-range reads: refuse them.
        let grains = map.grains();
        if grains % 64 != 0 {
            let last = map.words.last().copied().unwrap_or(0);
            if last >> (grains % 64) != 0 {
                return Err(DirtyMapError::Length { len: bytes.len(), words });
            }
        }
        map.dirty_grains = map.words.iter().map(|word| u64::from(word.count_ones())).sum();
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GENERATION: Generation = [7; 16];

    #[test]
    fn marks_runs_and_clears() {
        let mut map = DirtyMap::new(1 << 20, 4096).unwrap();
        map.mark(4095, 2);
        assert_eq!(map.next_run(0, 1 << 20), Some((0, 8192)));
        assert!(map.any_dirty(8191, 1));
        assert!(!map.any_dirty(8192, 4096));
        map.clear(0, 4096);
        assert_eq!(map.next_run(0, 1 << 20), Some((4096, 4096)));
        assert_eq!(map.dirty_bytes(), 4096);
    }

    #[test]
    fn last_grain_is_clamped_to_the_disk() {
        let mut map = DirtyMap::new(10_000, 4096).unwrap();
        map.mark(9_000, 5_000);
        assert_eq!(map.next_run(0, 1 << 20), Some((8192, 10_000 - 8192)));
        assert_eq!(map.dirty_bytes(), 10_000 - 8192);
    }

    #[test]
    fn decode_refuses_other_generation_geometry_and_damage() {
        let mut map = DirtyMap::new(1 << 20, 4096).unwrap();
        map.mark(0, 1);
        let mut bytes = Vec::new();
        map.encode(&GENERATION, &mut bytes);
        assert_eq!(DirtyMap::decode(&bytes, &GENERATION, 1 << 20, 4096), Ok(map));
        assert!(matches!(
            DirtyMap::decode(&bytes, &[8; 16], 1 << 20, 4096),
            Err(DirtyMapError::Generation { .. })
        ));
        assert!(matches!(
            DirtyMap::decode(&bytes, &GENERATION, 2 << 20, 4096),
            Err(DirtyMapError::Geometry { .. })
        ));
        bytes[50] ^= 1;
        assert_eq!(
            DirtyMap::decode(&bytes, &GENERATION, 1 << 20, 4096),
            Err(DirtyMapError::Checksum)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DirtyMap::decode(&bytes, &GENERATION, 1 << 16, 4096);
        }

        /// Runs enumerate exactly the marked grains, and encoding round-trips.
        #[test]
        fn runs_cover_exactly_the_marked_bytes(
            disk_bytes in 1u64..300_000,
            marks in proptest::collection::vec((0u64..320_000, 0u64..40_000), 0..20),
            max_run in 1u64..100_000,
        ) {
            let grain = 4096;
            let mut map = DirtyMap::new(disk_bytes, grain).unwrap();
            let mut model = vec![false; disk_bytes.div_ceil(grain) as usize];
            for &(offset, len) in &marks {
                map.mark(offset, len);
                let end = (offset + len).min(disk_bytes);
                if len > 0 && offset < end {
                    for g in offset / grain..end.div_ceil(grain) {
                        model[g as usize] = true;
                    }
                }
            }
            let mut seen = vec![false; model.len()];
            let mut from = 0;
            while let Some((offset, len)) = map.next_run(from, max_run) {
                prop_assert!(len > 0 && offset + len <= disk_bytes && offset >= from);
                for g in offset / grain..(offset + len).div_ceil(grain) {
                    prop_assert!(model[g as usize]);
                    seen[g as usize] = true;
                }
                from = offset + len;
            }
            prop_assert_eq!(&seen, &model);
            let mut bytes = Vec::new();
            map.encode(&GENERATION, &mut bytes);
            prop_assert_eq!(DirtyMap::decode(&bytes, &GENERATION, disk_bytes, grain), Ok(map));
        }
    }
}
