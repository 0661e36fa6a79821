//! A key's decision over a window of blocks read with the tile channel.
//!
//! Each block's logits ([`block_logits`]) are N(0, 1) per bit without a mark, whatever the audio
//! (no calibration constant). With the masks taken off, Z_b = Σ_k ℓ_kb / √K over the K blocks is
//! N(0, 1) again and S = Σ_b Z_b² follows χ²₃₂ for any payload; S becomes a z-score by
//! Wilson–Hilferty ([`chi_square_z`]). A search over the mask cycle keeps the shift with the
//! largest S and counts every shift it tried in the false-positive rate. The payload is the
//! CRC-aided word of Z, reported only when z clears the calibrated threshold and the word's
//! expected bit errors stay within [`MAX_WORD_ERRORS`]: per bit the Gaussian posterior
//! 1 / (1 + e^{2a|Z_b|}) at the amplitude a² = S/32 − 1 that S estimates.
//!
//! Soft sums rather than the learned channel's sign agreement: the tile channel's logits have a
//! known scale, and the signs throw it away. Synthetic blocks (the test below), shift searched:
//! payloads in 192 of 200 readings at z 0.7 per block over 15 blocks where sign agreement gives
//! 118, and 175 vs 74 at z 1.1 over 5 blocks; no wrong payload either way.

use super::combine::{Matrix, add, gram, others_weights};
use super::{BlockFeature, CellSums, Params, Patterns, block_logits};
use crate::decision::{
    Calibration, Decision, GridBlock, GridIndex, MAX_WORD_ERRORS, chi_square_z, conclude, unmasked,
};
use crate::keys::Key;
use crate::spec::MESSAGE_BITS;

/// One block of a key's window: its grid index and its cell sums.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowBlock {
    pub index: i64,
    pub sums: CellSums,
}

/// Each block's logits (still under its mask), weighted from the window's other blocks.
pub fn window_logits(blocks: &[WindowBlock], params: &Params) -> Vec<GridBlock> {
    let sums: Vec<CellSums> = blocks.iter().map(|b| b.sums.clone()).collect();
    block_logits(&sums, params)
        .iter()
        .zip(blocks)
        .map(|(l, b)| GridBlock {
            index: b.index,
            logits: l.map(|x| x as f32),
        })
        .collect()
}

/// A window that grows one block at a time (Stemmark Detect's running reading), whose logits
/// are kept between looks: [`window_logits`] costs one 18 × 18 eigen-solve per block, so
/// re-weighing every block at every look grows with the square of the session (a look at 5 min
/// with 12 readings took 3 s, longer than the 2 s block it follows). Here a look weighs each new
/// block once, from the blocks there are then, and re-weighs [`Self::REFRESH`] older blocks, those
/// weighed longest ago (below [`Self::ALWAYS`] blocks, all of them). Every block's weights still
/// come from the other blocks only, so its logit keeps the exact null; a block weighed at window
/// size m has `window_logits(&blocks[..m])`'s numbers; the cost of a look is bounded.
#[derive(Debug, Clone, Default)]
pub struct GrowingWindow {
    blocks: Vec<WindowBlock>,
    /// Σ of the blocks' grams, summed in block order (as `rank1_weights` sums them); a block's
    /// own gram is recomputed when it is weighed (a hundredth of the eigen-solve, and no memory).
    total: Matrix,
    logits: Vec<GridBlock>,
    /// Per block: the window size it was last weighed at.
    weighed_on: Vec<usize>,
    /// Where the round of re-weighing older blocks goes on.
    cursor: usize,
}

impl GrowingWindow {
    /// Up to this many blocks every look re-weighs them all (cheap, and early weights settle).
    pub const ALWAYS: usize = 16;
    /// Older blocks re-weighed per look beyond that.
    pub const REFRESH: usize = 3;

    pub fn push(&mut self, block: WindowBlock) {
        add(&mut self.total, &gram(&block.sums), 1.0);
        self.blocks.push(block);
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The window size each block was last weighed at (as of the last look).
    pub fn weighed_on(&self) -> &[usize] {
        &self.weighed_on
    }

    /// Every block's logits (still masked), in push order.
    pub fn logits(&mut self, params: &Params) -> &[GridBlock] {
        let k = self.blocks.len();
        let old = if k <= Self::ALWAYS { 0 } else { self.logits.len() };
        let mut todo: Vec<usize> = (old..k).collect();
        // Round robin over the older blocks, skipping any already weighed at this size.
        for _ in 0..old {
            if todo.len() >= k - old + Self::REFRESH {
                break;
            }
            let j = self.cursor % old;
            self.cursor = j + 1;
            if self.weighed_on[j] < k {
                todo.push(j);
            }
        }
        self.logits.resize(k, GridBlock { index: 0, logits: [0.0; MESSAGE_BITS] });
        self.weighed_on.resize(k, 0);
        for j in todo {
            let b = &self.blocks[j];
            let w = others_weights(&self.total, &gram(&b.sums), k, params);
            self.logits[j] = GridBlock { index: b.index, logits: b.sums.z(&w).map(|x| x as f32) };
            self.weighed_on[j] = k;
        }
        &self.logits
    }
}

/// A key's reading of block features, block i at grid index `blocks[i].0 + shift`: the cell sums
/// use that index's scramble, the logits are weighted from the other blocks (still masked).
pub fn shifted_logits(
    blocks: &[(i64, &BlockFeature)],
    patterns: &Patterns,
    shift: usize,
    params: &Params,
) -> Vec<GridBlock> {
    let window: Vec<WindowBlock> = blocks
        .iter()
        .map(|&(index, f)| WindowBlock {
            index,
            sums: f.cell_sums(patterns, index + shift as i64),
        })
        .collect();
    window_logits(&window, params)
}

/// Decides on a key's window of block features (`blocks`: the reader's grid index and the
/// feature). A search reads the blocks at every shift of the mask cycle — the shift picks both
/// the key's scramble row in the sums and the block mask — and keeps the largest S.
pub fn decide(
    blocks: &[(i64, &BlockFeature)],
    patterns: &Patterns,
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
    params: &Params,
) -> Decision {
    let (shift, s, lined_up) = best_shift_features(blocks, patterns, key, grid, params);
    finish(shift, s, &lined_up, key, cal, grid)
}

/// [`best_shift`] for block features: each shift's logits come from that shift's sums.
pub fn best_shift_features(
    blocks: &[(i64, &BlockFeature)],
    patterns: &Patterns,
    key: &Key,
    grid: GridIndex,
    params: &Params,
) -> (usize, f64, Vec<GridBlock>) {
    let mut best = (0, f64::NEG_INFINITY, Vec::new());
    for shift in 0..grid.hypotheses() {
        let logits = shifted_logits(blocks, patterns, shift, params);
        let u = lined_up(&logits, key, shift);
        let s = chi_square(&combined_z(&u));
        if s > best.1 {
            best = (shift, s, u);
        }
    }
    best
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
/// the grid shift (a search only re-masks them): the Known reading of [`decide`], and synthetic
/// tests. The detector's logits do depend on it: search with [`decide`].
pub fn decide_logits(
    blocks: &[GridBlock],
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
) -> Decision {
    let (shift, s, lined_up) = best_shift(blocks, key, grid);
    finish(shift, s, &lined_up, key, cal, grid)
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::decision::Verdict;
    use crate::payload;

    fn key(i: u8) -> Key {
        Key::from_bytes([i; 16], format!("k{i}"))
    }

    /// Box–Muller.
    fn gauss(rng: &mut ChaCha8Rng) -> f64 {
        let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// n blocks from grid index `first`: ℓ = μ·(the stem's bit under the block's mask) + N(0, 1)
    /// (μ = 0: no mark).
    fn blocks(
        rng: &mut ChaCha8Rng,
        word: u32,
        key: &Key,
        first: i64,
        n: usize,
        mu: f64,
    ) -> Vec<GridBlock> {
        (first..first + n as i64)
            .map(|index| {
                let bits = payload::to_bipolar(payload::block_word(word, key, index));
                GridBlock {
                    index,
                    logits: std::array::from_fn(|i| (mu * bits[i] as f64 + gauss(rng)) as f32),
                }
            })
            .collect()
    }

    #[test]
    fn a_growing_window_weighs_each_block_from_the_others_with_a_bounded_cost() {
        use crate::spec::CELLS;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let params = Params::default();
        // Cell sums of a mark of unequal strength per cell, under unit noise.
        let blocks: Vec<WindowBlock> = (0..40)
            .map(|index| {
                let mut sums = CellSums { s: [[0.0; CELLS]; MESSAGE_BITS], v: [[1.0; CELLS]; MESSAGE_BITS] };
                for row in sums.s.iter_mut() {
                    let bit = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                    for (e, x) in row.iter_mut().enumerate() {
                        *x = bit * 0.05 * (e % 6) as f64 + gauss(&mut rng);
                    }
                }
                WindowBlock { index, sums }
            })
            .collect();
        // Looked at after every block (and twice after the last).
        let mut w = GrowingWindow::default();
        let prefixes: Vec<Vec<GridBlock>> = (1..=blocks.len()).map(|k| window_logits(&blocks[..k], &params)).collect();
        let mut before = Vec::new();
        for k in (1..=blocks.len()).chain([blocks.len()]) {
            if w.len() < k {
                w.push(blocks[k - 1].clone());
            }
            let logits = w.logits(&params).to_vec();
            let on = w.weighed_on().to_vec();
            assert_eq!(logits.len(), k);
            // A block weighed at size m has exactly window_logits(blocks[..m])'s numbers (the
            // same sums in the same order).
            for (j, (l, &m)) in logits.iter().zip(&on).enumerate() {
                assert_eq!(*l, prefixes[m - 1][j], "{k} blocks, block {j} weighed at {m}");
            }
            // Up to ALWAYS blocks: all; beyond, the new block and REFRESH older ones.
            let fresh = (0..k).filter(|&j| before.get(j) != Some(&on[j])).count();
            let bound = if k <= GrowingWindow::ALWAYS { k } else { k - before.len() + GrowingWindow::REFRESH };
            assert!(fresh <= bound && fresh >= bound.min(k), "{k} blocks: {fresh} weighed, {bound} expected");
            before = on;
        }
    }

    #[test]
    fn the_null_is_chi_square_and_never_found() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cal = Calibration::default();
        let (mut zs, mut found) = (Vec::new(), 0);
        for t in 0..4_000 {
            let k = key((t % 200) as u8);
            let b = blocks(&mut rng, 0, &k, t as i64, 15, 0.0);
            let known = decide_logits(&b, &k, &cal, GridIndex::Known);
            zs.push(known.z);
            let searched = decide_logits(&b, &k, &cal, GridIndex::Search);
            found += usize::from(known.verdict == Verdict::Found)
                + usize::from(searched.verdict == Verdict::Found);
        }
        let n = zs.len() as f64;
        let mean = zs.iter().sum::<f64>() / n;
        let std = (zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        println!("null z over {n} readings: mean {mean:.3}, std {std:.3}");
        // 4 000 draws: the mean's standard error is 0.016, the std's 0.011.
        assert!(
            mean.abs() < 0.06 && (std - 1.0).abs() < 0.05,
            "mean {mean}, std {std}"
        );
        assert_eq!(found, 0);
    }

    /// Per block z (μ) and window length: how many of 200 readings give the payload, and that none
    /// gives a wrong one. Printed: the table the payload-code work compares against.
    #[test]
    fn marks_are_found_without_wrong_payloads() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let cal = Calibration::default();
        for (n, mus) in [
            (15usize, [0.4, 0.5, 0.6, 0.7, 0.9]),
            (5, [0.7, 0.9, 1.1, 1.3, 1.6]),
        ] {
            let mut row = Vec::new();
            for mu in mus {
                let (mut right, mut wrong, mut signs) = (0, 0, 0);
                for t in 0..200u32 {
                    let k = key((t % 50) as u8);
                    let p = rng.random_range(0..1u32 << 24);
                    let word = payload::encode(p, &k).unwrap();
                    let b = blocks(&mut rng, word, &k, t as i64 * 3, n, mu);
                    match decide_logits(&b, &k, &cal, GridIndex::Search).payload {
                        Some(q) if q == p => right += 1,
                        Some(_) => wrong += 1,
                        None => {}
                    }
                    signs += usize::from(
                        crate::decision::decide(&b, &k, &cal, GridIndex::Search).payload == Some(p),
                    );
                }
                assert_eq!(wrong, 0, "{n} blocks at z {mu}: {wrong} wrong payloads");
                row.push(format!("z {mu}: {right} ({signs})"));
            }
            println!(
                "{n} blocks, shift searched, of 200 (sign agreement's): {}",
                row.join(", ")
            );
        }
    }

    #[test]
    fn marked_audio_reads_its_payload_and_unmarked_audio_nothing() {
        use super::super::{Patterns, reference, testsignal};
        let params = Params::default();
        let host = testsignal::music(8.0 * 2.0, 41);
        let k = key(9);
        let marked = reference::embed(
            std::slice::from_ref(&host),
            &k,
            payload::encode(0x00_ab_cd, &k).unwrap(),
            &params,
        )
        .unwrap()
        .remove(0);
        let read = |x: &[f32], key: &Key| {
            let features = reference::block_features(x, &params).unwrap();
            let blocks: Vec<(i64, &BlockFeature)> = features
                .iter()
                .enumerate()
                .map(|(i, f)| (i as i64, f))
                .collect();
            decide(
                &blocks,
                &Patterns::from_key(key),
                key,
                &Calibration::default(),
                GridIndex::Search,
                &params,
            )
        };
        let d = read(&marked, &k);
        println!(
            "marked: z {:.1}, shift {}, payload {:?}",
            d.z, d.grid_shift, d.payload
        );
        assert_eq!(
            (d.verdict, d.payload, d.grid_shift),
            (Verdict::Found, Some(0xab_cd), 0)
        );
        // Cut after 3 blocks: the reader's block 0 is the embedder's block 3, whose scramble row
        // and mask the search must find.
        let d = read(&marked[3 * crate::spec::BLOCK..], &k);
        println!(
            "cut: z {:.1}, shift {}, payload {:?}",
            d.z, d.grid_shift, d.payload
        );
        assert_eq!(
            (d.verdict, d.payload, d.grid_shift),
            (Verdict::Found, Some(0xab_cd), 3)
        );
        for (what, x, key) in [("unmarked", &host, &k), ("other key", &marked, &key(10))] {
            let d = read(x, key);
            println!("{what}: z {:.2}", d.z);
            assert_eq!(d.verdict, Verdict::NotFound, "{what}");
        }
    }

    #[test]
    fn unmarked_audio_reads_the_null_with_many_keys() {
        use super::super::{Patterns, reference, testsignal};
        let params = Params::default();
        let secs = 8.0 * 2.0;
        let looped: Vec<f32> = testsignal::music(2.0, 53).repeat(8);
        let hosts = [
            ("noise", testsignal::noise(secs, 0.1, 50)),
            ("music", testsignal::music(secs, 51)),
            ("speech", testsignal::speech(secs, 52)),
            ("looped", looped),
        ];
        let mut zs = Vec::new();
        for (name, host) in &hosts {
            let features = reference::block_features(host, &params).unwrap();
            for i in 0..25u8 {
                let k = key(100 + i);
                let p = Patterns::from_key(&k);
                let blocks: Vec<(i64, &BlockFeature)> = features
                    .iter()
                    .enumerate()
                    .map(|(b, f)| (b as i64, f))
                    .collect();
                let d = decide(
                    &blocks,
                    &p,
                    &k,
                    &Calibration::default(),
                    GridIndex::Known,
                    &params,
                );
                assert_ne!(d.verdict, Verdict::Found, "{name} with key {i}");
                zs.push(d.z);
            }
        }
        let n = zs.len() as f64;
        let mean = zs.iter().sum::<f64>() / n;
        let std = (zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let max = zs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "null z on audio, {n} readings of 8 blocks: mean {mean:.2}, std {std:.2}, max {max:.2}"
        );
        // 100 readings: the mean's standard error is 0.1.
        assert!(mean.abs() < 0.35 && std < 1.35, "mean {mean}, std {std}");
    }

    #[test]
    fn the_payload_is_found_at_its_shift() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let k = key(7);
        let word = payload::encode(0x00_12_34, &k).unwrap();
        // The reader's index 0 is the embedder's block 5.
        let mut b = blocks(&mut rng, word, &k, 5, 10, 1.0);
        b.iter_mut().for_each(|x| x.index -= 5);
        let cal = Calibration::default();
        let d = decide_logits(&b, &k, &cal, GridIndex::Search);
        assert_eq!(
            (d.verdict, d.payload, d.grid_shift),
            (Verdict::Found, Some(0x12_34), 5)
        );
        assert!(
            d.block_agreement.iter().all(|&a| a >= 24),
            "{:?}",
            d.block_agreement
        );
        let none = decide_logits(&[], &k, &cal, GridIndex::Search);
        assert_eq!((none.verdict, none.blocks), (Verdict::NotFound, 0));
    }
}
