//! The key's patterns: which bit each unit carries, its sign, and the per-block sign scramble.
//!
//! Drawn from a ChaCha20 stream seeded by HKDF from the key ([`Key::pattern_seed`]), with every
//! draw spelled out here (no library shuffles whose algorithm could change), because a mark made
//! today must be readable by every later version. Order of draws:
//! 1. allocation: units in band order (index i = r·90 + j: row r low to high, column j in time)
//!    are dealt in runs of 32; each run gets a Fisher–Yates permutation of the 32 bits, so every
//!    bit holds the same number of units (±1) in every band;
//! 2. unit signs: one bit of the stream per unit, in unit order (u = j·ROWS + r);
//! 3. scramble: 16 rows (block index mod 16) × one bit per unit.
//!
//! Bits come from `next_u64` least significant first; a bounded draw below n rejects values
//! above the largest multiple of n (unbiased).

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::keys::Key;
use crate::spec::{MASK_PERIOD, MESSAGE_BITS, TILE_ROWS, TILE_UNIT_COLS, TILE_UNITS};

/// A key's patterns, expanded once and shared by every block.
#[derive(Clone, PartialEq)]
pub struct Patterns {
    /// Bit (0..32) carried by unit u.
    unit_bit: Vec<u8>,
    /// Sign (±1) of unit u's first tile; its second tile has the opposite sign.
    unit_sign: Vec<f32>,
    /// Row k: ±1 per unit, multiplied onto the signs in blocks with index ≡ k (mod 16).
    scramble: Vec<Vec<f32>>,
}

impl std::fmt::Debug for Patterns {
    // The patterns are as secret as the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Patterns(..)")
    }
}

/// The stream's bits, one at a time.
struct BitStream {
    rng: ChaCha20Rng,
    word: u64,
    left: u32,
}

impl BitStream {
    fn sign(&mut self) -> f32 {
        if self.left == 0 {
            self.word = self.rng.next_u64();
            self.left = 64;
        }
        let b = self.word & 1;
        self.word >>= 1;
        self.left -= 1;
        if b == 1 { 1.0 } else { -1.0 }
    }
}

/// Uniform in 0..n (n ≥ 1) by rejection.
pub(crate) fn below(rng: &mut ChaCha20Rng, n: u32) -> u32 {
    let zone = u32::MAX - (u32::MAX % n + 1) % n;
    loop {
        let x = rng.next_u32();
        if x <= zone {
            return x % n;
        }
    }
}

impl Patterns {
    pub fn from_key(key: &Key) -> Patterns {
        Self::from_seed(key.pattern_seed())
    }

    fn from_seed(seed: [u8; 32]) -> Patterns {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut unit_bit = vec![0u8; TILE_UNITS];
        let mut run = [0u8; MESSAGE_BITS];
        for start in (0..TILE_UNITS).step_by(MESSAGE_BITS) {
            run.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            for i in (1..MESSAGE_BITS).rev() {
                run.swap(i, below(&mut rng, i as u32 + 1) as usize);
            }
            for (i, &bit) in run.iter().enumerate().take(TILE_UNITS - start) {
                let band_order = start + i;
                let (r, j) = (band_order / TILE_UNIT_COLS, band_order % TILE_UNIT_COLS);
                unit_bit[j * TILE_ROWS + r] = bit;
            }
        }
        let mut bits = BitStream {
            rng,
            word: 0,
            left: 0,
        };
        let unit_sign = (0..TILE_UNITS).map(|_| bits.sign()).collect();
        let scramble = (0..MASK_PERIOD)
            .map(|_| (0..TILE_UNITS).map(|_| bits.sign()).collect())
            .collect();
        Patterns {
            unit_bit,
            unit_sign,
            scramble,
        }
    }

    /// Bit carried by unit `u`.
    pub fn unit_bit(&self) -> &[u8] {
        &self.unit_bit
    }

    /// Sign of every unit's first tile in grid block `block` (key sign × scramble row).
    pub fn block_signs(&self, block: i64) -> Vec<f32> {
        let row = &self.scramble[block.rem_euclid(MASK_PERIOD as i64) as usize];
        self.unit_sign.iter().zip(row).map(|(s, r)| s * r).collect()
    }

    /// The embedder model's `pattern` input for one block: per unit, the sign of its first tile
    /// times the message bit it carries (`message` ±1 per bit, already under the block's mask).
    pub fn embed_pattern(&self, message: &[f32; MESSAGE_BITS], block: i64) -> Vec<f32> {
        let signs = self.block_signs(block);
        signs
            .iter()
            .zip(&self.unit_bit)
            .map(|(s, &b)| s * message[b as usize])
            .collect()
    }

    /// The patterns as plain arrays (bit per unit, sign per unit, scramble rows), for the parity
    /// test against the prototype and for the models' pattern tensors.
    pub fn arrays(&self) -> (&[u8], &[f32], &[Vec<f32>]) {
        (&self.unit_bit, &self.unit_sign, &self.scramble)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Key {
        Key::from_bytes([i; 16], "k")
    }

    #[test]
    fn every_bit_gets_an_equal_share_of_every_band() {
        let p = Patterns::from_key(&key(1));
        let mut per_bit = [0usize; MESSAGE_BITS];
        p.unit_bit.iter().for_each(|&b| per_bit[b as usize] += 1);
        assert!(per_bit.iter().all(|&n| n == 250 || n == 251), "{per_bit:?}");
        // In band order every run of 32 units holds each bit once.
        let band_order: Vec<u8> = (0..TILE_UNITS)
            .map(|i| p.unit_bit[(i % TILE_UNIT_COLS) * TILE_ROWS + i / TILE_UNIT_COLS])
            .collect();
        for run in band_order
            .chunks(MESSAGE_BITS)
            .filter(|r| r.len() == MESSAGE_BITS)
        {
            let mut seen = [false; MESSAGE_BITS];
            run.iter().for_each(|&b| seen[b as usize] = true);
            assert!(seen.iter().all(|&s| s), "a run misses a bit");
        }
    }

    #[test]
    fn patterns_are_keyed_balanced_and_stable() {
        let a = Patterns::from_key(&key(1));
        assert_eq!(a, Patterns::from_key(&key(1)), "same key, same patterns");
        let b = Patterns::from_key(&key(2));
        let same_bit = a
            .unit_bit
            .iter()
            .zip(&b.unit_bit)
            .filter(|(x, y)| x == y)
            .count();
        assert!(
            same_bit < TILE_UNITS / 16,
            "{same_bit} units share their bit across keys"
        );
        let plus = a.unit_sign.iter().filter(|&&s| s > 0.0).count();
        assert!(
            (3_700..4_300).contains(&plus),
            "{plus} of {TILE_UNITS} signs positive"
        );
        for row in &a.scramble {
            let plus = row.iter().filter(|&&s| s > 0.0).count();
            assert!((3_700..4_300).contains(&plus), "{plus}");
        }
        assert_eq!(a.block_signs(-1), a.block_signs(15), "negative blocks wrap");
        assert_ne!(a.block_signs(0), a.block_signs(1));
        // Pinned draws: a change here would make every existing mark unreadable.
        let first: Vec<u8> = a.unit_bit[..8].to_vec();
        assert_eq!(first, PINNED_FIRST_BITS, "the pattern derivation changed");
    }

    #[test]
    fn bounded_draws_are_in_range_and_cover_it() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let mut seen = [0usize; 5];
        (0..1_000).for_each(|_| seen[below(&mut rng, 5) as usize] += 1);
        assert!(seen.iter().all(|&n| (150..250).contains(&n)), "{seen:?}");
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn model_inputs_spell_out_the_same_patterns() {
        let p = Patterns::from_key(&key(3));
        let message: [f32; MESSAGE_BITS] =
            std::array::from_fn(|b| if b % 3 == 0 { -1.0 } else { 1.0 });
        let (signs, pattern) = (p.block_signs(5), p.embed_pattern(&message, 5));
        for u in 0..TILE_UNITS {
            assert_eq!(pattern[u], signs[u] * message[p.unit_bit[u] as usize]);
        }
    }

    const PINNED_FIRST_BITS: [u8; 8] = [30, 18, 1, 4, 11, 15, 2, 18];
}
