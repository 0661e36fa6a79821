//! The three networks (embedder, detector, separator) and their sizes.
//!
//! [`NetConfig`] is plain data (TOML), read by training and by the pure-Rust ONNX export alike;
//! the networks themselves need libtorch (`train` feature). Every weight has a fixed name
//! `<net>.<module path>.<tensor>` (e.g. `embedder.blocks.0.mhsa.qkv.weight`), the same in the
//! checkpoints and in the export, so checkpoints stay loadable across runs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use stemmark_models::spec::{BINS, KEY_DIM, MESSAGE_BITS, STEM_NAMES};

#[cfg(feature = "train")]
pub mod detector;
#[cfg(feature = "train")]
pub mod embedder;
#[cfg(feature = "train")]
pub mod layers;
#[cfg(feature = "train")]
pub mod separator;
#[cfg(feature = "train")]
pub mod spleeter;

#[cfg(all(test, feature = "train"))]
mod net_tests;

/// STFT frames per chip of the time modulation (4 hops = 980 samples ≈ 22 ms).
pub const CHIP_FRAMES: usize = 4;

/// The fixed ±1 chip sequence that modulates the embedder's direct message pattern over time
/// (chip j covers STFT frames `j·CHIP_FRAMES ..`) and that the detector multiplies its band
/// energies by before pooling. A host's own spectrum is nearly the same from one 22 ms chip to
/// the next, so demodulating cancels it while the pattern adds up: at initialisation a
/// correlation decoder read the unmodulated pattern at 53 % blind (82 % knowing the original),
/// far too weak a signal to start training from. Deterministic (xorshift, fixed seed), balanced
/// in every pair of chips (+1 −1 or −1 +1), so any stretch of it has no DC.
pub fn chips(n: usize) -> Vec<f32> {
    let mut state: u64 = 0x5354_454d_4d41_524b; // "STEMMARK"
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let s = if state & 1 == 1 { 1.0 } else { -1.0 };
        out.extend([s, -s]);
    }
    out.truncate(n);
    out
}

/// A fixed ±1 matrix `[KEY_DIM, BINS]` (row-major) that spreads a key vector over the bins:
/// the key's sign of bin b is `sign(key · column b + ½)`. The embedder multiplies its direct
/// pattern by these signs and the detector its demodulated band energies, so a wrong key reads
/// a pattern scrambled in half of the bins (≈ 50 % BER) by construction, not by training.
pub fn key_spread() -> Vec<f32> {
    let mut state: u64 = 0x4b45_5953_5052_4541; // "KEYSPREA"
    (0..KEY_DIM * BINS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state >> 63 == 1 { 1.0 } else { -1.0 }
        })
        .collect()
}

/// The columns of [`key_spread`] for the given bins: `[KEY_DIM, bins.len()]`, row-major.
pub fn key_spread_bins(bins: &[usize]) -> Vec<f32> {
    let all = key_spread();
    (0..KEY_DIM).flat_map(|r| bins.iter().map(move |&b| (r, b))).map(|(r, b)| all[r * BINS + b]).collect()
}

/// The chip of each of `frames` STFT frames.
pub fn frame_chips(frames: usize) -> Vec<f32> {
    let c = chips(frames.div_ceil(CHIP_FRAMES));
    (0..frames).map(|t| c[t / CHIP_FRAMES]).collect()
}

/// Sizes of the embedder (Conformer on the STFT magnitude).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    pub d_model: usize,
    pub heads: usize,
    /// Hidden width of each half feed-forward module.
    pub ff_dim: usize,
    /// Depthwise convolution kernel of the convolution module (odd).
    pub conv_kernel: usize,
    pub blocks: usize,
    /// Hidden width of the FiLM MLP on [message, key].
    pub film_hidden: usize,
    /// The mask stays within 1 ± mask_bound (mask = 1 + b·tanh(·)).
    pub mask_bound: f32,
    /// A direct linear path from the message bits to a per-bin mask offset, modulated over time
    /// by [`chips`] (bit i adds ± its own learned spread-spectrum pattern, sign-flipped chip by
    /// chip, before the tanh), initialised so the bits sum to unit spread. It gives the detector
    /// a message pattern it can read from the first step; the FiLM path alone is far too weak
    /// (training stayed at chance without it).
    #[serde(default)]
    pub direct: bool,
    /// Multiply the direct pattern by the key's bin signs ([`key_spread`]).
    #[serde(default)]
    pub keyed: bool,
}

/// Sizes of the detector (strided Conv1d stack on the waveform).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// A learned filterbank in front of the convolutions (none: they start on the waveform).
    #[serde(default)]
    pub front: Option<DetectorFront>,
    /// Output channels of each strided convolution.
    pub channels: Vec<usize>,
    pub kernel: usize,
    pub stride: usize,
    /// Hidden width of the FiLM MLP on the key.
    pub film_hidden: usize,
}

/// The detector's front end: one strided convolution with `2·bands` outputs read as `bands`
/// (re, im) pairs, whose log energy `ln(re² + im² + ε)` feeds the convolution stack. Long kernels
/// resolve the fine spectral patterns the embedder's STFT-domain mask writes, which a stack of
/// short waveform kernels can only approximate after many steps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorFront {
    pub bands: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Multiply the band energies by the chip sequence before the convolutions (pairs with the
    /// embedder's `direct` path; needs `stride` = CHIP_FRAMES hops so frames and chips align).
    #[serde(default)]
    pub demodulate: bool,
    /// Multiply the pooled band energies by the key's bin signs ([`key_spread`]), undoing the
    /// embedder's keyed pattern for the right key only.
    #[serde(default)]
    pub keyed: bool,
    /// Initialisation: band i starts as the Hann-windowed DFT pair of the embedder's STFT bin
    /// `first_bin + i·bin_step`, so from step one the detector reads the bins the mask writes.
    #[serde(default = "default_first_bin")]
    pub first_bin: usize,
    #[serde(default = "default_bin_step")]
    pub bin_step: usize,
}

fn default_first_bin() -> usize {
    24
}

fn default_bin_step() -> usize {
    2
}

/// Sizes of the separator (Demucs-style time-domain U-Net).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeparatorConfig {
    /// Channels of the first encoder layer; layer i has `channels · growth^i`.
    pub channels: usize,
    pub growth: usize,
    pub depth: usize,
    pub kernel: usize,
    pub stride: usize,
    pub lstm_layers: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub embedder: EmbedderConfig,
    pub detector: DetectorConfig,
    pub separator: SeparatorConfig,
}

impl Default for NetConfig {
    /// Sizes meant for the runtime budgets (CPU, one thread: embedder incl. STFT ≤ 10 ms and
    /// detector ≤ 5 ms per 2 s block, separator ≤ 150 ms per 2 s). Measured with random weights on
    /// a shared 2-core machine, one core (`export::cost`, steady state): embedder net 3.5–5.7 ms +
    /// STFT/iSTFT 3.6–5.9 ms, detector 2.2–3.6 ms, separator 41–47 ms per 2 s; `stemmark bench`
    /// (cold, 20 s): embed 12 ms and separate 70–78 ms per 2 s. 10.8 MB of f32 weights.
    fn default() -> Self {
        NetConfig {
            embedder: EmbedderConfig {
                // Attention over the block's 360 frames dominates: heads and blocks cost most.
                d_model: 64,
                heads: 2,
                ff_dim: 128,
                conv_kernel: 15,
                blocks: 2,
                film_hidden: 96,
                mask_bound: 0.2,
                direct: true,
                keyed: true,
            },
            detector: DetectorConfig {
                // A DFT-initialised filterbank on 128 bins, chip-demodulated and pooled, then a
                // key-FiLMed 1×1 layer (an MLP over the pooled bands) and the head.
                front: Some(DetectorFront { bands: 128, kernel: 1024, stride: 980, demodulate: true, keyed: true, first_bin: 24, bin_step: 2 }),
                channels: vec![256],
                kernel: 1,
                stride: 1,
                film_hidden: 96,
            },
            separator: SeparatorConfig {
                channels: 24,
                growth: 2,
                depth: 4,
                kernel: 8,
                stride: 4,
                lstm_layers: 2,
            },
        }
    }
}

impl NetConfig {
    /// Very small nets for CPU tests.
    pub fn tiny() -> Self {
        NetConfig {
            embedder: EmbedderConfig {
                d_model: 16,
                heads: 2,
                ff_dim: 32,
                conv_kernel: 5,
                blocks: 1,
                film_hidden: 16,
                mask_bound: 0.2,
                direct: true,
                keyed: true,
            },
            detector: DetectorConfig {
                front: Some(DetectorFront { bands: 16, kernel: 1024, stride: 980, demodulate: true, keyed: true, first_bin: 24, bin_step: 2 }),
                channels: vec![32],
                kernel: 1,
                stride: 1,
                film_hidden: 8,
            },
            separator: SeparatorConfig {
                channels: 4,
                growth: 2,
                depth: 2,
                kernel: 8,
                stride: 4,
                lstm_layers: 1,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        let e = &self.embedder;
        ensure!(
            e.d_model > 0 && e.heads > 0 && e.d_model.is_multiple_of(e.heads),
            "embedder: d_model must be a positive multiple of heads"
        );
        ensure!(e.conv_kernel % 2 == 1, "embedder: conv_kernel must be odd");
        ensure!(
            e.mask_bound > 0.0 && e.mask_bound < 1.0,
            "embedder: mask_bound must lie in (0, 1)"
        );
        let d = &self.detector;
        ensure!(
            !d.channels.is_empty(),
            "detector: needs at least one convolution"
        );
        ensure!(
            d.kernel >= d.stride && (d.kernel - d.stride).is_multiple_of(2),
            "detector: kernel − stride must be even and ≥ 0"
        );
        if let Some(f) = &d.front {
            ensure!(!f.keyed || f.demodulate, "detector.front: keyed needs demodulate");
            ensure!(
                !f.demodulate || f.stride == CHIP_FRAMES * stemmark_models::spec::HOP,
                "detector.front: demodulation needs stride = {} (one chip)",
                CHIP_FRAMES * stemmark_models::spec::HOP
            );
            ensure!(
                f.first_bin + f.bin_step * f.bands.saturating_sub(1) < BINS,
                "detector.front: bins first_bin + bin_step·(bands − 1) must lie below {BINS}"
            );
            ensure!(
                f.bands > 0 && f.kernel >= f.stride && f.stride > 0 && (f.kernel - f.stride).is_multiple_of(2),
                "detector.front: bands > 0, kernel ≥ stride > 0 and kernel − stride even"
            );
        }
        let s = &self.separator;
        ensure!(
            s.depth > 0 && s.channels > 0 && s.growth > 0 && s.lstm_layers > 0,
            "separator: depth, channels, growth and lstm_layers must be positive"
        );
        ensure!(
            s.kernel >= s.stride && (s.kernel - s.stride).is_multiple_of(2),
            "separator: kernel − stride must be even and ≥ 0"
        );
        Ok(())
    }

    pub fn load(path: &Path) -> Result<NetConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let c: NetConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a network config", path.display()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, toml::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl NetConfig {
    /// The name and shape of every weight of the three nets, as training stores them: the export
    /// checks a checkpoint against this before building graphs from it.
    pub fn weight_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let mut w = BTreeMap::new();
        let mut put = |name: String, shape: &[usize]| {
            w.insert(name, shape.to_vec());
        };
        // A PyTorch linear layer (`[out, in]` weight) and a LayerNorm.
        let lin = |put: &mut dyn FnMut(String, &[usize]), name: &str, i: usize, o: usize| {
            put(format!("{name}.weight"), &[o, i]);
            put(format!("{name}.bias"), &[o]);
        };
        let ln = |put: &mut dyn FnMut(String, &[usize]), name: &str, d: usize| {
            put(format!("{name}.weight"), &[d]);
            put(format!("{name}.bias"), &[d]);
        };
        let e = &self.embedder;
        let (d, h) = (e.d_model, e.film_hidden);
        lin(&mut put, "embedder.in_proj", BINS, d);
        lin(&mut put, "embedder.film_mlp", MESSAGE_BITS + KEY_DIM, h);
        lin(&mut put, "embedder.out_proj", d, BINS);
        if e.direct {
            lin(&mut put, "embedder.direct", MESSAGE_BITS, BINS);
        }
        for i in 0..e.blocks {
            let b = format!("embedder.blocks.{i}");
            for m in ["ffn1", "mhsa", "conv", "ffn2"] {
                ln(&mut put, &format!("{b}.{m}.ln"), d);
                lin(&mut put, &format!("{b}.{m}.film.head"), h, 2 * d);
            }
            for m in ["ffn1", "ffn2"] {
                lin(&mut put, &format!("{b}.{m}.fc1"), d, e.ff_dim);
                lin(&mut put, &format!("{b}.{m}.fc2"), e.ff_dim, d);
            }
            lin(&mut put, &format!("{b}.mhsa.qkv"), d, 3 * d);
            lin(&mut put, &format!("{b}.mhsa.out"), d, d);
            lin(&mut put, &format!("{b}.conv.pw1"), d, 2 * d);
            put(format!("{b}.conv.dw.weight"), &[d, 1, e.conv_kernel]);
            put(format!("{b}.conv.dw.bias"), &[d]);
            ln(&mut put, &format!("{b}.conv.ln2"), d);
            lin(&mut put, &format!("{b}.conv.pw2"), d, d);
            ln(&mut put, &format!("{b}.ln"), d);
        }
        let dt = &self.detector;
        lin(&mut put, "detector.film_mlp", KEY_DIM, dt.film_hidden);
        let mut cin = 1;
        if let Some(f) = &dt.front {
            put("detector.front.weight".into(), &[2 * f.bands, 1, f.kernel]);
            put("detector.front.bias".into(), &[2 * f.bands]);
            lin(&mut put, "detector.front.film.head", dt.film_hidden, 2 * f.bands);
            cin = f.bands;
        }
        for (i, &c) in dt.channels.iter().enumerate() {
            put(format!("detector.convs.{i}.weight"), &[c, cin, dt.kernel]);
            put(format!("detector.convs.{i}.bias"), &[c]);
            lin(
                &mut put,
                &format!("detector.convs.{i}.film.head"),
                dt.film_hidden,
                2 * c,
            );
            cin = c;
        }
        lin(&mut put, "detector.head", cin, MESSAGE_BITS);
        let s = &self.separator;
        let mut cin = 2;
        for i in 0..s.depth {
            let ch = s.layer_channels(i);
            let out = if i == 0 { STEM_NAMES.len() * 2 } else { cin };
            put(
                format!("separator.enc.{i}.conv.weight"),
                &[ch, cin, s.kernel],
            );
            put(format!("separator.enc.{i}.conv.bias"), &[ch]);
            for part in ["enc", "dec"] {
                put(format!("separator.{part}.{i}.pw.weight"), &[2 * ch, ch, 1]);
                put(format!("separator.{part}.{i}.pw.bias"), &[2 * ch]);
            }
            put(
                format!("separator.dec.{i}.convtr.weight"),
                &[ch, out, s.kernel],
            );
            put(format!("separator.dec.{i}.convtr.bias"), &[out]);
            cin = ch;
        }
        for l in 0..s.lstm_layers {
            let input = if l == 0 { cin } else { 2 * cin };
            for sfx in ["", "_reverse"] {
                put(
                    format!("separator.lstm.weight_ih_l{l}{sfx}"),
                    &[4 * cin, input],
                );
                put(
                    format!("separator.lstm.weight_hh_l{l}{sfx}"),
                    &[4 * cin, cin],
                );
                put(format!("separator.lstm.bias_ih_l{l}{sfx}"), &[4 * cin]);
                put(format!("separator.lstm.bias_hh_l{l}{sfx}"), &[4 * cin]);
            }
        }
        lin(&mut put, "separator.lstm_out", 2 * cin, cin);
        w
    }
}

impl SeparatorConfig {
    /// Channels of encoder layer `i`.
    pub fn layer_channels(&self, i: usize) -> usize {
        self.channels * self.growth.pow(i as u32)
    }

    /// Inputs are padded to a multiple of this many samples, so every strided layer divides.
    pub fn length_multiple(&self) -> usize {
        self.stride.pow(self.depth as u32)
    }
}

impl DetectorFront {
    /// The STFT bins the bands start on.
    pub fn bins(&self) -> Vec<usize> {
        (0..self.bands).map(|i| self.first_bin + i * self.bin_step).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_through_toml() {
        for c in [NetConfig::default(), NetConfig::tiny()] {
            c.validate().unwrap();
            let back: NetConfig = toml::from_str(&toml::to_string_pretty(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
    }
}
