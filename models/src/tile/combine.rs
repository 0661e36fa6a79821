//! Per-block logits from a window of blocks, with cell weights from the other blocks only.
//!
//! Cells differ a lot in how much mark they carry (a narrow-band voice has none above 4 kHz, a
//! quiet cell is marked harder than a loud one), so weighting them by strength gains most of a
//! matched filter. The strength is estimated for block k from the window's *other* blocks: then
//! block k's weights are independent of block k, and without a mark its logit
//! Σ_e w S / √(Σ_e w² V) is still N(0, 1), with no calibration constant.
//!
//! The estimate is rank-1: all cells of one block and bit carry the same unknown sign (the coded
//! bit under the key's mask), so the mean cross-product of two cells' z over blocks and bits has
//! expectation μ_e μ_e' whatever the bits are. μ is the leading eigenvector of that 18 × 18
//! matrix, with its diagonal (which also holds the noise, 1) replaced by the current μ², iterated.
//! On a repeated word it gives the coherent estimate; on coded blocks it still works.

use super::{CellSums, Params};
use crate::spec::{CELLS, MESSAGE_BITS};

pub(crate) type Matrix = [[f64; CELLS]; CELLS];

/// Cell weights for each block of the window (one block alone: all 1).
pub fn rank1_weights(blocks: &[CellSums], params: &Params) -> Vec<[f64; CELLS]> {
    let grams: Vec<Matrix> = blocks.iter().map(gram).collect();
    let mut total = [[0.0f64; CELLS]; CELLS];
    grams.iter().for_each(|g| add(&mut total, g, 1.0));
    grams.iter().map(|g| others_weights(&total, g, blocks.len(), params)).collect()
}

/// One block's Σ_b z_be z_bf over its bits.
pub(crate) fn gram(blk: &CellSums) -> Matrix {
    let z = blk.cell_z();
    std::array::from_fn(|e| std::array::from_fn(|f| z.iter().map(|zb| zb[e] * zb[f]).sum()))
}

/// The weights of the block whose gram is `own`, from the other `k − 1` of the `k` blocks whose
/// grams sum to `total`.
pub(crate) fn others_weights(total: &Matrix, own: &Matrix, k: usize, params: &Params) -> [f64; CELLS] {
    if k < 2 {
        return [1.0; CELLS];
    }
    let norm = 1.0 / (MESSAGE_BITS * (k - 1)) as f64;
    let eps2 = params.weight_floor * params.weight_floor;
    let mut m = [[0.0f64; CELLS]; CELLS];
    add(&mut m, total, norm);
    add(&mut m, own, -norm);
    let mu = leading_profile(&m, params.rank1_iterations);
    std::array::from_fn(|e| (mu[e] * mu[e] + eps2).sqrt())
}

pub(crate) fn add(acc: &mut Matrix, m: &Matrix, factor: f64) {
    acc.iter_mut()
        .flatten()
        .zip(m.iter().flatten())
        .for_each(|(a, b)| *a += factor * b);
}

/// μ ≥ 0 with μ μᵀ ≈ M off the diagonal.
fn leading_profile(m: &Matrix, iterations: usize) -> [f64; CELLS] {
    // Start from the diagonal's excess over the noise (1), plus a little so no cell starts dead.
    let mut mu: [f64; CELLS] = std::array::from_fn(|e| (m[e][e] - 1.0).max(0.0).sqrt() + 1e-3);
    for _ in 0..iterations {
        let mut mp = *m;
        (0..CELLS).for_each(|e| mp[e][e] = mu[e] * mu[e]);
        let (lambda, mut v) = leading_eigen(mp);
        if v.iter().sum::<f64>() < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        let scale = lambda.max(0.0).sqrt();
        mu = std::array::from_fn(|e| v[e].max(0.0) * scale);
    }
    mu
}

/// The largest eigenvalue of a symmetric matrix and its unit eigenvector, by cyclic Jacobi
/// rotations (exact to rounding for a matrix this small; no dependency for an 18 × 18 solve).
fn leading_eigen(mut a: Matrix) -> (f64, [f64; CELLS]) {
    let mut v = [[0.0f64; CELLS]; CELLS];
    (0..CELLS).for_each(|i| v[i][i] = 1.0);
    for _sweep in 0..64 {
        let off: f64 = (0..CELLS)
            .flat_map(|p| (p + 1..CELLS).map(move |q| (p, q)))
            .map(|(p, q)| a[p][q] * a[p][q])
            .sum();
        let diag: f64 = (0..CELLS).map(|p| a[p][p] * a[p][p]).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..CELLS {
            for q in p + 1..CELLS {
                if a[p][q] == 0.0 {
                    continue;
                }
                // Rotation that zeroes a[p][q] (Golub & Van Loan, sym.schur2).
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (ap, aq) = (a[p], a[q]);
                for k in 0..CELLS {
                    a[p][k] = c * ap[k] - s * aq[k];
                    a[q][k] = s * ap[k] + c * aq[k];
                }
                for row in v.iter_mut() {
                    let (vp, vq) = (row[p], row[q]);
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
    }
    let top = (0..CELLS)
        .max_by(|&i, &j| a[i][i].total_cmp(&a[j][j]))
        .expect("cells");
    (a[top][top], std::array::from_fn(|i| v[i][top]))
}

/// Each block's logits per bit (still under its block mask), weighted from the other blocks.
pub fn block_logits(blocks: &[CellSums], params: &Params) -> Vec<[f64; MESSAGE_BITS]> {
    rank1_weights(blocks, params)
        .iter()
        .zip(blocks)
        .map(|(w, b)| b.z(w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_the_leading_eigenpair() {
        // M = 3 x xᵀ + 1 y yᵀ + 0.5 I with orthonormal x, y: leading eigenvalue 3.5, vector ±x.
        let mut x = [0.0f64; CELLS];
        let mut y = [0.0f64; CELLS];
        (0..CELLS).for_each(|i| {
            x[i] = (i as f64 + 1.0).sqrt();
            y[i] = if i % 2 == 0 { 1.0 } else { -1.0 };
        });
        let nx = x.iter().map(|a| a * a).sum::<f64>().sqrt();
        x.iter_mut().for_each(|a| *a /= nx);
        let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        y.iter_mut().zip(&x).for_each(|(b, a)| *b -= dot * a);
        let ny = y.iter().map(|a| a * a).sum::<f64>().sqrt();
        y.iter_mut().for_each(|a| *a /= ny);
        let m: Matrix = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                3.0 * x[i] * x[j] + y[i] * y[j] + if i == j { 0.5 } else { 0.0 }
            })
        });
        let (lambda, v) = leading_eigen(m);
        // Rotations in f64: agreement to ~1e-12, checked at 1e-9.
        assert!((lambda - 3.5).abs() < 1e-9, "{lambda}");
        let align: f64 = v.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!((align.abs() - 1.0).abs() < 1e-9, "{align}");
    }

    #[test]
    fn rank1_recovers_a_cell_profile_whatever_the_bits() {
        // Cell strengths μ_e and random ±1 bits per block: z_be = μ_e·bit + small noise-free
        // structure, so the estimate must return μ (up to the floor).
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mu: [f64; CELLS] = std::array::from_fn(|e| {
            if e % 3 == 0 {
                0.0
            } else {
                0.2 + 0.05 * e as f64
            }
        });
        let blocks: Vec<CellSums> = (0..12)
            .map(|_| {
                let mut s = [[0.0; CELLS]; MESSAGE_BITS];
                for row in s.iter_mut() {
                    let bit = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                    row.iter_mut()
                        .enumerate()
                        .for_each(|(e, x)| *x = bit * mu[e] * 30.0 + rng.random_range(-1.0..1.0));
                }
                CellSums {
                    s,
                    v: [[900.0; CELLS]; MESSAGE_BITS],
                }
            })
            .collect();
        let w = rank1_weights(&blocks, &Params::default());
        for we in &w {
            for e in 0..CELLS {
                let want = (mu[e] * mu[e] + 0.0025).sqrt();
                // Noise of ±1/30 per value over 11 blocks × 32 bits: a few percent.
                assert!(
                    (we[e] - want).abs() < 0.03 + 0.1 * want,
                    "cell {e}: {} vs {want}",
                    we[e]
                );
            }
        }
        assert_eq!(
            rank1_weights(&blocks[..1], &Params::default()),
            vec![[1.0; CELLS]],
            "one block: flat"
        );
    }
}
