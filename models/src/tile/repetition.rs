//! Payload format 1: every block carries the same word under its mask (a repetition code), read
//! by soft sums. With the masks taken off, Z_b = Σ_k ℓ_kb / √K over the K blocks is N(0, 1) per bit
//! without a mark and S = Σ_b Z_b² follows χ²₃₂ (mapped to z by Wilson–Hilferty); the payload is
//! the CRC-aided word of Z, reported only when z clears the threshold and the word's expected bit
//! errors stay within [`MAX_WORD_ERRORS`] (per bit the Gaussian posterior 1 / (1 + e^{2a|Z_b|}) at
//! the amplitude a² = S/32 − 1 that S estimates). Replaced by the payload code
//! ([`crate::code`]); kept for `stemmark bench`'s side-by-side table and to recognise old marks.

use crate::decision::{
    Calibration, Decision, GridBlock, GridIndex, MAX_WORD_ERRORS, chi_square_z, conclude, unmasked,
};
use crate::keys::Key;
use crate::spec::MESSAGE_BITS;

/// The word grid block `index` carries in format 1: the stem's word under that block's mask.
pub fn block_word(word: u32, key: &Key, index: i64) -> u32 {
    word ^ key.block_mask(index)
}

/// Z per bit: the unmasked logits summed over blocks, over √K.
fn combined_z(blocks: &[GridBlock]) -> [f64; MESSAGE_BITS] {
    let k = (blocks.len() as f64).sqrt().max(1.0);
    std::array::from_fn(|i| blocks.iter().map(|b| b.logits[i] as f64).sum::<f64>() / k)
}

fn chi_square(z: &[f64; MESSAGE_BITS]) -> f64 {
    z.iter().map(|x| x * x).sum()
}

/// Expected bit errors of the hard word of `z`, at the amplitude S estimates.
pub fn expected_errors(z: &[f64; MESSAGE_BITS]) -> f64 {
    let a = (chi_square(z) / MESSAGE_BITS as f64 - 1.0).max(0.0).sqrt();
    z.iter()
        .map(|x| 1.0 / (1.0 + (2.0 * a * x.abs()).exp()))
        .sum()
}

/// The shift (of those `grid` allows) whose unmasked blocks give the largest S: the shift, S and
/// those blocks (finite ones only). Ties go to the smallest shift.
pub fn best_shift(
    blocks: &[GridBlock],
    key: &Key,
    grid: GridIndex,
) -> (usize, f64, Vec<GridBlock>) {
    let mut best = (0, f64::NEG_INFINITY, Vec::new());
    for shift in 0..grid.hypotheses() {
        let u = lined_up(blocks, key, shift);
        let s = chi_square(&combined_z(&u));
        if s > best.1 {
            best = (shift, s, u);
        }
    }
    best
}

/// The finite blocks with the masks for embedder index = reader's + `shift` taken off.
fn lined_up(blocks: &[GridBlock], key: &Key, shift: usize) -> Vec<GridBlock> {
    let finite: Vec<GridBlock> = blocks
        .iter()
        .filter(|b| b.logits.iter().all(|x| x.is_finite()))
        .copied()
        .collect();
    unmasked(&finite, key, shift)
}

/// A decision from per-block logits that are N(0, 1) per bit without a mark and do not depend on
/// the grid shift (a search only re-masks them).
pub fn decide_logits(
    blocks: &[GridBlock],
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
) -> Decision {
    let (shift, s, lined_up) = best_shift(blocks, key, grid);
    finish(shift, s, &lined_up, key, cal, grid)
}

/// S of the blocks (still masked) read at `shift`: χ²₃₂ without a mark; ≈ 32·K·(1 + a²) for a
/// format-1 mark of amplitude a per bit, ≈ 32·(1 + a²) for a coded one (its bits differ from
/// block to block, so they do not add up).
pub fn chi_square_at(blocks: &[GridBlock], key: &Key, shift: usize) -> f64 {
    chi_square(&combined_z(&lined_up(blocks, key, shift)))
}

/// The format-1 decision on blocks (still masked) read at `shift`.
pub fn decide_at(blocks: &[GridBlock], key: &Key, shift: usize, cal: &Calibration, grid: GridIndex) -> Decision {
    let u = lined_up(blocks, key, shift);
    let s = chi_square(&combined_z(&u));
    finish(shift, s, &u, key, cal, grid)
}

fn finish(
    shift: usize,
    s: f64,
    lined_up: &[GridBlock],
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
) -> Decision {
    let z = combined_z(lined_up);
    // No blocks: nothing beyond chance (S = 32 is χ²₃₂'s mean).
    let raw_z = if lined_up.is_empty() {
        chi_square_z(MESSAGE_BITS as f64, MESSAGE_BITS)
    } else {
        chi_square_z(s, MESSAGE_BITS)
    };
    let readable = expected_errors(&z) <= MAX_WORD_ERRORS;
    let logits: Vec<[f32; MESSAGE_BITS]> = lined_up.iter().map(|b| b.logits).collect();
    conclude(&logits, raw_z, readable, shift, key, cal, grid)
}

