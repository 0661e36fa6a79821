//! Deciding whether a stem carries a mark: soft-combine the detector's logits over blocks, then
//! test the combination against the no-mark hypothesis with a calibrated false-positive rate.
//!
//! Block k of a marked stem carries the stem's word XORed with the key's mask for k mod
//! [`MASK_PERIOD`]; a reading takes the masks off first (for the grid index the caller knows, or
//! for every shift of the cycle when it does not) and keeps the shift that lines up best.
//!
//! The statistic is sign consistency across the mask cycle: the unmasked logits of the blocks in
//! each residue class (index mod the period) are summed, and per bit i, S_i = Σ_c sign(sum_ci)
//! over the n non-empty classes. With no mark, or a mark made with another key, the classes'
//! words are unrelated after unmasking — even when the detector repeats the same misreading in
//! every block, since each class takes a different mask off it — so S_i is a sum of n fair ±1
//! and `T = Σ_i S_i² / n` follows χ² with 32 degrees of freedom (for small n its tail is lighter,
//! so the stated rate is an upper bound). T is mapped to a z-score with the Wilson–Hilferty
//! cube-root transform. A marked stem unmasks to one word in every class: at bit error rate p,
//! T ≈ 32·n·(1−2p)². Calibration on unmarked audio with random keys (measured, stored in the
//! manifest) corrects for whatever is left of a detector's unfairness:
//! `z_cal = (z − null_mean) / null_std`. A payload is reported only when z_cal clears the
//! threshold for the target false-positive rate (per hypothesis: a shift search counts
//! [`MASK_PERIOD`] of them) *and* the CRC holds. The combined word is decoded CRC-aided: if it
//! fails the check, up to two of its four least reliable bits are flipped (11 candidates in all),
//! so a random word passes with probability 11/256 — counted in the stated rate and the threshold.

/// Words tried per decision: the hard word, then flips of 1 or 2 of its 4 weakest bits.
const CANDIDATES: usize = 1 + 4 + 6;
/// A payload is reported only when the combined word is expected to hold at most this many bit
/// errors ([`expected_word_errors`]): a reading can show a mark clearly (many blocks, each a
/// little better than chance) while its majority word is still mostly noise, and the 8-bit check
/// with 11 candidates then passes a wrong word 4 % of the time. The estimate assumes errors that
/// are independent from block to block. Before the block masks they were not (the detector's bias
/// on a host repeated the same wrong bits in every block), and the bound had to be 0.25 to keep
/// wrong payloads out. With the masks that bias lands on different bits in every block, and the
/// estimate holds: shipped models, `stemmark eval --data data/corpus --items 48 --no-codecs`,
/// seeds 0–3, 1 536 readings (stems alone, mixes, separated stems, double marks) — at z over the
/// threshold *without* this gate no payload was wrong, and below 1.0 expected errors the check
/// never even failed (909 readings, all correct; 779 below 0.5, 643 below 0.25; 1.0–2.0: 112
/// correct, 5 failed checks). On synthetic independent errors (the unit test sweeping 6–60 blocks
/// at 10–40 % BER) 1.0 still let 4 of 7 200 readings through with a wrong payload, 0.5 none; 0.5
/// was chosen on seeds 1–2 and held on 0 and 3 (21 % more payloads than 0.25, none wrong).
pub const MAX_WORD_ERRORS: f64 = 0.5;

use crate::keys::Key;
use crate::payload;
use crate::spec::{CHECK_BITS, MASK_PERIOD, MESSAGE_BITS};

const CHECK_SPACE: f64 = (1u32 << CHECK_BITS) as f64;

/// Measured behaviour of the statistic on unmarked audio and wrong keys.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Repetition readers: the null mean of their z. The payload code's reader: 0 (unused).
    pub null_mean: f64,
    /// Repetition readers: the null standard deviation of their z. The payload code's reader:
    /// the scale σ ≥ 1 its correlation T is divided by, so that real null readings reach each
    /// level of the bound no more often than it says ([`crate::code::fit_null_scale`]).
    pub null_std: f64,
    /// False-positive rate the threshold is set for, per key and stem.
    pub target_fpr: f64,
}

impl Default for Calibration {
    /// The theoretical null (fair, independent blocks) at 1e-6 per key and stem.
    fn default() -> Self {
        Calibration { null_mean: 0.0, null_std: 1.0, target_fpr: 1e-6 }
    }
}

impl Calibration {
    /// Threshold on the calibrated z so that P(z_cal ≥ t)·11/256·hypotheses = target, for a
    /// reading that tried `hypotheses` grid shifts (see [`GridIndex::hypotheses`]).
    pub fn threshold(&self, hypotheses: usize) -> f64 {
        let tail = (self.target_fpr * CHECK_SPACE / (CANDIDATES * hypotheses.max(1)) as f64).min(0.5);
        normal_upper_quantile(tail)
    }

    /// Fits mean and standard deviation to statistics measured on unmarked audio / wrong keys.
    pub fn fit(null_z: &[f64], target_fpr: f64) -> Option<Calibration> {
        if null_z.len() < 10 {
            return None;
        }
        let n = null_z.len() as f64;
        let mean = null_z.iter().sum::<f64>() / n;
        let var = null_z.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / (n - 1.0);
        // Never trust a calibration that claims a tighter null than the theory.
        Some(Calibration { null_mean: mean, null_std: var.sqrt().max(1.0), target_fpr })
    }
}

/// One block's detector logits and its index on the reader's block grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridBlock {
    pub index: i64,
    pub logits: [f32; MESSAGE_BITS],
}

impl GridBlock {
    fn finite(&self) -> bool {
        self.logits.iter().all(|x| x.is_finite())
    }
}

/// What the reader knows of its blocks' indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridIndex {
    /// They are the embedder's (a DAW's timeline grid, a file marked from its first sample and
    /// read from the same place).
    Known,
    /// The embedder's index is the reader's plus an unknown shift: every shift of the mask cycle
    /// is tried, and the false-positive rate counts each.
    Search,
}

impl GridIndex {
    pub fn hypotheses(self) -> usize {
        match self {
            GridIndex::Known => 1,
            GridIndex::Search => MASK_PERIOD,
        }
    }
}

/// What the combined evidence says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A payload passed the threshold and the check.
    Found,
    /// Some evidence, not enough to name a payload at the target rate.
    Uncertain,
    /// Nothing beyond chance.
    NotFound,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The payload, only when `verdict` is `Found`.
    pub payload: Option<u32>,
    /// The reading's statistic. Payload code (the tile channel's reader,
    /// [`crate::tile::window`]): the decoded word's correlation T (N(0, 1) for any one word
    /// without a mark; the decoded word is the best of many, so unmarked audio gives about 5).
    /// Repetition readers: the calibrated χ² z (≈ N(0, 1) without a mark).
    pub z: f64,
    /// Bound on the probability that unmarked audio scores at least this high and passes the
    /// check, every hypothesis tried counted.
    pub false_positive_rate: f64,
    /// Blocks that were combined.
    pub blocks: usize,
    /// Shift of the mask cycle that was used (embedder's block index − reader's); 0 when known.
    pub grid_shift: usize,
    /// Per block: its 32 hard bits with the block's mask taken off.
    pub block_words: Vec<u32>,
    /// Per block: how many of its 32 hard bits agree with what the decided word sends there.
    pub block_agreement: Vec<u8>,
    /// A mark of payload format 1 (the same word in every block; Stemmark builds before the
    /// payload code) read with this key, and its payload: reported instead of a payload, so the
    /// stem can be marked again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_format_payload: Option<u32>,
}

/// Sign-consistency z (uncalibrated). Blocks with any non-finite logit are ignored.
pub fn agreement_z(blocks: &[[f32; MESSAGE_BITS]]) -> f64 {
    let good: Vec<&[f32; MESSAGE_BITS]> = blocks.iter().filter(|b| b.iter().all(|x| x.is_finite())).collect();
    let n = good.len();
    if n < 2 {
        return 0.0;
    }
    let t: f64 = (0..MESSAGE_BITS)
        .map(|i| {
            let s: i64 = good.iter().map(|b| sign(b[i]) as i64).sum();
            (s * s) as f64 / n as f64
        })
        .sum();
    chi_square_z(t, MESSAGE_BITS)
}

/// z of `t` under χ² with `k` degrees of freedom, by Wilson–Hilferty: (T/k)^(1/3) is close to
/// N(1 − 2/(9k), 2/(9k)).
pub fn chi_square_z(t: f64, k: usize) -> f64 {
    let k = k as f64;
    let v = 2.0 / (9.0 * k);
    ((t / k).cbrt() - (1.0 - v)) / v.sqrt()
}

/// Expected bit errors of the combined (majority) word: the per-block bit error rate estimated
/// from the sign consistency (E[(S_i/n)²] = (1−2p)² + (1−(1−2p)²)/n), then 32 × the chance that
/// the majority of n blocks is wrong on a bit. 32 when nothing can be said.
pub fn expected_word_errors(blocks: &[[f32; MESSAGE_BITS]]) -> f64 {
    let good: Vec<&[f32; MESSAGE_BITS]> = blocks.iter().filter(|b| b.iter().all(|x| x.is_finite())).collect();
    let n = good.len();
    if n == 0 {
        return MESSAGE_BITS as f64;
    }
    let nf = n as f64;
    let mean_sq: f64 = (0..MESSAGE_BITS)
        .map(|i| {
            let s: i64 = good.iter().map(|b| sign(b[i]) as i64).sum();
            (s as f64 / nf).powi(2)
        })
        .sum::<f64>()
        / MESSAGE_BITS as f64;
    let r2 = if n == 1 { mean_sq } else { ((mean_sq - 1.0 / nf) / (1.0 - 1.0 / nf)).clamp(0.0, 1.0) };
    let p = (1.0 - r2.sqrt()) / 2.0;
    // P(more than half of n wrong) + ½·P(exactly half), by the binomial pmf in log space.
    let ln_pmf = |k: usize| ln_choose(n, k) + k as f64 * p.max(1e-300).ln() + (n - k) as f64 * (1.0 - p).max(1e-300).ln();
    let q: f64 = (0..=n)
        .filter(|&k| 2 * k >= n)
        .map(|k| if 2 * k == n { 0.5 } else { 1.0 } * ln_pmf(k).exp())
        .sum();
    MESSAGE_BITS as f64 * q.min(1.0)
}

fn ln_choose(n: usize, k: usize) -> f64 {
    let lf = |m: usize| (1..=m).map(|i| (i as f64).ln()).sum::<f64>();
    lf(n) - lf(k) - lf(n - k)
}

fn sign(x: f32) -> i32 {
    (x > 0.0) as i32 - (x < 0.0) as i32
}

fn sum<'a>(blocks: impl Iterator<Item = &'a [f32; MESSAGE_BITS]>) -> [f32; MESSAGE_BITS] {
    let mut total = [0f32; MESSAGE_BITS];
    for b in blocks {
        total.iter_mut().zip(b).for_each(|(t, x)| *t += x);
    }
    total
}

/// The blocks' logits with the masks of `key` taken off, for embedder index = reader's + `shift`.
pub fn unmasked(blocks: &[GridBlock], key: &Key, shift: usize) -> Vec<GridBlock> {
    blocks
        .iter()
        .map(|b| GridBlock { index: b.index, logits: payload::unmask(&b.logits, key.block_mask(b.index + shift as i64)) })
        .collect()
}

/// The shift (of those `grid` allows) whose unmasked blocks line up best: the shift, its
/// uncalibrated [`class_z`] and those blocks. Ties go to the smallest shift.
pub fn best_shift(blocks: &[GridBlock], key: &Key, grid: GridIndex) -> (usize, f64, Vec<GridBlock>) {
    let mut best = (0, f64::NEG_INFINITY, Vec::new());
    for shift in 0..grid.hypotheses() {
        let u = unmasked(blocks, key, shift);
        let z = class_z(&u);
        if z > best.1 {
            best = (shift, z, u);
        }
    }
    best
}

/// Sign-consistency z across the mask cycle's residue classes (uncalibrated): the blocks of each
/// class are summed first, so a word that repeats unmasked counts once per class, not per block.
pub fn class_z(blocks: &[GridBlock]) -> f64 {
    let mut classes = [[0f32; MESSAGE_BITS]; MASK_PERIOD];
    let mut used = [false; MASK_PERIOD];
    for b in blocks.iter().filter(|b| b.finite()) {
        let c = b.index.rem_euclid(MASK_PERIOD as i64) as usize;
        used[c] = true;
        classes[c].iter_mut().zip(&b.logits).for_each(|(t, x)| *t += x);
    }
    let sums: Vec<[f32; MESSAGE_BITS]> = (0..MASK_PERIOD).filter(|&c| used[c]).map(|c| classes[c]).collect();
    agreement_z(&sums)
}

/// Combines the detector's per-block logits for one key and decides.
pub fn decide(blocks: &[GridBlock], key: &Key, cal: &Calibration, grid: GridIndex) -> Decision {
    let finite: Vec<GridBlock> = blocks.iter().filter(|b| b.finite()).copied().collect();
    let (grid_shift, raw_z, lined_up) = best_shift(&finite, key, grid);
    let logits: Vec<[f32; MESSAGE_BITS]> = lined_up.iter().map(|b| b.logits).collect();
    let readable = expected_word_errors(&logits) <= MAX_WORD_ERRORS;
    conclude(&logits, raw_z, readable, grid_shift, key, cal, grid)
}

/// The decision for `logits`, a key's blocks with their masks taken off (at `grid_shift`), whose
/// statistic is `raw_z` (uncalibrated) and whose word is `readable` (expected errors within
/// [`MAX_WORD_ERRORS`]): the combined word, CRC-aided, and the verdict at the calibrated rate.
pub(crate) fn conclude(
    logits: &[[f32; MESSAGE_BITS]],
    raw_z: f64,
    readable: bool,
    grid_shift: usize,
    key: &Key,
    cal: &Calibration,
    grid: GridIndex,
) -> Decision {
    let combined = sum(logits.iter());
    let word = payload::from_logits(&combined);
    let z = (raw_z - cal.null_mean) / cal.null_std;
    let fpr = (normal_upper_tail(z) * (CANDIDATES * grid.hypotheses()) as f64 / CHECK_SPACE).min(1.0);
    let decoded = crc_aided(word, &combined, key);
    let threshold = cal.threshold(grid.hypotheses());
    let verdict = match decoded {
        Some(_) if z >= threshold && readable => Verdict::Found,
        _ if z >= threshold.min(3.0) => Verdict::Uncertain,
        _ => Verdict::NotFound,
    };
    // Agreement is measured against the corrected word when the check found one.
    let reference = decoded.and_then(|p| payload::encode(p, key).ok()).unwrap_or(word);
    let block_words: Vec<u32> = logits.iter().map(payload::from_logits).collect();
    let block_agreement = block_words.iter().map(|w| (w ^ reference).count_zeros() as u8).collect();
    Decision {
        verdict,
        payload: decoded.filter(|_| verdict == Verdict::Found),
        z,
        false_positive_rate: fpr,
        blocks: logits.len(),
        grid_shift,
        block_words,
        block_agreement,
        old_format_payload: None,
    }
}

/// The first candidate word (most likely first) whose check holds, unscrambled.
fn crc_aided(word: u32, combined: &[f32; MESSAGE_BITS], key: &Key) -> Option<u32> {
    let mut order: Vec<usize> = (0..MESSAGE_BITS).collect();
    order.sort_by(|&a, &b| combined[a].abs().total_cmp(&combined[b].abs()));
    let mask = |i: usize| 1u32 << (MESSAGE_BITS - 1 - order[i]);
    let weak: [u32; 4] = std::array::from_fn(mask);
    let mut flips: Vec<(f32, u32)> = vec![(0.0, 0)];
    for a in 0..4 {
        flips.push((combined[order[a]].abs(), weak[a]));
        for b in a + 1..4 {
            flips.push((combined[order[a]].abs() + combined[order[b]].abs(), weak[a] | weak[b]));
        }
    }
    debug_assert_eq!(flips.len(), CANDIDATES);
    flips.sort_by(|a, b| a.0.total_cmp(&b.0));
    flips.iter().find_map(|&(_, f)| payload::decode(word ^ f, key))
}

/// P(N(0,1) ≥ z).
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// z with P(N(0,1) ≥ z) = p, by bisection on the tail (monotone; 60 steps reach f64 precision).
pub fn normal_upper_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_upper_tail(mid) > p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7),
/// good far into the tail where 1 − erf would cancel.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// n blocks from grid index 0: the marked stem's word under each block's mask (random words
    /// when unmarked), each bit flipped with probability `ber`, with random confidence.
    fn noisy_blocks(rng: &mut ChaCha8Rng, word: Option<(u32, &Key)>, n: usize, ber: f64) -> Vec<GridBlock> {
        (0..n as i64)
            .map(|index| {
                let w = word.map_or_else(|| rng.random(), |(w, k)| crate::tile::repetition::block_word(w, k, index));
                let bits = payload::to_bipolar(w);
                let logits = std::array::from_fn(|i| {
                    let flip = if rng.random_bool(ber) { -1.0 } else { 1.0 };
                    bits[i] * flip * rng.random_range(0.5f32..4.0)
                });
                GridBlock { index, logits }
            })
            .collect()
    }

    fn words(blocks: &[GridBlock]) -> Vec<[f32; 32]> {
        blocks.iter().map(|b| b.logits).collect()
    }

    #[test]
    fn tail_function_matches_known_values() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_upper_tail(4.753_424) / 1e-6 - 1.0).abs() < 1e-3);
        assert!((normal_upper_quantile(1e-3) - 3.090_232).abs() < 1e-4);
    }

    #[test]
    fn marked_blocks_are_found_even_with_bit_errors() {
        // 32 s at 15 % BER per block: the majority word is expected to hold ~0.03 errors.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let key = Key::from_bytes([7; 16], "k");
        let word = payload::encode(123_456, &key).unwrap();
        let d = decide(&noisy_blocks(&mut rng, Some((word, &key)), 16, 0.15), &key, &Calibration::default(), GridIndex::Known);
        assert_eq!(d.verdict, Verdict::Found, "{d:?}");
        assert_eq!(d.payload, Some(123_456));
        assert!(d.false_positive_rate < 1e-9);
        // the wrong key reads the same audio as nothing: its masks do not line the blocks up
        let other = Key::from_bytes([8; 16], "o");
        let d = decide(&noisy_blocks(&mut rng, Some((word, &key)), 16, 0.15), &other, &Calibration::default(), GridIndex::Search);
        assert_eq!(d.verdict, Verdict::NotFound, "{d:?}");
    }

    #[test]
    fn a_clear_but_noisy_mark_reports_no_wrong_payload() {
        // 20 blocks at 33 % BER: the mark is plain (z ≫ threshold) but the majority word keeps
        // ~2.7 wrong bits, which the CRC-aided search would turn into a wrong payload ~4 % of the
        // time. Such readings say Uncertain; at 10 % BER the payload is read.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let key = Key::from_bytes([5; 16], "k");
        let word = payload::encode(654_321, &key).unwrap();
        let cal = Calibration::default();
        let (mut wrong, mut wrong_ungated, mut uncertain) = (0, 0, 0);
        for _ in 0..2000 {
            let blocks = noisy_blocks(&mut rng, Some((word, &key)), 20, 0.33);
            let d = decide(&blocks, &key, &cal, GridIndex::Known);
            wrong += d.payload.is_some_and(|p| p != 654_321) as usize;
            uncertain += (d.verdict == Verdict::Uncertain) as usize;
            let combined = sum(unmasked(&blocks, &key, 0).iter().map(|b| &b.logits));
            let ungated = crc_aided(payload::from_logits(&combined), &combined, &key).filter(|_| d.z >= cal.threshold(1));
            wrong_ungated += ungated.is_some_and(|p| p != 654_321) as usize;
        }
        println!("wrong payloads in 2000 noisy readings: {wrong} (without the word-error gate: {wrong_ungated})");
        assert!(wrong <= 2 && wrong_ungated >= 10, "gated {wrong}, ungated {wrong_ungated}");
        assert!(uncertain > 1900, "the mark itself is plain: {uncertain} of 2000 uncertain");
        let clear = noisy_blocks(&mut rng, Some((word, &key)), 20, 0.10);
        let e = expected_word_errors(&words(&unmasked(&clear, &key, 0)));
        assert!(e < 0.1, "{e}");
        assert_eq!(decide(&clear, &key, &cal, GridIndex::Known).payload, Some(654_321));
    }

    #[test]
    fn no_wrong_payloads_across_block_counts_and_error_rates() {
        // Independent errors (what the block masks give): 300 readings per (blocks, BER) cell
        // from short clips to minutes, weak marks to clear ones. A wrong payload would need a word
        // the check passes by chance; the gate keeps every one of them out of 7 200 readings, while
        // clean cells are read (at least 295 of 300). (At a bound of 1.0,
        // 4 of the 7 200 were wrong.)
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let key = Key::from_bytes([6; 16], "k");
        let word = payload::encode(777_777, &key).unwrap();
        let cal = Calibration::default();
        let (mut wrong, mut total) = (0, 0);
        for n in [6, 10, 20, 60] {
            for ber in [0.1, 0.2, 0.25, 0.3, 0.35, 0.4] {
                let mut right = 0;
                for _ in 0..300 {
                    let d = decide(&noisy_blocks(&mut rng, Some((word, &key)), n, ber), &key, &cal, GridIndex::Known);
                    wrong += d.payload.is_some_and(|p| p != 777_777) as usize;
                    right += (d.payload == Some(777_777)) as usize;
                    total += 1;
                }
                if (n, ber) == (20, 0.1) || (n, ber) == (60, 0.2) {
                    assert!(right >= 295, "{n} blocks at {ber}: {right} of 300 read");
                }
            }
        }
        println!("wrong payloads: {wrong} of {total}");
        assert_eq!(wrong, 0, "{wrong} wrong payloads of {total}");
    }

    #[test]
    fn false_positive_rate_holds_on_unmarked_blocks() {
        // 20 000 unmarked "stems" of 10 blocks each: the empirical rate of z_cal ≥ 3 must match the
        // normal tail within sampling error, and nothing may be Found at the 1e-6 target.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let key = Key::from_bytes([9; 16], "k");
        let cal = Calibration::default();
        let trials = 20_000;
        let (mut over3, mut found) = (0, 0);
        let mut zs = Vec::new();
        for _ in 0..trials {
            let d = decide(&noisy_blocks(&mut rng, None, 10, 0.0), &key, &cal, GridIndex::Known);
            over3 += (d.z >= 3.0) as usize;
            found += (d.verdict == Verdict::Found) as usize;
            zs.push(d.z);
        }
        let expected = normal_upper_tail(3.0) * trials as f64;
        assert!((over3 as f64 - expected).abs() < 4.0 * expected.sqrt() + 2.0, "{over3} vs {expected}");
        assert_eq!(found, 0);
        let fit = Calibration::fit(&zs, 1e-6).unwrap();
        assert!(fit.null_mean.abs() < 0.05 && (fit.null_std - 1.0).abs() < 0.05, "{fit:?}");
    }

    #[test]
    fn a_repeated_misreading_is_not_a_mark() {
        // What another key's mark or a biased detector gives: the same word in every block, here
        // with 20 % of its bits flipped per block, 24 blocks. Read as it comes it is "consistent"
        // (z ≈ 13); with the reading key's masks taken off it is as random as unmarked audio.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let cal = Calibration::default();
        let mut zs = Vec::new();
        for t in 0..2000u32 {
            let key = Key::from_bytes(rand::Rng::random(&mut rng), "k");
            let repeated: u32 = rng.random();
            let blocks: Vec<GridBlock> = (0..24)
                .map(|index| {
                    let bits = payload::to_bipolar(repeated);
                    let logits = std::array::from_fn(|i| bits[i] * if rng.random_bool(0.2) { -1.0 } else { 1.0 } * rng.random_range(0.5f32..4.0));
                    GridBlock { index, logits }
                })
                .collect();
            if t == 0 {
                assert!(agreement_z(&words(&blocks)) > 10.0, "the misreading repeats");
            }
            let d = decide(&blocks, &key, &cal, GridIndex::Known);
            assert_ne!(d.verdict, Verdict::Found);
            zs.push(d.z);
        }
        let fit = Calibration::fit(&zs, 1e-6).unwrap();
        assert!(fit.null_mean.abs() < 0.15 && fit.null_std < 1.15, "{fit:?}");
        let over = zs.iter().filter(|&&z| z >= 3.0).count();
        assert!(over <= 10, "{over} of 2000 over z 3");
    }

    #[test]
    fn an_unknown_grid_start_is_searched_and_counted() {
        // A stem marked from grid block 5 on, read from its first block as index 0.
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let key = Key::from_bytes([4; 16], "k");
        let word = payload::encode(4242, &key).unwrap();
        let mut blocks = noisy_blocks(&mut rng, Some((word, &key)), 21, 0.1);
        blocks.drain(..5);
        blocks.iter_mut().for_each(|b| b.index -= 5);
        let cal = Calibration::default();
        let known = decide(&blocks, &key, &cal, GridIndex::Known);
        assert_eq!(known.verdict, Verdict::NotFound, "at the wrong shift the blocks do not line up: {known:?}");
        let searched = decide(&blocks, &key, &cal, GridIndex::Search);
        assert_eq!((searched.payload, searched.grid_shift), (Some(4242), 5), "{searched:?}");
        assert!(cal.threshold(16) > cal.threshold(1) + 0.5);
        // the stated rate counts the 16 shifts tried
        let alone = normal_upper_tail(searched.z) * CANDIDATES as f64 / CHECK_SPACE;
        assert!((searched.false_positive_rate / alone - 16.0).abs() < 1e-6);
    }

    #[test]
    fn biased_null_is_corrected_by_calibration() {
        // A detector whose bit 0 follows the key's masks (a bias the masks cannot undo) makes raw
        // z drift up; calibration absorbs it.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let key = Key::from_bytes([1; 16], "k");
        let biased = |rng: &mut ChaCha8Rng| {
            let mut b = noisy_blocks(rng, None, 10, 0.0);
            b.iter_mut().for_each(|x| x.logits[0] = if key.block_mask(x.index) >> 31 == 1 { -1.0 } else { 1.0 });
            b
        };
        let zs: Vec<f64> = (0..2000).map(|_| class_z(&unmasked(&biased(&mut rng), &key, 0))).collect();
        let cal = Calibration::fit(&zs, 1e-6).unwrap();
        assert!(cal.null_mean > 0.5, "{cal:?}");
        let d = decide(&biased(&mut rng), &key, &cal, GridIndex::Known);
        assert!(d.z.abs() < 4.0);
    }

    #[test]
    fn degenerate_inputs_are_not_found() {
        let key = Key::from_bytes([1; 16], "k");
        let cal = Calibration::default();
        let at = |logits: [f32; 32], n: i64| (0..n).map(|index| GridBlock { index, logits }).collect::<Vec<_>>();
        for grid in [GridIndex::Known, GridIndex::Search] {
            assert_eq!(decide(&[], &key, &cal, grid).verdict, Verdict::NotFound);
            assert_eq!(decide(&at([1.0; 32], 1), &key, &cal, grid).verdict, Verdict::NotFound);
            assert_eq!(decide(&at([f32::NAN; 32], 5), &key, &cal, grid).verdict, Verdict::NotFound);
            assert_eq!(decide(&at([0.0; 32], 5), &key, &cal, grid).verdict, Verdict::NotFound);
        }
    }
}
