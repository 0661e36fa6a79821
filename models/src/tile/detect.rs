//! The detector's per-block statistic: per bit and per cell, the correlation of the high-passed
//! tile levels with the key's unit signs (S) and its variance without a mark (V).
//!
//! Everything up to the key is computed once per block ([`BlockFeature`]); each key (and each
//! scramble row a grid-shift search tries) then costs one pass over the 8 010 units.

use ndarray::ArrayView2;

use super::feature::{self, TILES};
use super::{Params, Patterns, TileError};
use crate::spec::{CELL_BAND_GROUPS, CELL_LEVEL_EDGES, CELLS, MESSAGE_BITS, TILE_ROWS, TILE_UNITS};

/// The key-independent part of one block's reading.
#[derive(Debug, Clone)]
pub struct BlockFeature {
    /// Per unit: first tile's value minus the second's (u(2j, r) − u(2j+1, r)).
    unit_diff: Vec<f64>,
    /// Per unit: its cell (band group × level class).
    unit_cell: Vec<u8>,
}

/// One block's partial sums for one key, per bit and cell.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSums {
    /// Σ of the signed unit values of bit b's units in cell e.
    pub s: [[f64; CELLS]; MESSAGE_BITS],
    /// Variance of that sum without a mark: unit count × the cell's mean square unit value.
    pub v: [[f64; CELLS]; MESSAGE_BITS],
}

/// Cell of unit `u` from its row and its level relative to the row's median.
fn cell_of(u: usize, level: f64) -> u8 {
    let group = (u % TILE_ROWS) * CELL_BAND_GROUPS / TILE_ROWS;
    let class = CELL_LEVEL_EDGES
        .iter()
        .filter(|&&edge| level >= edge)
        .count();
    (group * (CELL_LEVEL_EDGES.len() + 1) + class) as u8
}

impl BlockFeature {
    /// From one block's mid magnitude `[BINS, FRAMES_PER_BLOCK]` (its own STFT, zeros outside
    /// the block).
    pub fn from_magnitude(
        mag: ArrayView2<f32>,
        params: &Params,
    ) -> Result<BlockFeature, TileError> {
        feature::check_block(mag)?;
        let t = feature::tile_levels(mag, params);
        let h = feature::highpass(&t);
        // Robust noise std per row; the 1e-6 keeps an all-constant row (silence) finite.
        let scale = feature::row_medians(&h, f64::abs).map(|m| 1.0 / (1.4826 * m + 1e-6));
        let rel = feature::relative_to_row(&t);
        let (lo, hi) = params.level_weight_clip;
        let clip = params.detector_clip;
        let u: Vec<f64> = (0..TILES)
            .map(|i| {
                let level = (params.level_weight * rel[i]).exp().clamp(lo, hi);
                (h[i] * scale[i % TILE_ROWS] * level).clamp(-clip, clip)
            })
            .collect();
        let pair = |unit: usize| {
            let (j, r) = (unit / TILE_ROWS, unit % TILE_ROWS);
            ((2 * j) * TILE_ROWS + r, (2 * j + 1) * TILE_ROWS + r)
        };
        let unit_diff = (0..TILE_UNITS)
            .map(pair)
            .map(|(a, b)| u[a] - u[b])
            .collect();
        let unit_cell = (0..TILE_UNITS)
            .map(|n| (n, pair(n)))
            .map(|(n, (a, b))| cell_of(n, 0.5 * (rel[a] + rel[b])))
            .collect();
        Ok(BlockFeature {
            unit_diff,
            unit_cell,
        })
    }

    /// A feature from a model's outputs: per unit its value and its cell (a whole number below
    /// [`CELLS`], as a float).
    pub fn from_parts(values: &[f32], cells: &[f32]) -> Result<BlockFeature, TileError> {
        if values.len() != TILE_UNITS || cells.len() != TILE_UNITS {
            return Err(TileError::Feature(format!(
                "{} values and {} cells for {TILE_UNITS} units",
                values.len(),
                cells.len()
            )));
        }
        if values.iter().any(|x| !x.is_finite()) {
            return Err(TileError::Feature("a unit value is NaN or infinite".into()));
        }
        let unit_cell = cells
            .iter()
            .map(|&c| (c.fract() == 0.0 && (0.0..CELLS as f32).contains(&c)).then_some(c as u8))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| {
                TileError::Feature(format!("a unit's cell is not a whole number below {CELLS}"))
            })?;
        Ok(BlockFeature {
            unit_diff: values.iter().map(|&x| x as f64).collect(),
            unit_cell,
        })
    }

    /// Per unit: its value and its cell (for comparing two readings).
    pub fn parts(&self) -> (&[f64], &[u8]) {
        (&self.unit_diff, &self.unit_cell)
    }

    /// The block's sums for `patterns` with the signs of grid block `block`.
    pub fn cell_sums(&self, patterns: &Patterns, block: i64) -> CellSums {
        let signs = patterns.block_signs(block);
        let mut s = [[0.0f64; CELLS]; MESSAGE_BITS];
        let mut n = [[0u32; CELLS]; MESSAGE_BITS];
        let mut sq = [0.0f64; CELLS];
        let mut count = [0u32; CELLS];
        for (((&d, &e), &bit), &sign) in self
            .unit_diff
            .iter()
            .zip(&self.unit_cell)
            .zip(patterns.unit_bit())
            .zip(&signs)
        {
            let q = sign as f64 * d;
            let (e, b) = (e as usize, bit as usize);
            s[b][e] += q;
            n[b][e] += 1;
            sq[e] += q * q;
            count[e] += 1;
        }
        let mean_sq: [f64; CELLS] = std::array::from_fn(|e| sq[e] / count[e].max(1) as f64);
        // The 1e-12 keeps an empty or silent cell's ratio finite (its S is 0).
        let v =
            std::array::from_fn(|b| std::array::from_fn(|e| n[b][e] as f64 * mean_sq[e] + 1e-12));
        CellSums { s, v }
    }
}

impl CellSums {
    /// z per bit (still under the block's mask) with cell weights `w`: Σ w S / √(Σ w² V).
    pub fn z(&self, w: &[f64; CELLS]) -> [f64; MESSAGE_BITS] {
        std::array::from_fn(|b| {
            let num: f64 = (0..CELLS).map(|e| w[e] * self.s[b][e]).sum();
            let den: f64 = (0..CELLS).map(|e| w[e] * w[e] * self.v[b][e]).sum();
            num / den.sqrt()
        })
    }

    /// Per-cell z, S / √V.
    pub fn cell_z(&self) -> [[f64; CELLS]; MESSAGE_BITS] {
        std::array::from_fn(|b| std::array::from_fn(|e| self.s[b][e] / self.v[b][e].sqrt()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_split_rows_into_six_groups_and_three_level_classes() {
        assert_eq!(cell_of(0, -0.5), 0);
        assert_eq!(
            cell_of(0, 0.0),
            1,
            "an edge belongs to the class above it (numpy digitize)"
        );
        assert_eq!(cell_of(0, 1.0), 2);
        assert_eq!(cell_of(TILE_ROWS - 1, 5.0) as usize, CELLS - 1);
        // Row r's group is ⌊6r / 89⌋: rows 0..14 group 0, row 15 group 1.
        assert_eq!(cell_of(14, -1.0), 0);
        assert_eq!(cell_of(15, -1.0), 3);
        assert_eq!(cell_of(TILE_ROWS + 15, -1.0), 3, "the row is u mod ROWS");
    }
}
