//! A key's decision over a window of blocks read with the tile channel.
//!
//! Each block's logits ([`block_logits`]) are N(0, 1) per bit without a mark, whatever the audio
//! (no calibration constant). The payload code ([`crate::code`]) reads them: masks off, steps
//! back in order, summed per cycle row, Viterbi; the decoded word's correlation T and the union
//! bound over the words the check lets through give the false-payload rate. A search over the
//! cycle keeps the shift with the largest T and counts every shift it tried.
//!
//! Payload format 1 (every block the same word) is read by [`super::repetition`], kept for the
//! bench's side-by-side table and to name old marks.

use super::combine::{Matrix, add, gram, others_weights};
use super::{BlockFeature, CellSums, Params, Patterns, block_logits, repetition};
use crate::code::{self, Soft};
use crate::decision::{Calibration, Decision, GridBlock, GridIndex, Verdict};
use crate::keys::Key;
use crate::payload;
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
/// feature) with the payload code ([`crate::code`]). A search reads the blocks at every shift of
/// the cycle — the shift picks the key's scramble row in the sums, the block mask, the code row
/// and its step order — and keeps the shift whose decoded word correlates best (each shift
/// tried is charged to the false-payload bound).
pub fn decide(
    blocks: &[(i64, &BlockFeature)],
    patterns: &Patterns,
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
    params: &Params,
) -> Decision {
    let found = best_shift_features(blocks, patterns, key, grid, params);
    found.decide(key, cal, grid, 1)
}

/// What a shift search over block features keeps.
#[derive(Debug, Clone)]
pub struct ShiftSearch {
    /// The shift whose decoded word correlates best, that correlation T and its logits (masked).
    pub shift: usize,
    pub t: f64,
    pub logits: Vec<GridBlock>,
    /// The shift with the largest payload-format-1 statistic S, S and its logits.
    pub format1: (usize, f64, Vec<GridBlock>),
}

impl ShiftSearch {
    /// The decision at the kept shift, one of `candidates` readings of this key that are all
    /// charged to its false-positive rate ([`super::joint`]; 1 for a path read on its own).
    pub fn decide(&self, key: &Key, cal: &Calibration, grid: GridIndex, candidates: usize) -> Decision {
        let (old_shift, _, old_logits) = &self.format1;
        let old = old_format(old_logits, key, *old_shift, self.t, cal, grid);
        finish(self.shift, &self.logits, key, cal, grid.hypotheses() * candidates.max(1), old)
    }
}

/// [`best_shift`] for block features: each shift's logits come from that shift's sums (the
/// costly part, shared by the payload code's reading and format 1's).
pub fn best_shift_features(
    blocks: &[(i64, &BlockFeature)],
    patterns: &Patterns,
    key: &Key,
    grid: GridIndex,
    params: &Params,
) -> ShiftSearch {
    search((0..grid.hypotheses()).map(|shift| shifted_logits(blocks, patterns, shift, params)), key)
}

/// The shift search over each shift's logits (`logits_by_shift`: shift 0, 1, …).
pub fn search(logits_by_shift: impl IntoIterator<Item = Vec<GridBlock>>, key: &Key) -> ShiftSearch {
    let mut best = ShiftSearch { shift: 0, t: f64::NEG_INFINITY, logits: Vec::new(), format1: (0, f64::NEG_INFINITY, Vec::new()) };
    for (shift, logits) in logits_by_shift.into_iter().enumerate() {
        let t = decoded(&logits, key, shift).2;
        let s = repetition::chi_square_at(&logits, key, shift);
        if s > best.format1.1 {
            best.format1 = (shift, s, logits.clone());
        }
        if t > best.t {
            (best.shift, best.t, best.logits) = (shift, t, logits);
        }
    }
    best
}

/// The payload of a payload-format-1 mark (the same word in every block, written by builds
/// before the code) in blocks read at `shift`, when format 1 explains them better than the code
/// does (√S over the code's T: a format-1 mark of amplitude a gives √S ≈ a·√(32K) and T ≈ 5·√(1+a²),
/// a coded mark the reverse) and its reader names a payload. Such a mark must not be read by the
/// code: its logits are far from N(0, 1) for it, and the bound would not hold.
fn old_format(blocks: &[GridBlock], key: &Key, shift: usize, t: f64, cal: &Calibration, grid: GridIndex) -> Option<u32> {
    let s = repetition::chi_square_at(blocks, key, shift);
    (s.sqrt() > t).then(|| repetition::decide_at(blocks, key, shift, cal, grid).payload).flatten()
}

/// The soft values of `blocks` read as embedder index = reader's + `shift`, the word the code
/// decodes from them, and its correlation T.
fn decoded(blocks: &[GridBlock], key: &Key, shift: usize) -> (Soft, u32, f64) {
    let mut soft = Soft::default();
    blocks.iter().for_each(|b| soft.add(b.index + shift as i64, &b.logits, key));
    let info = soft.viterbi();
    let t = soft.correlation(info);
    (soft, info, t)
}

/// The shift (of those `grid` allows) whose decoded word correlates best, and that correlation.
/// Ties go to the smallest shift.
pub fn best_shift(blocks: &[GridBlock], key: &Key, grid: GridIndex) -> (usize, f64) {
    let mut best = (0, f64::NEG_INFINITY);
    for shift in 0..grid.hypotheses() {
        let t = decoded(blocks, key, shift).2;
        if t > best.1 {
            best = (shift, t);
        }
    }
    best
}

/// A decision from per-block logits that are N(0, 1) per bit without a mark and do not depend on
/// the grid shift (a search only re-reads them): the Known reading of [`decide`], Stemmark
/// Detect's running decision, and synthetic tests. The detector's logits do depend on the shift:
/// search with [`decide`].
pub fn decide_logits(blocks: &[GridBlock], key: &Key, cal: &Calibration, grid: GridIndex) -> Decision {
    let (shift, t) = best_shift(blocks, key, grid);
    let (old_shift, ..) = repetition::best_shift(blocks, key, grid);
    let old = old_format(blocks, key, old_shift, t, cal, grid);
    finish(shift, blocks, key, cal, grid.hypotheses(), old)
}

/// A reading that names no payload says Uncertain when its [`code::presence_bound`] is at most
/// this: some evidence of a mark, not enough for the target rate (about 1 in 1 000 unmarked
/// readings says so; the bound is within a factor 0.6–0.8 of the measured rate).
pub const UNCERTAIN_RATE: f64 = 1e-3;

/// The decision at `shift`: the decoded word's payload when the blocks determine it, its check
/// holds and the false-payload bound at its correlation is within the target rate. `z` is that
/// correlation T (N(0, 1) for any one word without a mark; the decoded word is the best of many,
/// so unmarked audio scores 5–6 over 15 blocks), divided by the calibration's scale σ (1 in
/// theory; `stemmark calibrate` fits it to real null readings). `hypotheses`: every reading tried
/// for this key (grid shifts × candidate paths), all charged to the bound.
fn finish(shift: usize, blocks: &[GridBlock], key: &Key, cal: &Calibration, hypotheses: usize, old_format: Option<u32>) -> Decision {
    let finite: Vec<GridBlock> = blocks.iter().filter(|b| b.logits.iter().all(|x| x.is_finite())).copied().collect();
    let (soft, info, raw) = decoded(&finite, key, shift);
    // The calibration's scale: the measured null's spread beyond N(0, 1), if any.
    let t = raw / cal.null_std.max(1.0);
    let bound = code::false_payload_bound(t, hypotheses);
    let decoded = if soft.determined() && old_format.is_none() { payload::decode(info, key) } else { None };
    let verdict = match decoded {
        _ if old_format.is_some() => Verdict::NotFound,
        Some(_) if bound <= cal.target_fpr => Verdict::Found,
        _ if code::presence_bound(t, hypotheses) <= UNCERTAIN_RATE => Verdict::Uncertain,
        _ => Verdict::NotFound,
    };
    // Per block: its hard channel bits with the mask off, and how many agree with what the
    // decoded word sends there.
    let (block_words, block_agreement) = finite
        .iter()
        .map(|b| {
            let index = b.index + shift as i64;
            let word = payload::from_logits(&b.logits) ^ key.block_mask(index);
            let sent = code::block_word(info, key, index) ^ key.block_mask(index);
            (word, (word ^ sent).count_zeros() as u8)
        })
        .unzip();
    Decision {
        verdict,
        payload: decoded.filter(|_| verdict == Verdict::Found),
        z: t,
        false_positive_rate: bound,
        blocks: finite.len(),
        grid_shift: shift,
        block_words,
        block_agreement,
        old_format_payload: old_format,
    }
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

    use crate::tile::testsignal::gauss;

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
    fn the_null_stays_under_its_bounds_and_is_never_found() {
        // Unmarked blocks, known grid and searched: no payload, and the readings whose presence
        // bound falls to p happen at most about p of the time (the bound is a union bound).
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cal = Calibration::default();
        let n = 2_000;
        let (mut found, mut checked) = (0, 0);
        let mut presence = Vec::new();
        for t in 0..n {
            let k = key((t % 200) as u8);
            let b = blocks(&mut rng, 0, &k, t as i64, 15, 0.0);
            for grid in [GridIndex::Known, GridIndex::Search] {
                let d = decide_logits(&b, &k, &cal, grid);
                found += usize::from(d.verdict == Verdict::Found);
                presence.push(code::presence_bound(d.z, grid.hypotheses()));
                // The reported rate is the check-aided bound at z.
                assert!((d.false_positive_rate - code::false_payload_bound(d.z, grid.hypotheses())).abs() < 1e-12);
            }
            let (shift, _) = best_shift(&b, &k, GridIndex::Known);
            checked += usize::from(payload::decode(decoded(&b, &k, shift).1, &k).is_some());
        }
        assert_eq!(found, 0);
        let readings = presence.len() as f64;
        for p in [0.3, 0.1, 0.03] {
            let under = presence.iter().filter(|&&x| x <= p).count() as f64;
            println!("presence bound ≤ {p}: {under} of {readings}");
            assert!(under <= 1.5 * p * readings + 4.0 * (p * readings).sqrt(), "{under} readings at ≤ {p}");
        }
        // The decoded word of noise passes the check 1 time in 256.
        let expected = n as f64 / 256.0;
        assert!((checked as f64 - expected).abs() < 5.0 * expected.sqrt(), "{checked} passed the check");
    }

    /// Per block z (μ) and window length: how many of 200 readings give the payload, and that none
    /// gives a wrong one (the decision's view of `code`'s own test).
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
                let (mut right, mut wrong) = (0, 0);
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
                }
                assert_eq!(wrong, 0, "{n} blocks at z {mu}: {wrong} wrong payloads");
                row.push(format!("z {mu}: {right}"));
            }
            println!(
                "{n} blocks, shift searched, of 200: {}",
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
        assert_eq!(d.old_format_payload, None);
        // A stem marked by an older build (payload format 1: the same word in every block) is
        // named as such, and its word is not read by the code.
        let word = payload::encode(0x00_ab_cd, &k).unwrap();
        let old = reference::embed_messages(
            std::slice::from_ref(&host),
            &k,
            |b| payload::to_bipolar(super::super::repetition::block_word(word, &k, b)),
            &params,
        )
        .unwrap()
        .remove(0);
        let d = read(&old, &k);
        println!("format 1: z {:.1}, old format payload {:?}", d.z, d.old_format_payload);
        assert_eq!((d.verdict, d.payload, d.old_format_payload), (Verdict::NotFound, None, Some(0xab_cd)));
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
        let max = zs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!("null correlation on audio, {n} readings of 8 blocks: mean {mean:.2}, max {max:.2}");
        // The decoded word's T on N(0, 1) logits (synthetic, 8 blocks): mean ≈ 5.1. Audio whose
        // logits were not N(0, 1) would shift it; looped audio would add up.
        let strong = zs.iter().filter(|&&t| code::presence_bound(t, 1) <= 0.01).count();
        assert!((4.5..5.7).contains(&mean) && strong <= 3, "mean {mean}, {strong} with presence bound ≤ 0.01");
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
        // Another key names no payload (these synthetic logits carry the mark whatever the key, so
        // they are not N(0, 1) for it: on audio another key's patterns read noise); a block with a
        // non-finite logit is left out (an erasure).
        assert_eq!(decide_logits(&b, &key(8), &cal, GridIndex::Search).payload, None);
        let mut holed = b.clone();
        holed[2].logits[5] = f32::NAN;
        let d = decide_logits(&holed, &k, &cal, GridIndex::Search);
        assert_eq!((d.payload, d.blocks), (Some(0x12_34), 9));
        let none = decide_logits(&[], &k, &cal, GridIndex::Search);
        assert_eq!((none.verdict, none.blocks), (Verdict::NotFound, 0));
    }
}
