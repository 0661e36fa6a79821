//! The embed rule: one block's mask from its mid magnitude, the message and the key's patterns.

use ndarray::{Array2, ArrayView2};

use super::feature::{self, TILES};
use super::{Params, Patterns, TileError, median};
use crate::spec::{
    BINS, FRAMES_PER_BLOCK, MESSAGE_BITS, TILE_BAND, TILE_BINS, TILE_FRAMES, TILE_ROWS,
};

/// The ln gain of every tile (index c·ROWS + r) for `message` (±1 per bit, already under the
/// block's mask) in grid block `block`. Every value lies within ±`params.cell_cap`.
pub fn tile_gains(
    mag: ArrayView2<f32>,
    message: &[f32; MESSAGE_BITS],
    patterns: &Patterns,
    block: i64,
    params: &Params,
) -> Result<Vec<f64>, TileError> {
    feature::check_block(mag)?;
    let t = feature::tile_levels(mag, params);
    let med = median(&mut t.clone());
    let (lo, hi) = params.level_shape_clip;
    let signs = patterns.block_signs(block);
    let mut g = vec![0.0f64; TILES];
    for (unit, (&bit, &sign)) in patterns.unit_bit().iter().zip(&signs).enumerate() {
        let (j, r) = (unit / TILE_ROWS, unit % TILE_ROWS);
        let a = sign as f64 * message[bit as usize] as f64 * params.alpha;
        for (c, pair_sign) in [(2 * j, 1.0), (2 * j + 1, -1.0)] {
            let i = c * TILE_ROWS + r;
            g[i] = pair_sign * a * (params.level_exponent * (t[i] - med)).exp().clamp(lo, hi);
        }
    }
    let scale = power_scale(mag, &g, params);
    let cap = params.cell_cap;
    g.iter_mut()
        .for_each(|x| *x = (*x * scale).clamp(-cap, cap));
    Ok(g)
}

/// The scale a ∈ `scale_range` (bisection on ln a) at which the capped mark's energy
/// Σ_tiles P (e^{clip(a G)} − 1)² reaches the block's energy `mark_to_host_db` lower, taking the
/// lower end so the target is never exceeded. On silence it ends at the top of the range: there
/// is nothing to mark and the mask multiplies zeros.
fn power_scale(mag: ArrayView2<f32>, g: &[f64], params: &Params) -> f64 {
    let mut tile_power = vec![0.0f64; TILES];
    for (bi, row) in mag
        .slice(ndarray::s![TILE_BAND, ..])
        .outer_iter()
        .enumerate()
    {
        let r = bi / TILE_BINS;
        for (f, &x) in row.iter().enumerate() {
            tile_power[(f / TILE_FRAMES) * TILE_ROWS + r] += (x as f64) * (x as f64);
        }
    }
    let block_power: f64 = mag.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() + 1e-20;
    let goal = block_power * 10f64.powf(-params.mark_to_host_db / 10.0);
    let cap = params.cell_cap;
    let energy = |a: f64| -> f64 {
        tile_power
            .iter()
            .zip(g)
            .map(|(p, x)| p * (a * x).clamp(-cap, cap).exp_m1().powi(2))
            .sum()
    };
    let (mut lo, mut hi) = (params.scale_range.0.ln(), params.scale_range.1.ln());
    for _ in 0..params.scale_steps {
        let mid = 0.5 * (lo + hi);
        if energy(mid.exp()) > goal {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    lo.exp()
}

/// The mask `[BINS, FRAMES_PER_BLOCK]`: e^gain on each tile's cells, 1 outside the band.
pub fn mask(gains: &[f64]) -> Array2<f32> {
    let mut m = Array2::<f32>::ones((BINS, FRAMES_PER_BLOCK));
    for (bi, mut row) in m
        .slice_mut(ndarray::s![TILE_BAND, ..])
        .outer_iter_mut()
        .enumerate()
    {
        let r = bi / TILE_BINS;
        for (f, x) in row.iter_mut().enumerate() {
            *x = gains[(f / TILE_FRAMES) * TILE_ROWS + r].exp() as f32;
        }
    }
    m
}
