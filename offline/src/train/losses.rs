//! The training losses of the separation-first paper (eq. 2–3): 100·BCE on the bits, the
//! multi-resolution log-magnitude STFT loss (1024, 2048, 512), a multi-scale mel L1, the perceptual
//! terms (NMR in [`crate::train::nmr`], GAN + feature matching in [`discriminator`]), WAKE's
//! wrong-key hinge, and the separator's own L1 to stop-gradient watermarked stems.
//! Audio is `[B, L]` or `[B, C, L]` (channels are treated as items); every loss returns a scalar.

pub mod discriminator;

use crate::train::attacks::dsp;
use anyhow::{Result, ensure};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use tch::{Device, Kind, Reduction, Tensor};

/// Weights of the quality terms, switched at the two-phase schedule's step.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct QualityWeights {
    /// Multi-resolution log-STFT L1 (λ_stft).
    pub stft: f64,
    /// Multi-scale mel L1 (λ_spec).
    pub mel: f64,
    /// Noise-to-mask ratio (part of L_perc).
    pub nmr: f64,
    /// Generator adversarial term (part of L_perc).
    pub gan: f64,
    /// Discriminator feature matching (part of L_perc).
    pub feature_matching: f64,
}

impl Default for QualityWeights {
    /// The second phase: spectral terms raised and the perceptual terms on.
    fn default() -> Self {
        Self {
            stft: 1.0,
            mel: 1.0,
            nmr: 0.1,
            gan: 1.0,
            feature_matching: 2.0,
        }
    }
}

impl QualityWeights {
    /// The first phase: "minimal spectral weighting and no L_perc".
    pub fn bits_first() -> Self {
        Self {
            stft: 0.1,
            mel: 0.1,
            nmr: 0.0,
            gan: 0.0,
            feature_matching: 0.0,
        }
    }
}

/// All loss weights of eq. 2 plus WAKE's hinge, with the paper's two-phase schedule: `early`
/// before `quality_step`, `late` from it on (also through joint training).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LossWeights {
    /// The paper's fixed weight on the bit BCE.
    pub bce: f64,
    /// Weight of the wrong-key hinge.
    pub wrong_key: f64,
    /// The hinge's margin on the wrong-key BCE (ln 2 = chance level).
    pub wrong_key_margin: f64,
    pub early: QualityWeights,
    pub late: QualityWeights,
    /// Step at which the quality weights switch from `early` to `late` (20k in the paper).
    pub quality_step: u64,
}

/// The paper's weight on the BCE term of eq. 2.
pub const BCE_WEIGHT: f64 = 100.0;

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            bce: BCE_WEIGHT,
            wrong_key: 10.0,
            wrong_key_margin: std::f64::consts::LN_2,
            early: QualityWeights::bits_first(),
            late: QualityWeights::default(),
            quality_step: 20_000,
        }
    }
}

impl LossWeights {
    /// The quality weights in force at `step`.
    pub fn quality_at(&self, step: u64) -> QualityWeights {
        if step < self.quality_step {
            self.early
        } else {
            self.late
        }
    }
}

/// Maps targets given as {0, 1} or {−1, +1} to {0, 1}.
pub fn bits01(bits: &Tensor) -> Tensor {
    let b = bits.to_kind(Kind::Float);
    if b.numel() > 0 && b.min().double_value(&[]) < 0.0 {
        (b + 1.0) / 2.0
    } else {
        b
    }
}

/// Mean binary cross-entropy of `logits` `[B, bits]` against `bits` ({0,1} or ±1), with logits.
pub fn bce_bits(logits: &Tensor, bits: &Tensor) -> Result<Tensor> {
    ensure!(
        logits.size() == bits.size(),
        "BCE: logits {:?} vs bits {:?}",
        logits.size(),
        bits.size()
    );
    Ok(logits.f_binary_cross_entropy_with_logits(
        &bits01(bits),
        None::<Tensor>,
        None::<Tensor>,
        Reduction::Mean,
    )?)
}

/// Fraction of bits whose logit sign matches the target (for logging).
pub fn bit_accuracy(logits: &Tensor, bits: &Tensor) -> f64 {
    let pred = logits.gt(0.0).to_kind(Kind::Float);
    pred.eq_tensor(&bits01(bits))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

/// WAKE's wrong-key term: relu(margin − BCE(wrong-key logits, bits)). With margin ln 2 it pushes the
/// wrong key's decoding to chance (≈ 50 % BER) and stops pushing once it is there, so the decoder
/// is not rewarded for confidently inverted bits, which would leak the message.
pub fn wrong_key_hinge(wrong_logits: &Tensor, bits: &Tensor, margin: f64) -> Result<Tensor> {
    Ok((-bce_bits(wrong_logits, bits)? + margin).relu())
}

/// FFT sizes of the paper's multi-resolution STFT loss; hop n/4, Hann.
pub const STFT_SIZES: [i64; 3] = [1024, 2048, 512];
/// Floor inside the logarithms of the spectral losses.
pub const LOG_EPS: f64 = 1e-5;

/// (1/K) Σ_k mean |log(|X_k| + ε) − log(|X̃_k| + ε)| over the resolutions of [`STFT_SIZES`].
/// The reference is a constant (detached); the gradient goes to `marked`.
pub fn stft_loss(reference: &Tensor, marked: &Tensor) -> Result<Tensor> {
    ensure!(
        reference.size() == marked.size(),
        "STFT loss: shapes differ"
    );
    let mut total = Tensor::zeros([], (Kind::Float, marked.device()));
    for n in STFT_SIZES {
        let lx = (dsp::stft(&reference.detach(), n, n / 4)?.abs() + LOG_EPS).log();
        let ly = (dsp::stft(marked, n, n / 4)?.abs() + LOG_EPS).log();
        total += (lx - ly).abs().mean(Kind::Float);
    }
    Ok(total / STFT_SIZES.len() as f64)
}

/// (FFT size, mel bands) of the multi-scale mel loss.
pub const MEL_SCALES: [(i64, i64); 3] = [(512, 40), (1024, 80), (2048, 128)];

/// HTK mel scale: m = 2595·log10(1 + f/700).
pub fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// A mel filterbank `[n_mels, n_fft/2+1]` on the HTK mel scale from 0 Hz to Nyquist: triangles
/// peaking at 1 with no area normalisation (every band weighs the same in an L1 of logs).
pub fn mel_filterbank(n_fft: i64, n_mels: i64) -> Vec<Vec<f64>> {
    let bins = (n_fft / 2 + 1) as usize;
    let top = hz_to_mel(dsp::SR / 2.0);
    let pts: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels as usize)
        .map(|m| {
            let (lo, c, hi) = (pts[m], pts[m + 1], pts[m + 2]);
            (0..bins)
                .map(|k| {
                    let f = k as f64 * dsp::SR / n_fft as f64;
                    ((f - lo) / (c - lo)).min((hi - f) / (hi - c)).max(0.0)
                })
                .collect()
        })
        .collect()
}

/// Mel filterbanks by (FFT size, bands, device).
type MelCache = HashMap<(i64, i64, Device), Tensor>;
static MEL: LazyLock<Mutex<MelCache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The filterbank as a tensor on `device`, built once per (size, bands, device).
fn mel_tensor(n_fft: i64, n_mels: i64, device: Device) -> Result<Tensor> {
    let mut cache = MEL
        .lock()
        .map_err(|_| anyhow::anyhow!("mel cache poisoned"))?;
    let t = cache.entry((n_fft, n_mels, device)).or_insert_with(|| {
        let fb = mel_filterbank(n_fft, n_mels);
        let flat: Vec<f32> = fb.iter().flatten().map(|&v| v as f32).collect();
        Tensor::from_slice(&flat)
            .view([n_mels, n_fft / 2 + 1])
            .to_device(device)
    });
    Ok(t.shallow_clone())
}

/// Log-mel magnitude spectrogram `[..., n_mels, frames]` (hop n/4).
pub fn log_mel(x: &Tensor, n_fft: i64, n_mels: i64) -> Result<Tensor> {
    let fb = mel_tensor(n_fft, n_mels, x.device())?;
    let mag = dsp::stft(x, n_fft, n_fft / 4)?.abs();
    Ok((fb.matmul(&mag) + LOG_EPS).log())
}

/// Mean over [`MEL_SCALES`] of the mean |log-mel(X) − log-mel(X̃)|; reference detached as above.
pub fn mel_loss(reference: &Tensor, marked: &Tensor) -> Result<Tensor> {
    ensure!(reference.size() == marked.size(), "mel loss: shapes differ");
    let mut total = Tensor::zeros([], (Kind::Float, marked.device()));
    for (n, m) in MEL_SCALES {
        total += (log_mel(&reference.detach(), n, m)? - log_mel(marked, n, m)?)
            .abs()
            .mean(Kind::Float);
    }
    Ok(total / MEL_SCALES.len() as f64)
}

/// Eq. 3: Σ over stems of the mean |ŝ − sg(s̃)|, for `estimates` and `targets` `[B, S, ...]`.
/// The targets are detached, so only the separator receives this gradient.
pub fn sep_l1(estimates: &Tensor, targets: &Tensor) -> Result<Tensor> {
    ensure!(
        estimates.size() == targets.size(),
        "separator L1: {:?} vs {:?}",
        estimates.size(),
        targets.size()
    );
    ensure!(estimates.dim() >= 3, "separator L1 needs [B, S, ..., L]");
    let per_stem = (estimates - targets.detach())
        .abs()
        .transpose(0, 1)
        .reshape([estimates.size()[1], -1]);
    Ok(per_stem.mean_dim(1, false, Kind::Float).sum(Kind::Float))
}

/// The values of the quality terms of one step, for logging (0 where the term was off).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QualityLog {
    pub stft: f64,
    pub mel: f64,
    pub nmr: f64,
}

/// λ_stft·L_stft + λ_spec·L_mel + λ_nmr·L_nmr of `marked` against `reference` under `w`; terms
/// with weight 0 are not computed (the bits-first phase skips the NMR model entirely). The GAN and
/// feature-matching terms need the discriminator and are added by the stage.
pub fn quality_loss(
    w: &QualityWeights,
    reference: &Tensor,
    marked: &Tensor,
) -> Result<(Tensor, QualityLog)> {
    let mut total = Tensor::zeros([], (Kind::Float, marked.device()));
    let mut log = QualityLog::default();
    let mut add = |weight: f64, term: &dyn Fn() -> Result<Tensor>, slot: &mut f64| -> Result<()> {
        if weight != 0.0 {
            let t = term()?;
            *slot = t.double_value(&[]);
            total += t * weight;
        }
        Ok(())
    };
    add(w.stft, &|| stft_loss(reference, marked), &mut log.stft)?;
    add(w.mel, &|| mel_loss(reference, marked), &mut log.mel)?;
    add(
        w.nmr,
        &|| crate::train::nmr::nmr_loss(reference, marked),
        &mut log.nmr,
    )?;
    Ok((total, log))
}

/// w.bce·BCE(logits, bits) plus, when wrong-key logits are given, w.wrong_key·hinge; returns the
/// weighted sum and the unweighted BCE.
pub fn bits_loss(
    w: &LossWeights,
    logits: &Tensor,
    bits: &Tensor,
    wrong: Option<&Tensor>,
) -> Result<(Tensor, f64)> {
    let bce = bce_bits(logits, bits)?;
    let value = bce.double_value(&[]);
    let mut total = bce * w.bce;
    if let Some(wl) = wrong {
        total += wrong_key_hinge(wl, bits, w.wrong_key_margin)? * w.wrong_key;
    }
    Ok((total, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::attacks::dsp::{randn, tone};
    use stemmark_models::spec;

    const CPU: Device = Device::Cpu;

    fn val(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn bce_accepts_both_bit_conventions() -> Result<()> {
        let logits = randn(&[4, spec::MESSAGE_BITS as i64], 1, CPU) * 3.0;
        let b01 = logits.gt(0.0).to_kind(Kind::Float);
        let pm1 = &b01 * 2.0 - 1.0;
        let a = val(&bce_bits(&logits, &b01)?);
        assert!((a - val(&bce_bits(&logits, &pm1)?)).abs() < 1e-7);
        // Logits all agreeing with the bits give less than chance; zero logits give exactly ln 2.
        assert!(a < std::f64::consts::LN_2);
        assert!(
            (val(&bce_bits(&logits.zeros_like(), &b01)?) - std::f64::consts::LN_2).abs() < 1e-6
        );
        assert_eq!(bit_accuracy(&logits, &pm1), 1.0, "a count of agreeing signs: exact");
        assert!(bce_bits(&logits, &b01.narrow(1, 0, 3)).is_err());
        Ok(())
    }

    #[test]
    fn weights_follow_the_two_phase_schedule_and_load_from_toml() -> Result<()> {
        let w = LossWeights::default();
        assert_eq!(w.bce, 100.0);
        assert_eq!(w.quality_at(0).nmr, 0.0);
        assert_eq!(w.quality_at(0).gan, 0.0);
        assert!(w.quality_at(w.quality_step).stft > w.quality_at(0).stft);
        assert!(w.quality_at(w.quality_step).nmr > 0.0);
        let t: LossWeights = toml::from_str("quality_step = 500\n[late]\nmel = 5.0\n")?;
        assert_eq!(
            (t.quality_step, t.late.mel, t.bce, t.late.stft),
            (500, 5.0, 100.0, 1.0)
        );
        Ok(())
    }

    #[test]
    fn wrong_key_hinge_stops_at_chance() -> Result<()> {
        let bits = randn(&[8, 32], 2, CPU).gt(0.0).to_kind(Kind::Float);
        let confident = (&bits * 2.0 - 1.0) * 4.0; // wrong key still decodes: penalised
        let chance = bits.zeros_like(); // 50 %: no penalty
        let inverted = -&confident; // anti-correlated: BCE ≫ ln 2, no penalty either
        let m = std::f64::consts::LN_2;
        assert!(val(&wrong_key_hinge(&confident, &bits, m)?) > 0.6);
        assert!(val(&wrong_key_hinge(&chance, &bits, m)?).abs() < 1e-6);
        // Exact by design: the hinge's relu clamps a negative margin to exactly 0.
        assert_eq!(val(&wrong_key_hinge(&inverted, &bits, m)?), 0.0);
        // Its gradient pushes confident wrong-key logits toward zero.
        let l = confident.set_requires_grad(true);
        wrong_key_hinge(&l, &bits, m)?.backward();
        assert!(val(&(l.grad() * l.sign()).sum(Kind::Float)) > 0.0);
        Ok(())
    }

    #[test]
    fn stft_loss_is_zero_for_equal_and_grows_with_distortion() -> Result<()> {
        let x = (tone(440.0, 0.3, 22_050, CPU) + randn(&[22_050], 3, CPU) * 0.01).unsqueeze(0);
        // Equal inputs give no loss. Each side takes its own FFT, which a CPU's kernels may round
        // differently from call to call; 1e-6 is far below what a 1e-3 distortion scores (`small`).
        assert!(val(&stft_loss(&x, &x)?) < 1e-6);
        let small = val(&stft_loss(&x, &(&x + randn(&[1, 22_050], 4, CPU) * 1e-3))?);
        let large = val(&stft_loss(&x, &(&x + randn(&[1, 22_050], 4, CPU) * 1e-1))?);
        assert!(small > 0.0 && large > 2.0 * small);
        // A gain of g shifts every log-magnitude by ln g (away from the ε floor).
        let g = val(&stft_loss(&x, &(&x * 2.0))?);
        assert!((g - 2f64.ln()).abs() < 0.05, "{g}");
        Ok(())
    }

    #[test]
    fn quality_and_bits_losses_follow_their_weights() -> Result<()> {
        let x = (tone(440.0, 0.3, 22_050, CPU) + randn(&[22_050], 3, CPU) * 0.01).unsqueeze(0);
        let y = (&x + randn(&[1, 22_050], 4, CPU) * 1e-3).set_requires_grad(true);
        let w = LossWeights::default();
        let (early, le) = quality_loss(&w.quality_at(0), &x, &y)?;
        assert_eq!(le.nmr, 0.0);
        assert!(le.stft > 0.0 && le.mel > 0.0);
        assert!((val(&early) - 0.1 * (le.stft + le.mel)).abs() < 1e-5);
        let (late, ll) = quality_loss(&w.quality_at(w.quality_step), &x, &y)?;
        assert!(ll.nmr > 0.0);
        assert!(val(&late) > val(&early));
        late.backward();
        assert!(val(&y.grad().abs().sum(Kind::Float)) > 0.0);

        let bits = randn(&[2, 32], 5, CPU).gt(0.0).to_kind(Kind::Float);
        let logits = randn(&[2, 32], 6, CPU);
        let wrong = (&bits * 2.0 - 1.0) * 5.0;
        let (plain, bce) = bits_loss(&w, &logits, &bits, None)?;
        assert!((val(&plain) - 100.0 * bce).abs() < 1e-3);
        let (with_key, _) = bits_loss(&w, &logits, &bits, Some(&wrong))?;
        assert!(val(&with_key) > val(&plain));
        Ok(())
    }

    #[test]
    fn mel_filterbank_is_htk_triangles() {
        let fb = mel_filterbank(1024, 80);
        assert_eq!((fb.len(), fb[0].len()), (80, 513));
        for row in &fb {
            let peak = row.iter().cloned().fold(0.0, f64::max);
            assert!(peak > 0.3 && peak <= 1.0);
        }
        assert!((hz_to_mel(1000.0) - 1000.0).abs() < 0.5);
    }

    #[test]
    fn mel_loss_and_separator_l1() -> Result<()> {
        let x = (tone(440.0, 0.3, 22_050, CPU) + randn(&[22_050], 3, CPU) * 0.01)
            .view([1, 1, -1])
            .repeat([2, 2, 1]);
        // Equal inputs give no loss, up to the two FFTs' rounding (see the STFT loss's test).
        assert!(val(&mel_loss(&x, &x)?) < 1e-6);
        let y = (&x + randn(&[2, 2, 22_050], 5, CPU) * 0.01).set_requires_grad(true);
        let l = mel_loss(&x, &y)?;
        assert!(val(&l) > 0.0);
        l.backward();
        assert!(val(&y.grad().abs().sum(Kind::Float)) > 0.0);

        // eq. 3: targets get no gradient; estimates do; per-stem means are summed.
        let est = Tensor::ones([2, 2, 2, 100], (Kind::Float, CPU)).set_requires_grad(true);
        let tgt = Tensor::zeros([2, 2, 2, 100], (Kind::Float, CPU)).set_requires_grad(true);
        let l = sep_l1(&est, &tgt)?;
        assert!((val(&l) - 2.0).abs() < 1e-6);
        l.backward();
        assert!(val(&est.grad().abs().sum(Kind::Float)) > 0.0);
        assert!(!tgt.grad().defined() || val(&tgt.grad().abs().sum(Kind::Float)) == 0.0);
        Ok(())
    }
}
