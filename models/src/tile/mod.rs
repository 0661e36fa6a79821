//! The keyed tile channel: what the embedder writes and what the detector reads, as a plain Rust
//! reference (nothing trained). The geometry is in [`crate::spec`] (`TILE_*`, `CELL*`); the
//! constants a training run may later learn are [`Params`].
//!
//! - **Mark.** A multiplicative log-gain on tiles of the STFT magnitude (2 frames × 3 bins inside
//!   0.52–12 kHz), computed from the mid and applied to each channel's magnitude with its own
//!   phase. Two time-adjacent tiles of one row form a unit with opposite signs; the key deals the
//!   units evenly to the 32 bits, band by band, and signs them ([`Patterns`]). In block k every
//!   unit's sign is also flipped by the key's scramble row k mod 16, so audio that repeats with
//!   the block period does not add up to a mark.
//! - **Feature** ([`feature`]). Tile level T = mean of ln max(|X|, floor) over the tile's cells
//!   (floor 70 dB below the block's band RMS: digital silence must not make huge log jumps), and
//!   its time high-pass H = T − ½ (left + right neighbour): the host is nearly the same 11 ms
//!   earlier and later, the mark is not.
//! - **Embed** ([`embed`]). Gain σ·m_b·α·clip(e^{p(T − median T)}, ¼, 3) (quieter tiles get a
//!   relatively larger mark), one scale per block so the mark sits a fixed ratio below the
//!   block's energy, then a cap of ±0.16 ln per cell (every written cell ≥ 15 dB below its host).
//!   The mask depends only on ratios, so a gain change before or after marking changes nothing.
//! - **Detect** ([`detect`]). H scaled per row by a robust noise estimate, weighted by level,
//!   clipped, correlated with the key's unit signs: per bit and per cell (band group × level
//!   class) a sum S and its null variance V from the block's own second moments.
//! - **Combine** ([`combine`]). A block's logit per bit is Σ_e w_e S / √(Σ_e w_e² V), with cell
//!   weights estimated from the *other* blocks of the window only (rank-1: every cell of one
//!   block and bit carries the same unknown sign), so without a mark each logit is N(0, 1) with no
//!   calibration constant, whatever the payload code.
//!
//! Measured as a numpy prototype before it became the product's channel; the parity test holds
//! this code to that prototype on the product's own patterns.

pub mod combine;
pub mod detect;
pub mod embed;
pub mod feature;
pub mod joint;
pub mod models;
pub mod patterns;
pub mod reference;
pub mod repetition;
pub mod window;

#[cfg(test)]
mod parity;

pub use combine::{block_logits, rank1_weights};
pub use detect::{BlockFeature, CellSums};
pub use models::{TileDetectorModel, TileEmbedderModel};
pub use patterns::Patterns;

/// The channel's constants: the values measured best by the prototype. A training run may learn
/// them; the geometry ([`crate::spec`]) is fixed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Mark amplitude before shaping and power control (ln gain).
    pub alpha: f64,
    /// Level shaping exponent p: tile gain × e^{p (T − median T)}; negative favours quiet tiles.
    pub level_exponent: f64,
    /// Bounds of the level shaping factor.
    pub level_shape_clip: (f64, f64),
    /// The mark's energy this many dB below the block's energy (all bins), before the cap.
    pub mark_to_host_db: f64,
    /// Range of the per-block power-control scale.
    pub scale_range: (f64, f64),
    /// Bisection steps of the power control (each halves the scale's log interval).
    pub scale_steps: usize,
    /// Largest |ln gain| written in any cell: e^0.16 − 1 ≈ 17 % ⇒ ≥ 15 dB below the host.
    pub cell_cap: f64,
    /// Feature floor relative to the block's band RMS, dB.
    pub floor_db: f64,
    /// Detector: per-tile values are clipped to ± this many robust standard deviations.
    pub detector_clip: f64,
    /// Detector: tiles louder than their row's median count more, e^{this · (T − median_row T)} …
    pub level_weight: f64,
    /// … within these bounds.
    pub level_weight_clip: (f64, f64),
    /// Combination: weight floor added to every cell's estimated strength (ε in √(μ² + ε²)).
    pub weight_floor: f64,
    /// Combination: iterations of the rank-1 estimate.
    pub rank1_iterations: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            alpha: 0.25,
            level_exponent: -0.25,
            level_shape_clip: (0.25, 3.0),
            mark_to_host_db: 24.5,
            scale_range: (0.25, 4.0),
            scale_steps: 10,
            cell_cap: 0.16,
            floor_db: -70.0,
            detector_clip: 2.0,
            level_weight: 0.5,
            level_weight_clip: (0.2, 5.0),
            weight_floor: 0.05,
            rank1_iterations: 15,
        }
    }
}

/// Why a block cannot be marked or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TileError {
    #[error("a block's magnitude must be [{bins}, {frames}] (bins × frames), got {got:?}")]
    Shape {
        bins: usize,
        frames: usize,
        got: (usize, usize),
    },
    #[error("the block's magnitude holds NaN or infinite values")]
    NonFinite,
    #[error("a detector model returned an unusable feature: {0}")]
    Feature(String),
}

/// Median as numpy takes it (the mean of the two middle values for an even count). Reorders `v`.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    assert!(n > 0, "median of nothing");
    let (_, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    0.5 * (lo + hi)
}

pub mod testsignal;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_matches_numpy_for_odd_and_even_counts() {
        // Exact by design: the middle value, or the mean of two exactly representable values.
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0]), 5.0);
    }
}
