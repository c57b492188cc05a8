//! The rollup compatibility matrix: loading, linting, and planning on what loaded.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(matrix) = rollup::load(text) else { return };
    let _ = rollup::lint(&matrix);
    // Plan from the oldest rollup's first cell, to the newest and to a middle one.
    if let Some(cell) = matrix.rollups.first().and_then(|rollup| rollup.cells.first()) {
        let _ = rollup::plan(&matrix, &cell.component, &cell.version, None, None);
        if let Some(middle) = matrix.rollups.get(matrix.rollups.len() / 2) {
            if let Some(to) = middle.cells.iter().find(|c| c.component == cell.component) {
                let _ =
                    rollup::plan(&matrix, &cell.component, &cell.version, Some(&to.version), None);
            }
        }
    }
});
