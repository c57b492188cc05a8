//! Walking a source grain by grain, table by table, skipping what cannot hold data.

use crate::layout::Layout;
use crate::{ReadAt, VmdkWriteError, GRAIN_BYTES, GTES_PER_GT};

/// What the walk finds, in disk order.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// Grain `index` holds data: `data` is its 64 KiB (zero-padded past the source's end).
    Grain { index: u64, data: &'a [u8] },
    /// Every grain of table `table` has been reported.
    TableEnd { table: u64 },
}

/// Whether `buf` is all zeros.
fn is_zero(buf: &[u8]) -> bool {
    // Chunked so that the common non-zero case stops early while each chunk's test
    // stays a simple vectorizable fold.
    buf.chunks(4096).all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Walk `source` over `layout`, calling `f` for each non-zero grain and each table's end.
/// Returns the bytes read from the source.
pub(crate) fn scan(
    source: &dyn ReadAt,
    layout: &Layout,
    mut f: impl FnMut(Event<'_>) -> Result<(), VmdkWriteError>,
) -> Result<u64, VmdkWriteError> {
    let len = source.len();
    let table_bytes = GTES_PER_GT * GRAIN_BYTES;
    let mut buf = vec![0u8; GRAIN_BYTES as usize];
    // Grain spans `first..=last` (indexes within the table) that may hold data.
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut bytes_read = 0u64;
    for table in 0..layout.tables {
        let w0 = table * table_bytes;
        let w1 = w0.saturating_add(table_bytes).min(len);
        spans.clear();
        if w0 < w1 {
            for (offset, n) in source.data_ranges(w0, w1 - w0) {
                let start = offset.max(w0);
                let end = offset.saturating_add(n).min(w1);
                if start < end {
                    spans.push(((start - w0) / GRAIN_BYTES, (end - 1 - w0) / GRAIN_BYTES));
                }
            }
            spans.sort_unstable();
        }
        // The first grain not yet visited: spans may overlap.
        let mut next = 0u64;
        for &(first, last) in &spans {
            for i in first.max(next)..=last {
                let index = table * GTES_PER_GT + i;
                let offset = index * GRAIN_BYTES;
                // offset < w1 ≤ len: only grains overlapping the window are in a span.
                let n = (len - offset).min(GRAIN_BYTES) as usize;
                buf[n..].fill(0);
                source.read_at(&mut buf[..n], offset).map_err(|source| VmdkWriteError::Read {
                    offset,
                    len: n,
                    source,
                })?;
                bytes_read += n as u64;
                if !is_zero(&buf[..n]) {
                    f(Event::Grain { index, data: &buf })?;
                }
            }
            next = next.max(last + 1);
        }
        f(Event::TableEnd { table })?;
    }
    Ok(bytes_read)
}
