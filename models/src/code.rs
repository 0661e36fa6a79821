//! The payload code over the block cycle: a tail-biting convolutional code whose 16 generator
//! polynomials are the 16 rows of the key's block cycle.
//!
//! The info word is the framed, scrambled message of [`crate::payload`] (24 payload bits + CRC-8,
//! XORed with the key's scrambler): 32 bits u_0 … u_31, u_t being bit 31 − t of the word. At
//! trellis step t the encoder's register holds u_t … u_{t−8} (indices mod 32: tail-biting, so
//! the code has no start or end and every block is alike). Block k (cycle row i = k mod 16) sends
//! the 32 outputs of polynomial g_i, c_{i,t} = parity(g_i & reg_t), one per step; channel bit b
//! carries step π_i(b) of a keyed permutation of the steps, and the block's mask is XORed on as
//! before. So any W consecutive blocks form a rate-1/W code of the 32 info bits, a block that is
//! missing or silent is an erasure, and blocks 16 apart repeat their bits (their soft values add).
//!
//! Reading: the blocks' logits (positive = 1), masks taken off and steps put back in order, are
//! summed per row into y_{i,t}; a wrap-around Viterbi (3 laps over the circular trellis, the
//! middle lap's decisions) finds the info word whose code sequence correlates best with y. Its
//! check must hold, and its normalised correlation T = Σ y·(±1 code bits) / √(32·K) over K blocks
//! must clear a threshold. With no mark every logit is N(0, 1), so for any one codeword T is
//! N(0, 1); the decoded word passes the check and scores T only if *some* of the 2²⁴ words whose
//! check holds does, hence P(false payload) ≤ hypotheses · 2²⁴ · Q(T) (a union bound; the
//! prototype measured it tight within 10 % at Q = 1e-4 without the check).
//!
//! The polynomials were chosen by the prototype's search (`channel/cyclecode.py`): constraint
//! length 9, free distance 28–30 over any 5 consecutive blocks, 91–92 over 15.

use crate::keys::Key;
use crate::spec::{CHECK_BITS, MASK_PERIOD, MESSAGE_BITS};

/// What this reader reads and the embedder writes. Format 1 (builds before the code) sent the
/// same word in every block; its marks read here as nothing found, never as a wrong payload (the
/// bound holds for any audio whose logits are N(0, 1) for the code).
pub const PAYLOAD_FORMAT: &str = "stemmark-payload-2 (convolutional K = 9 over the 16-block cycle)";

/// Constraint length: each code bit depends on the current info bit and the 8 before it.
pub const CONSTRAINT: usize = 9;
/// Trellis states (the 8 previous info bits).
const STATES: usize = 1 << (CONSTRAINT - 1);
/// Register values (state and the new bit).
const REGS: usize = 1 << CONSTRAINT;
/// Generator polynomial of each cycle row; bit j multiplies u_{t−j}.
pub const POLYS: [u16; MASK_PERIOD] = [
    0o731, 0o517, 0o537, 0o745, 0o647, 0o637, 0o673, 0o475, 0o513, 0o545, 0o575, 0o633, 0o627, 0o741, 0o535,
    0o735,
];
/// Laps of the wrap-around Viterbi over the circular trellis.
const LAPS: usize = 3;
/// Info words the check lets through: the union bound's count.
const CHECKED_WORDS: f64 = (1u64 << (MESSAGE_BITS - CHECK_BITS)) as f64;

const _: () = assert!(MESSAGE_BITS == 32 && MASK_PERIOD == 16);

/// Info bit t of a word (message order: bit 31 − t of the u32).
fn info_bit(info: u32, t: usize) -> u32 {
    info >> (MESSAGE_BITS - 1 - t) & 1
}

/// The register at step t: bit j is u_{t−j}, indices mod 32.
fn register(info: u32, t: usize) -> usize {
    (0..CONSTRAINT).fold(0, |reg, j| reg | (info_bit(info, (t + MESSAGE_BITS - j) % MESSAGE_BITS) as usize) << j)
}

fn parity(x: usize) -> u32 {
    x.count_ones() & 1
}

/// The 32 code bits of cycle row `row` in step order (step t at bit 31 − t).
pub fn encode_row(info: u32, row: usize) -> u32 {
    let g = POLYS[row % MASK_PERIOD] as usize;
    (0..MESSAGE_BITS).fold(0, |w, t| w << 1 | parity(g & register(info, t)))
}

/// The 32 channel bits grid block `index` carries for `info` (message order, under its mask): what
/// the embedder is given.
pub fn block_word(info: u32, key: &Key, index: i64) -> u32 {
    let row = cycle_row(index);
    let coded = encode_row(info, row);
    let perm = key.code_permutation(index);
    let channel = (0..MESSAGE_BITS).fold(0, |w, b| w << 1 | info_bit(coded, perm[b] as usize));
    channel ^ key.block_mask(index)
}

fn cycle_row(index: i64) -> usize {
    index.rem_euclid(MASK_PERIOD as i64) as usize
}

/// Soft values per cycle row and trellis step (positive = code bit 1), summed over the blocks read.
#[derive(Debug, Clone, PartialEq)]
pub struct Soft {
    pub y: [[f64; MESSAGE_BITS]; MASK_PERIOD],
    /// Blocks summed in.
    pub blocks: usize,
}

impl Default for Soft {
    fn default() -> Self {
        Soft { y: [[0.0; MESSAGE_BITS]; MASK_PERIOD], blocks: 0 }
    }
}

impl Soft {
    /// Adds grid block `index`'s logits (as read, still under its mask and permutation). Blocks
    /// with a non-finite logit are left out (an erasure).
    pub fn add(&mut self, index: i64, logits: &[f32; MESSAGE_BITS], key: &Key) {
        if !logits.iter().all(|x| x.is_finite()) {
            return;
        }
        let row = &mut self.y[cycle_row(index)];
        let mask = key.block_mask(index);
        let perm = key.code_permutation(index);
        for (b, &l) in logits.iter().enumerate() {
            let flip = if info_bit(mask, b) == 1 { -1.0 } else { 1.0 };
            row[perm[b] as usize] += flip * l as f64;
        }
        self.blocks += 1;
    }

    /// Normalised correlation of `info`'s code sequence with the soft values: N(0, 1) for any
    /// fixed word when the logits are N(0, 1); 0 with no blocks.
    pub fn correlation(&self, info: u32) -> f64 {
        if self.blocks == 0 {
            return 0.0;
        }
        let sum: f64 = (0..MASK_PERIOD)
            .filter(|&i| self.y[i].iter().any(|&v| v != 0.0))
            .map(|i| {
                let code = encode_row(info, i);
                self.y[i]
                    .iter()
                    .enumerate()
                    .map(|(t, &v)| if info_bit(code, t) == 1 { v } else { -v })
                    .sum::<f64>()
            })
            .sum();
        sum / ((MESSAGE_BITS * self.blocks) as f64).sqrt()
    }

    /// Whether the rows read determine the info word: the code bits they carry span all 32 info
    /// bits. Any 3 consecutive rows do; a single row, or two, may not (a polynomial of even
    /// weight maps the all-ones word to zero), and then several words share one code sequence and
    /// the check alone would have to pick among them.
    pub fn determined(&self) -> bool {
        let mut basis = [0u32; MESSAGE_BITS];
        let mut rank = 0;
        for i in (0..MASK_PERIOD).filter(|&i| self.y[i].iter().any(|&v| v != 0.0)) {
            for t in 0..MESSAGE_BITS {
                // Code bit (i, t) as a functional of the info bits: u_{t−j} for each tap j.
                let mut v = (0..CONSTRAINT)
                    .filter(|&j| POLYS[i] >> j & 1 == 1)
                    .fold(0u32, |v, j| v | 1 << ((t + MESSAGE_BITS - j) % MESSAGE_BITS));
                for b in (0..MESSAGE_BITS).rev() {
                    if v >> b & 1 == 0 {
                        continue;
                    }
                    if basis[b] == 0 {
                        basis[b] = v;
                        rank += 1;
                        break;
                    }
                    v ^= basis[b];
                }
                if rank == MESSAGE_BITS {
                    return true;
                }
            }
        }
        false
    }

    /// The info word whose code sequence correlates best with the soft values (wrap-around
    /// Viterbi: maximum likelihood for Gaussian noise, up to the tail-biting approximation).
    pub fn viterbi(&self) -> u32 {
        let rows: Vec<usize> = (0..MASK_PERIOD).filter(|&i| self.y[i].iter().any(|&v| v != 0.0)).collect();
        // Branch metric of every register value at every step: Σ over rows of y · (±1 code bit).
        let signs: Vec<[f64; REGS]> = rows
            .iter()
            .map(|&i| std::array::from_fn(|r| if parity(POLYS[i] as usize & r) == 1 { 1.0 } else { -1.0 }))
            .collect();
        let branch: Vec<[f64; REGS]> = (0..MESSAGE_BITS)
            .map(|t| {
                std::array::from_fn(|r| rows.iter().zip(&signs).map(|(&i, s)| self.y[i][t] * s[r]).sum())
            })
            .collect();
        // State s = (u_{t−1} … u_{t−8}), newest in bit 0. Register r = (s << 1 | u_t); the next
        // state is r's low 8 bits and r's bit 8 is the bit that leaves: the predecessor's choice.
        let steps = LAPS * MESSAGE_BITS;
        let mut metric = [0.0f64; STATES];
        let mut choice = vec![[0u8; STATES]; steps];
        for (tt, choice) in choice.iter_mut().enumerate() {
            let bm = &branch[tt % MESSAGE_BITS];
            let next: [f64; STATES] = std::array::from_fn(|s| {
                let (r0, r1) = (s, s | STATES);
                let (m0, m1) = (metric[r0 >> 1] + bm[r0], metric[r1 >> 1] + bm[r1]);
                choice[s] = (m1 > m0) as u8;
                m0.max(m1)
            });
            let top = next.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            metric = next.map(|m| m - top);
        }
        let mut state = (0..STATES).max_by(|&a, &b| metric[a].total_cmp(&metric[b])).expect("states");
        let mut bits = vec![0u32; steps];
        for tt in (0..steps).rev() {
            bits[tt] = (state & 1) as u32;
            state = (state >> 1) | (choice[tt][state] as usize) << (CONSTRAINT - 2);
        }
        // The middle lap: its decisions have a lap of context on both sides.
        bits[MESSAGE_BITS..2 * MESSAGE_BITS].iter().fold(0, |w, &b| w << 1 | b)
    }
}

/// Upper bound on the chance that blocks with no mark (or another key's) decode to a word whose
/// check holds with a correlation of at least `t`, over `hypotheses` readings tried (grid shifts).
pub fn false_payload_bound(t: f64, hypotheses: usize) -> f64 {
    (hypotheses.max(1) as f64 * CHECKED_WORDS * crate::decision::normal_upper_tail(t)).min(1.0)
}

/// Upper bound on the chance that blocks with no mark decode to *any* word (its check not asked)
/// with a correlation of at least `t`: 2⁸ × [`false_payload_bound`]. What "some evidence of a
/// mark" is judged by.
pub fn presence_bound(t: f64, hypotheses: usize) -> f64 {
    (hypotheses.max(1) as f64 * CHECKED_WORDS * (1u64 << CHECK_BITS) as f64 * crate::decision::normal_upper_tail(t)).min(1.0)
}

/// The correlation at which [`presence_bound`] is `p`.
pub fn presence_threshold(p: f64, hypotheses: usize) -> f64 {
    let words = hypotheses.max(1) as f64 * CHECKED_WORDS * (1u64 << CHECK_BITS) as f64;
    crate::decision::normal_upper_quantile((p / words).min(0.5))
}

/// Presence-bound levels a null's tail is checked at (and the scale fitted to).
pub const NULL_LEVELS: [f64; 3] = [1e-1, 1e-2, 1e-3];

/// The smallest scale σ ≥ 1 such that null readings' correlations divided by σ reach each
/// presence-bound level p in [`NULL_LEVELS`] no more often than the bound says (⌊p·n⌋ of n; levels
/// with p·n < 10 are not judged: a handful of readings in the far tail is mostly sampling noise,
/// and the fit would overshoot). The theory (N(0, 1) logits) gives σ = 1; a detector whose null
/// logits spread wider needs σ > 1, and dividing T by it keeps the stated rates.
pub fn fit_null_scale(null_t: &[f64], hypotheses: usize) -> f64 {
    let mut t: Vec<f64> = null_t.iter().copied().filter(|x| x.is_finite()).collect();
    t.sort_by(|a, b| b.total_cmp(a));
    let n = t.len() as f64;
    NULL_LEVELS
        .iter()
        .filter(|&&p| p * n >= 10.0)
        .filter_map(|&p| t.get((p * n).floor() as usize).map(|&x| x / presence_threshold(p, hypotheses)))
        .fold(1.0, f64::max)
}

/// The correlation a decoded word must reach so that [`false_payload_bound`] is `rate`.
pub fn threshold(rate: f64, hypotheses: usize) -> f64 {
    crate::decision::normal_upper_quantile((rate / (hypotheses.max(1) as f64 * CHECKED_WORDS)).min(0.5))
}

/// The keyed step permutations, one per cycle row: channel bit b carries step perm[row][b]. A
/// ChaCha20 stream seeded from the key, Fisher–Yates per row (draws as in
/// [`crate::tile::Patterns`]): spelled out, because a mark made today must stay readable.
pub(crate) fn permutations(seed: [u8; 32]) -> [[u8; MESSAGE_BITS]; MASK_PERIOD] {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;
    let mut rng = ChaCha20Rng::from_seed(seed);
    std::array::from_fn(|_| {
        let mut p: [u8; MESSAGE_BITS] = std::array::from_fn(|i| i as u8);
        for i in (1..MESSAGE_BITS).rev() {
            p.swap(i, crate::tile::patterns::below(&mut rng, i as u32 + 1) as usize);
        }
        p
    })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::payload;

    fn key(i: u8) -> Key {
        Key::from_bytes([i; 16], format!("k{i}"))
    }

    use crate::tile::testsignal::gauss;

    /// Blocks `first..first + n` of `info`'s channel words with logits μ·(±1) + N(0, 1).
    fn soft_of(rng: &mut ChaCha8Rng, info: u32, key: &Key, first: i64, n: usize, mu: f64) -> Soft {
        let mut soft = Soft::default();
        for index in first..first + n as i64 {
            let bits = payload::to_bipolar(block_word(info, key, index));
            let logits = std::array::from_fn(|b| (mu * bits[b] as f64 + gauss(rng)) as f32);
            soft.add(index, &logits, key);
        }
        soft
    }

    #[test]
    fn register_and_rows_follow_the_definition() {
        // u_0 = 1 alone (bit 31): at step t the register holds it at bit t for t < 9, so row i's
        // code bit at step t is bit t of g_i (its impulse response), zero after.
        let info = 1u32 << 31;
        for (i, &g) in POLYS.iter().enumerate() {
            let code = encode_row(info, i);
            for t in 0..MESSAGE_BITS {
                let want = if t < CONSTRAINT { (g as u32 >> t) & 1 } else { 0 };
                assert_eq!(info_bit(code, t), want, "row {i} step {t}");
            }
        }
        // Linear over GF(2), and tail-biting: rotating the info word rotates every row.
        let (a, b) = (0x1234_5678u32, 0x9abc_def0u32);
        for i in 0..MASK_PERIOD {
            assert_eq!(encode_row(a ^ b, i), encode_row(a, i) ^ encode_row(b, i));
            assert_eq!(encode_row(a.rotate_right(3), i), encode_row(a, i).rotate_right(3));
        }
    }

    #[test]
    fn clean_blocks_decode_from_any_window() {
        let k = key(3);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for trial in 0..50 {
            let info = payload::encode(rng.random_range(0..1 << 24), &k).unwrap();
            // Three blocks, five from anywhere in the cycle, a long window across two cycles.
            for (first, n) in [(trial, 3usize), (trial * 7 - 20, 5), (trial, 40)] {
                let soft = soft_of(&mut rng, info, &k, first, n, 8.0);
                assert!(soft.determined());
                assert_eq!(soft.viterbi(), info, "trial {trial}: {n} blocks from {first}");
                let t = soft.correlation(info);
                assert!((t / (8.0 * ((32 * n) as f64).sqrt()) - 1.0).abs() < 0.2, "{t}");
            }
        }
    }

    #[test]
    fn the_fewest_blocks_that_decide() {
        // Eight rows alone span the 32 info bits; two consecutive rows do except rows (0, 1),
        // (3, 4) and (11, 12); three consecutive rows always do (as the rank over GF(2) says).
        let k = key(4);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let alone: Vec<usize> = (0..MASK_PERIOD).filter(|&i| soft_of(&mut rng, 0, &k, i as i64, 1, 1.0).determined()).collect();
        assert_eq!(alone, [2, 5, 6, 8, 9, 10, 13, 15]);
        let pairs: Vec<usize> = (0..MASK_PERIOD).filter(|&i| !soft_of(&mut rng, 0, &k, i as i64, 2, 1.0).determined()).collect();
        assert_eq!(pairs, [0, 3, 11]);
        assert!((0..MASK_PERIOD).all(|i| soft_of(&mut rng, 0, &k, i as i64, 3, 1.0).determined()));
        assert!(!Soft::default().determined());
    }

    #[test]
    fn the_null_scale_is_one_for_the_theory_and_found_when_wider() {
        // 4 000 null readings of 10 blocks with logits N(0, σ²): the fit returns ≈ σ (it is the
        // ratio of an order statistic to a threshold, so a few percent of sampling error), never
        // below 1.
        let k = key(6);
        for (sigma, seed) in [(1.0, 10u64), (1.06, 11)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let ts: Vec<f64> = (0..4_000)
                .map(|_| {
                    let mut soft = Soft::default();
                    for index in 0..10 {
                        let logits = std::array::from_fn(|_| (sigma * gauss(&mut rng)) as f32);
                        soft.add(index, &logits, &k);
                    }
                    soft.correlation(soft.viterbi())
                })
                .collect();
            let fit = fit_null_scale(&ts, 1);
            println!("logits σ {sigma}: fitted scale {fit:.3}");
            assert!(fit >= 1.0 && (fit - sigma).abs() < 0.04, "σ {sigma}: {fit}");
        }
        assert_eq!(fit_null_scale(&[], 1), 1.0);
        assert!((presence_bound(presence_threshold(1e-2, 16), 16) / 1e-2 - 1.0).abs() < 1e-3);
    }

    #[test]
    fn permutations_are_keyed_permutations() {
        let (a, b) = (key(1), key(2));
        for row in 0..MASK_PERIOD as i64 {
            let mut p = *a.code_permutation(row);
            p.sort_unstable();
            assert_eq!(p, std::array::from_fn(|i| i as u8));
        }
        assert_ne!(a.code_permutation(0), b.code_permutation(0));
        assert_ne!(a.code_permutation(0), a.code_permutation(1));
        assert_eq!(a.code_permutation(-3), a.code_permutation(13));
    }

    #[test]
    fn the_null_correlation_stays_under_its_bound() {
        // Unmarked blocks (pure N(0, 1) logits): the decoded word's T against the bound without
        // and with the check. 5 000 readings of 15 blocks: the fraction over τ must not exceed
        // the bound (× 1.5 + 4σ of sampling error), and the bound must not be loose by more than
        // ×4 where it can be seen (it is a union bound over near-orthogonal words).
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let k = key(5);
        let n = 5_000;
        let ts: Vec<(f64, bool)> = (0..n)
            .map(|_| {
                let soft = soft_of(&mut rng, 0, &k, 0, 15, 0.0);
                let info = soft.viterbi();
                (soft.correlation(info), payload::decode(info, &k).is_some())
            })
            .collect();
        for tau in [6.6, 6.8, 7.0] {
            let over = ts.iter().filter(|(t, _)| *t >= tau).count() as f64;
            // Without the check all 2^32 words count.
            let bound = n as f64 * 256.0 * CHECKED_WORDS * crate::decision::normal_upper_tail(tau);
            println!("T ≥ {tau}: {over} of {n} (union bound {bound:.0})");
            assert!(over <= 1.5 * bound + 4.0 * bound.sqrt() && over >= bound / 4.0, "τ {tau}: {over} vs {bound}");
        }
        let passed = ts.iter().filter(|(_, ok)| *ok).count();
        println!("check passed by chance: {passed} of {n}");
        assert!((passed as f64 - n as f64 / 256.0).abs() < 5.0 * (n as f64 / 256.0).sqrt(), "{passed}");
        let tau = threshold(1e-6, 16);
        assert!(ts.iter().all(|&(t, _)| t < tau), "τ {tau}");
        assert!((false_payload_bound(tau, 16) / 1e-6 - 1.0).abs() < 1e-3);
    }
}
