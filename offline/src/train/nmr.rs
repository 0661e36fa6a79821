//! Noise-to-mask ratio loss after "Noise-to-mask Ratio Loss for Deep Neural Network based Audio
//! Watermarking" on the FFT ear model of ITU-R BS.1387 (PEAQ basic version, as clarified by Kabal).
//!
//! Reference and marked audio are framed with a Hann STFT and scaled so that a full-scale sine reads
//! the listening level (92 dB SPL). The error is the *complex* difference X̃ − X (the paper's choice,
//! so phase errors count too), weighted by the outer/middle-ear response and grouped into 109
//! critical bands of 0.25 Bark between 80 Hz and 18 kHz: the noise pattern N. The reference's own
//! band energies plus the internal ear noise are spread over frequency with BS.1387's level-dependent
//! slopes, smoothed over time with first-order decay, and lowered by the masking offset: the mask M.
//! The loss is mean over batch, bands and frames of N / M (a power ratio; 10·log10 of it is the
//! "total NMR" in dB).
//!
//! The mask depends on the reference only and is computed without gradient, so the loss is an exact
//! quadratic form in the error: scaling the error by 10 dB multiplies it by 10.

use crate::train::attacks::dsp;
use anyhow::{Result, ensure};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use tch::{Device, Kind, Tensor};

/// Number of critical bands of the FFT ear model (BS.1387, 0.25 Bark from 80 Hz to 18 kHz).
pub const BANDS: usize = 109;
/// Band resolution in Bark.
const RES: f64 = 0.25;
const F_LO: f64 = 80.0;
const F_HI: f64 = 18_000.0;

/// Parameters of the ear model.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NmrConfig {
    /// DFT length (BS.1387 uses 2048 at 48 kHz; 2048 at 44.1 kHz keeps its frequency resolution).
    pub n_fft: i64,
    /// Frame hop (50 % overlap, as BS.1387).
    pub hop: i64,
    /// Sound pressure level (dB SPL) a full-scale sine is assumed to play at; the model's slopes
    /// and the internal noise are level dependent.
    pub listening_level_db: f64,
}

impl Default for NmrConfig {
    fn default() -> Self {
        Self {
            n_fft: 2048,
            hop: 1024,
            listening_level_db: 92.0,
        }
    }
}

/// Bark of a frequency in Hz (BS.1387's Schroeder form).
pub fn hz_to_bark(f: f64) -> f64 {
    7.0 * (f / 650.0).asinh()
}

fn bark_to_hz(z: f64) -> f64 {
    650.0 * (z / 7.0).sinh()
}

/// The outer/middle-ear frequency response of BS.1387 in dB:
/// W(f) = −0.6·3.64·f^−0.8 + 6.5·exp(−0.6·(f − 3.3)²) − 10⁻³·f^3.6, f in kHz.
pub fn outer_ear_db(f_hz: f64) -> f64 {
    if f_hz <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let f = f_hz / 1000.0;
    -0.6 * 3.64 * f.powf(-0.8) + 6.5 * (-0.6 * (f - 3.3).powi(2)).exp() - 1e-3 * f.powf(3.6)
}

/// Lower, centre and upper frequency of each critical band.
pub fn band_edges() -> Vec<(f64, f64, f64)> {
    let z0 = hz_to_bark(F_LO);
    let z_top = hz_to_bark(F_HI);
    (0..BANDS)
        .map(|i| {
            let zl = z0 + i as f64 * RES;
            let fl = bark_to_hz(zl);
            let fc = bark_to_hz(zl + RES / 2.0).min(F_HI);
            let fu = bark_to_hz((zl + RES).min(z_top)).min(F_HI);
            (fl, fc, fu)
        })
        .collect()
}

/// Model constants on one device, built once per (config, device).
struct Tables {
    /// DFT bin → band energy map `[BANDS, F]`, ear weighting and level calibration folded in.
    weighted_map: Tensor,
    /// Internal ear noise per band `[BANDS]`.
    internal_noise: Tensor,
    /// Distances (Bark) below and above each masker: `[k, l]` = relu(l − k)·res, relu(k − l)·res.
    d_low: Tensor,
    d_up: Tensor,
    /// 230 / f_c(l) (Hz) term of the upper slope, `[1, BANDS]` indexed by masker l.
    upper_base: Tensor,
    /// Spreading normaliser B_s(k) for a flat 0 dB pattern, `[BANDS]`.
    norm: Tensor,
    /// Time smoothing coefficient per band, `[BANDS]`.
    decay: Vec<f64>,
    /// Masking offset as a linear divisor per band, `[BANDS]`.
    offset: Tensor,
}

type Key = (i64, i64, u64, Device);
static TABLES: LazyLock<Mutex<HashMap<Key, Tables>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The DFT-to-band matrix of BS.1387: each bin [k − ½, k + ½]·Δf gives each band the fraction of
/// its width that lies inside the band, so a bin within 80 Hz–18 kHz distributes exactly its energy.
pub fn band_matrix(n_fft: i64) -> Vec<Vec<f64>> {
    let bins = (n_fft / 2 + 1) as usize;
    let df = dsp::SR / n_fft as f64;
    band_edges()
        .iter()
        .map(|&(fl, _, fu)| {
            (0..bins)
                .map(|k| {
                    let (lo, hi) = ((k as f64 - 0.5) * df, (k as f64 + 0.5) * df);
                    ((hi.min(fu) - lo.max(fl)) / df).max(0.0)
                })
                .collect()
        })
        .collect()
}

fn build(cfg: &NmrConfig, device: Device) -> Tables {
    let bins = (cfg.n_fft / 2 + 1) as usize;
    let df = dsp::SR / cfg.n_fft as f64;
    // A full-scale sine on a bin gives |X| = Σw/2 = N/4 with the periodic Hann window.
    let scale2 = 10f64.powf(cfg.listening_level_db / 10.0) / (cfg.n_fft as f64 / 4.0).powi(2);
    let map = band_matrix(cfg.n_fft);
    let mut flat = Vec::with_capacity(BANDS * bins);
    for row in &map {
        for (k, u) in row.iter().enumerate() {
            let w = 10f64.powf(outer_ear_db(k as f64 * df) / 10.0);
            flat.push((u * w * scale2) as f32);
        }
    }
    let edges = band_edges();
    let fc: Vec<f64> = edges.iter().map(|e| e.1).collect();
    let f32s =
        |v: Vec<f64>| Tensor::from_slice(&v.into_iter().map(|x| x as f32).collect::<Vec<_>>());
    let internal: Vec<f64> = fc
        .iter()
        .map(|f| 10f64.powf(0.4 * 0.364 * (f / 1000.0).powf(-0.8)))
        .collect();
    let mut low = Vec::with_capacity(BANDS * BANDS);
    let mut up = Vec::with_capacity(BANDS * BANDS);
    for k in 0..BANDS {
        for l in 0..BANDS {
            low.push(if l > k { (l - k) as f64 * RES } else { 0.0 });
            up.push(if k > l { (k - l) as f64 * RES } else { 0.0 });
        }
    }
    let upper_base: Vec<f64> = fc.iter().map(|f| 230.0 / f).collect();
    let decay = fc
        .iter()
        .map(|f| {
            let tau = 0.008 + 100.0 / f * (0.030 - 0.008);
            (-(cfg.hop as f64) / (dsp::SR * tau)).exp()
        })
        .collect();
    let offset: Vec<f64> = (0..BANDS)
        .map(|k| {
            let db = if (k as f64) <= 12.0 / RES {
                3.0
            } else {
                0.25 * k as f64 * RES
            };
            10f64.powf(db / 10.0)
        })
        .collect();
    let d_low = f32s(low)
        .view([BANDS as i64, BANDS as i64])
        .to_device(device);
    let d_up = f32s(up)
        .view([BANDS as i64, BANDS as i64])
        .to_device(device);
    let upper_base = f32s(upper_base).view([1, BANDS as i64]).to_device(device);
    // B_s: the spreading of a flat 0 dB pattern, to undo the spreading's gain.
    let zero_db = Tensor::zeros([1, BANDS as i64], (Kind::Float, device));
    let norm = spread_raw(&zero_db, &d_low, &d_up, &upper_base).view([BANDS as i64]);
    Tables {
        weighted_map: Tensor::from_slice(&flat)
            .view([BANDS as i64, bins as i64])
            .to_device(device),
        internal_noise: f32s(internal).to_device(device),
        d_low,
        d_up,
        upper_base,
        norm,
        decay,
        offset: f32s(offset).to_device(device),
    }
}

impl Tables {
    /// A handle sharing the cached storage (tensors are not `Sync`, so the cache hands out copies
    /// of the handles rather than references).
    fn handle(&self) -> Tables {
        Tables {
            weighted_map: self.weighted_map.shallow_clone(),
            internal_noise: self.internal_noise.shallow_clone(),
            d_low: self.d_low.shallow_clone(),
            d_up: self.d_up.shallow_clone(),
            upper_base: self.upper_base.shallow_clone(),
            norm: self.norm.shallow_clone(),
            decay: self.decay.clone(),
            offset: self.offset.shallow_clone(),
        }
    }
}

fn tables(cfg: &NmrConfig, device: Device) -> Result<Tables> {
    let key = (cfg.n_fft, cfg.hop, cfg.listening_level_db.to_bits(), device);
    let mut cache = TABLES
        .lock()
        .map_err(|_| anyhow::anyhow!("NMR table cache poisoned"))?;
    Ok(cache
        .entry(key)
        .or_insert_with(|| tch::no_grad(|| build(cfg, device)))
        .handle())
}

/// Spreading in frequency of band energies given as levels `level_db` `[..., BANDS]` (dB), without
/// the B_s normaliser: E_s(k) = (Σ_l (E(l)·S(k,l)/A(l))^0.4)^(1/0.4), with a lower slope of
/// 27 dB/Bark and an upper slope of 24 + 230/f_c − 0.2·L(l) dB/Bark (never below 0).
fn spread_raw(level_db: &Tensor, d_low: &Tensor, d_up: &Tensor, upper_base: &Tensor) -> Tensor {
    let l = level_db.unsqueeze(-2); // [..., 1, l]
    let slope_up = (upper_base + 24.0 - &l * 0.2).clamp_min(0.0);
    let s_db = -(d_low * 27.0) - d_up * slope_up; // [..., k, l]
    // A(l) = Σ_k 10^{S/10}: the spreading function's total, so each masker spreads its own energy.
    let a_db = (&s_db / 10.0 * std::f64::consts::LN_10).logsumexp([-2], true)
        * (10.0 / std::f64::consts::LN_10);
    // log of (E(l)·S/A)^0.4, summed over maskers in the linear domain via logsumexp.
    let ln_term = (&l + &s_db - a_db) * (0.04 * std::f64::consts::LN_10);
    (ln_term.logsumexp([-1], false) * 2.5).exp()
}

/// |X|² as re² + im², whose gradient is defined (zero) where X = 0, as it is for an unmarked
/// signal at the start of training.
fn power_spec(x: &Tensor) -> Tensor {
    x.view_as_real()
        .square()
        .sum_dim_intlist(-1, false, Kind::Float)
}

/// Masking pattern M `[B, T, BANDS]` of the reference spectrum `x` `[B, F, T]` (complex).
fn mask(t: &Tables, x: &Tensor) -> Tensor {
    let p = power_spec(x).transpose(1, 2); // [B, T, F]
    let pitch = p.matmul(&t.weighted_map.tr()) + &t.internal_noise; // [B, T, BANDS]
    let level = pitch.log10() * 10.0;
    let spread = spread_raw(&level, &t.d_low, &t.d_up, &t.upper_base) / &t.norm;
    // Temporal masking: first-order decay per band, then the larger of decayed and current.
    let frames = spread.size()[1];
    let decay = Tensor::from_slice(&t.decay.iter().map(|&a| a as f32).collect::<Vec<_>>())
        .to_device(spread.device());
    let mut state = Tensor::zeros(
        [spread.size()[0], BANDS as i64],
        (Kind::Float, spread.device()),
    );
    let mut out = Vec::with_capacity(frames as usize);
    for n in 0..frames {
        let cur = spread.select(1, n);
        state = &decay * &state + (-&decay + 1.0) * &cur;
        out.push(state.maximum(&cur));
    }
    Tensor::stack(&out, 1) / &t.offset
}

/// Mean N/M over batch, bands and frames of `marked` against `reference`, both `[B, L]` or
/// `[B, C, L]` (channels are treated as items). Differentiable in `marked`.
pub fn nmr_with(cfg: &NmrConfig, reference: &Tensor, marked: &Tensor) -> Result<Tensor> {
    Ok(nmr_pattern(cfg, reference, marked)?.mean(Kind::Float))
}

/// [`nmr_with`] under the default ear model.
pub fn nmr_loss(reference: &Tensor, marked: &Tensor) -> Result<Tensor> {
    nmr_with(&NmrConfig::default(), reference, marked)
}

/// Total NMR in dB (10·log10 of the mean ratio), for logging.
pub fn nmr_db(reference: &Tensor, marked: &Tensor) -> Result<f64> {
    let v = tch::no_grad(|| nmr_loss(reference, marked))?.double_value(&[]);
    Ok(10.0 * v.max(1e-30).log10())
}

/// The per-band, per-frame ratios N/M `[N, T, BANDS]` (N = all leading axes flattened).
pub fn nmr_pattern(cfg: &NmrConfig, reference: &Tensor, marked: &Tensor) -> Result<Tensor> {
    ensure!(
        reference.size() == marked.size(),
        "NMR: shapes differ: {:?} vs {:?}",
        reference.size(),
        marked.size()
    );
    let t = tables(cfg, reference.device())?;
    let (r, _) = dsp::flatten_batch(&reference.to_kind(Kind::Float))?;
    let (m, _) = dsp::flatten_batch(&marked.to_kind(Kind::Float))?;
    let xr = dsp::stft(&r.detach(), cfg.n_fft, cfg.hop)?;
    let masking = tch::no_grad(|| mask(&t, &xr));
    // Noise from the complex difference, so only the error's own energy enters the ratio.
    let e = dsp::stft(&(&m - &r.detach()), cfg.n_fft, cfg.hop)?;
    let noise = power_spec(&e).transpose(1, 2).matmul(&t.weighted_map.tr());
    Ok(noise / masking)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::attacks::dsp::{SR, randn, tone};

    const LEN: i64 = 44_100;

    fn val(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    /// A music-like reference: a few partials plus a little broadband noise.
    fn reference() -> Tensor {
        let d = Device::Cpu;
        (tone(220.0, 0.2, LEN, d)
            + tone(660.0, 0.1, LEN, d)
            + tone(3000.0, 0.05, LEN, d)
            + randn(&[LEN], 5, d) * 0.01)
            .unsqueeze(0)
    }

    /// White noise band-limited to [lo, hi] Hz.
    fn band_noise(lo: f64, hi: f64, seed: u64) -> Result<Tensor> {
        let w = randn(&[1, LEN], seed, Device::Cpu);
        dsp::fft_filter(&w, 0, |f| {
            if f >= lo && f <= hi {
                (1.0, 0.0)
            } else {
                (0.0, 0.0)
            }
        })
    }

    #[test]
    fn band_layout_is_bs1387() {
        let edges = band_edges();
        assert_eq!(edges.len(), BANDS);
        assert!((edges[0].0 - F_LO).abs() < 1e-9);
        assert!((edges[BANDS - 1].2 - F_HI).abs() < 1e-9);
        // Bins well inside the range hand out exactly their energy.
        let m = band_matrix(2048);
        let df = SR / 2048.0;
        for k in [10usize, 100, 500, 800] {
            assert!(k as f64 * df > 100.0 && (k as f64 * df) < 17_900.0);
            let col: f64 = m.iter().map(|row| row[k]).sum();
            assert!((col - 1.0).abs() < 1e-9, "bin {k} sums to {col}");
        }
        // Outside 80 Hz–18 kHz nothing is counted (exact: no band puts any weight there).
        assert_eq!(m.iter().map(|row| row[1]).sum::<f64>(), 0.0);
        assert_eq!(m.iter().map(|row| row[1000]).sum::<f64>(), 0.0);
    }

    #[test]
    fn identical_signals_give_zero() -> Result<()> {
        let x = reference();
        // Exact by design: the noise (marked − host) is exactly zero, so every band's ratio is 0.
        assert_eq!(val(&nmr_loss(&x, &x)?), 0.0);
        Ok(())
    }

    #[test]
    fn ten_db_more_noise_is_ten_times_the_nmr() -> Result<()> {
        let x = reference();
        let n = randn(&[1, LEN], 9, Device::Cpu) * 1e-3;
        let a = val(&nmr_loss(&x, &(&x + &n))?);
        let b = val(&nmr_loss(&x, &(&x + &n * 10f64.sqrt()))?);
        assert!(a > 0.0);
        assert!((b / a - 10.0).abs() < 1e-3, "ratio {}", b / a);
        Ok(())
    }

    #[test]
    fn noise_under_a_masker_counts_less() -> Result<()> {
        // A loud 1 kHz tone over a faint floor; the same noise energy at 1 kHz or at 6 kHz.
        let d = Device::Cpu;
        let x = (tone(1000.0, 0.5, LEN, d) + randn(&[LEN], 2, d) * 1e-4).unsqueeze(0);
        let near = band_noise(900.0, 1100.0, 3)?;
        let far = band_noise(5900.0, 6100.0, 3)?;
        let scale = |n: &Tensor| n / val(&n.square().mean(Kind::Float)).sqrt() * 1e-3;
        let (near, far) = (scale(&near), scale(&far));
        let under = val(&nmr_loss(&x, &(&x + near))?);
        let away = val(&nmr_loss(&x, &(&x + far))?);
        assert!(away > 30.0 * under, "masked {under} vs unmasked {away}");
        Ok(())
    }

    #[test]
    fn outer_ear_weighting_favours_3_to_4_khz() {
        let mid = outer_ear_db(3500.0);
        assert!(mid > 4.0);
        for f in [30.0, 50.0, 16_000.0, 18_000.0] {
            assert!(
                outer_ear_db(f) < mid - 10.0,
                "{f} Hz: {} dB",
                outer_ear_db(f)
            );
        }
        assert!(outer_ear_db(100.0) < outer_ear_db(1000.0));
        assert!(outer_ear_db(12_000.0) < outer_ear_db(4000.0));
    }

    #[test]
    fn nmr_has_gradient_and_runs_on_stereo_batches() -> Result<()> {
        let x = reference()
            .expand([2, LEN], false)
            .reshape([1, 2, LEN])
            .repeat([2, 1, 1]);
        let m = (&x + randn(&[2, 2, LEN], 4, Device::Cpu) * 1e-3).set_requires_grad(true);
        let loss = nmr_loss(&x, &m)?;
        loss.backward();
        assert!(val(&m.grad().abs().sum(Kind::Float)) > 0.0);
        // No noise at all (an identity embedder): loss 0 and a finite, zero gradient.
        let same = x.copy().set_requires_grad(true);
        let loss = nmr_loss(&x, &same)?;
        loss.backward();
        // Exact by design: the noise (marked − host) is exactly zero, as is every product with it.
        assert_eq!(val(&loss), 0.0);
        assert_eq!(val(&same.grad().abs().sum(Kind::Float)), 0.0);
        Ok(())
    }
}
