//! The feature embedder and detector share: tile log-levels and their time high-pass.
//!
//! Tiles are stored column-major in time: tile (c, r) (column c = frames 2c, 2c+1; row r = bins
//! `TILE_BAND.start + 3r ..+3`) is at index `c·TILE_ROWS + r`. Sums run in f64: the statistic
//! adds thousands of small differences of logs.

use ndarray::ArrayView2;

use super::{Params, TileError, median};
use crate::spec::{
    BINS, FRAMES_PER_BLOCK, TILE_BAND, TILE_BINS, TILE_COLS, TILE_FRAMES, TILE_ROWS,
};

/// Tiles per block.
pub const TILES: usize = TILE_COLS * TILE_ROWS;

/// Checks a block's magnitude `[BINS, FRAMES_PER_BLOCK]` and that every value is finite.
pub fn check_block(mag: ArrayView2<f32>) -> Result<(), TileError> {
    if mag.dim() != (BINS, FRAMES_PER_BLOCK) {
        return Err(TileError::Shape {
            bins: BINS,
            frames: FRAMES_PER_BLOCK,
            got: mag.dim(),
        });
    }
    if mag.iter().any(|x| !x.is_finite()) {
        return Err(TileError::NonFinite);
    }
    Ok(())
}

/// Tile level T: the mean over each tile's cells of ln max(|X|, floor), floor = `floor_db` below
/// the RMS of |X| over the block's band cells. `mag` must have passed [`check_block`].
pub fn tile_levels(mag: ArrayView2<f32>, params: &Params) -> Vec<f64> {
    let band = mag.slice(ndarray::s![TILE_BAND, ..]);
    let power = band.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / band.len() as f64;
    // The prototype's 1e-9 keeps the log finite on digital silence.
    let floor = power.sqrt() * 10f64.powf(params.floor_db / 20.0) + 1e-9;
    let mut t = vec![0.0f64; TILES];
    for (bi, row) in band.outer_iter().enumerate() {
        let r = bi / TILE_BINS;
        for (f, &x) in row.iter().enumerate() {
            t[(f / TILE_FRAMES) * TILE_ROWS + r] += (x as f64).max(floor).ln();
        }
    }
    let cells = (TILE_BINS * TILE_FRAMES) as f64;
    t.iter_mut().for_each(|v| *v /= cells);
    t
}

/// H(c, r) = T(c, r) − ½ (T(c−1, r) + T(c+1, r)), edge columns replicated.
pub fn highpass(t: &[f64]) -> Vec<f64> {
    let at = |c: isize, r: usize| t[(c.clamp(0, TILE_COLS as isize - 1) as usize) * TILE_ROWS + r];
    (0..TILES)
        .map(|i| {
            let (c, r) = ((i / TILE_ROWS) as isize, i % TILE_ROWS);
            t[i] - 0.5 * (at(c - 1, r) + at(c + 1, r))
        })
        .collect()
}

/// Per row: the median over its columns of `f(tile value)`.
pub fn row_medians(v: &[f64], f: impl Fn(f64) -> f64) -> [f64; TILE_ROWS] {
    let mut col = vec![0.0f64; TILE_COLS];
    std::array::from_fn(|r| {
        col.iter_mut()
            .enumerate()
            .for_each(|(c, x)| *x = f(v[c * TILE_ROWS + r]));
        median(&mut col)
    })
}

/// T minus its row's median: the tile's level relative to what is usual at its frequency.
pub fn relative_to_row(t: &[f64]) -> Vec<f64> {
    let med = row_medians(t, |x| x);
    t.iter()
        .enumerate()
        .map(|(i, &x)| x - med[i % TILE_ROWS])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn levels_average_the_log_of_each_tiles_cells() {
        let mut mag = Array2::<f32>::from_elem((BINS, FRAMES_PER_BLOCK), 1.0);
        // Tile (c = 3, r = 5): frames 6, 7; bins 27, 28, 29. One cell at e², the rest at 1.
        mag[[TILE_BAND.start + 15, 6]] = (2.0f32).exp();
        let t = tile_levels(mag.view(), &Params::default());
        // ln e² / 6 cells; f32 storage of e² rounds ~1e-7.
        assert!(
            (t[3 * TILE_ROWS + 5] - 2.0 / 6.0).abs() < 1e-6,
            "{}",
            t[3 * TILE_ROWS + 5]
        );
        assert!(t[3 * TILE_ROWS + 4].abs() < 1e-12 && t[4 * TILE_ROWS + 5].abs() < 1e-12);
        let h = highpass(&t);
        assert!((h[3 * TILE_ROWS + 5] - 2.0 / 6.0).abs() < 1e-6);
        assert!(
            (h[2 * TILE_ROWS + 5] + 1.0 / 6.0).abs() < 1e-6,
            "neighbours see half the jump"
        );
        // Edge columns are replicated: a constant row high-passes to zero everywhere.
        assert!(h[5].abs() < 1e-12 && h[(TILE_COLS - 1) * TILE_ROWS + 5].abs() < 1e-12);
    }

    #[test]
    fn silence_is_floored_not_infinite() {
        let mag = Array2::<f32>::zeros((BINS, FRAMES_PER_BLOCK));
        let t = tile_levels(mag.view(), &Params::default());
        assert!(t.iter().all(|x| x.is_finite()));
        assert!(
            highpass(&t).iter().all(|&x| x == 0.0),
            "exact: every tile holds the same floor"
        );
    }

    #[test]
    fn bad_blocks_are_refused() {
        let short = Array2::<f32>::zeros((BINS, FRAMES_PER_BLOCK - 1));
        assert!(matches!(
            check_block(short.view()),
            Err(TileError::Shape { .. })
        ));
        let mut nan = Array2::<f32>::zeros((BINS, FRAMES_PER_BLOCK));
        nan[[40, 40]] = f32::NAN;
        assert_eq!(check_block(nan.view()), Err(TileError::NonFinite));
    }
}
