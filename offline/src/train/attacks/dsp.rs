//! Tensor DSP shared by the losses, the NMR model and the attack simulator: STFT/iSTFT at any size,
//! biquads applied through their sampled frequency response, FFT resampling, K-weighted loudness,
//! mixing and seeded noise. Everything runs on the device of its input, in f32, and keeps the
//! autograd graph; time is always the last axis and any leading axes are batch.

use anyhow::{Result, bail, ensure};
use stemmark_models::spec;
use tch::{Device, Kind, Tensor};

/// The model sample rate as a float, for filter design.
pub const SR: f64 = spec::SAMPLE_RATE as f64;

/// Splits `[..., L]` into `[N, L]` plus the leading shape, so helpers can work on 2-D batches.
pub fn flatten_batch(x: &Tensor) -> Result<(Tensor, Vec<i64>)> {
    let size = x.size();
    let Some((&l, lead)) = size.split_last() else {
        bail!("audio tensor needs a time axis, got a scalar");
    };
    ensure!(l > 0, "audio tensor has no samples");
    Ok((x.reshape([-1, l]), lead.to_vec()))
}

/// Inverse of [`flatten_batch`] for a `[N, ...rest]` result.
pub fn unflatten_batch(x: &Tensor, lead: &[i64]) -> Tensor {
    let mut shape = lead.to_vec();
    shape.extend_from_slice(&x.size()[1..]);
    x.reshape(shape)
}

/// Runs `f` on the `[N, L]` view of `x` and restores the leading axes.
pub fn map_2d(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (x2, lead) = flatten_batch(x)?;
    Ok(unflatten_batch(&f(&x2)?, &lead))
}

/// Periodic Hann window (torch's default), as the runtime STFT uses.
pub fn hann(n: i64, device: Device) -> Tensor {
    Tensor::hann_window(n, (Kind::Float, device))
}

/// Centred, one-sided complex STFT `[..., L]` → `[..., n_fft/2+1, frames]`, Hann window.
/// torch 2.11 rejects `center=true`, so the n_fft/2 reflection padding is done here.
pub fn stft(x: &Tensor, n_fft: i64, hop: i64) -> Result<Tensor> {
    ensure!(n_fft > 0 && hop > 0, "STFT needs positive sizes");
    let (x2, lead) = flatten_batch(&x.to_kind(Kind::Float))?;
    let pad = n_fft / 2;
    // Reflection needs more samples than the pad; very short inputs fall back to zeros.
    let padded = if x2.size()[1] > pad {
        x2.unsqueeze(1)
            .f_reflection_pad1d([pad, pad])?
            .squeeze_dim(1)
    } else {
        x2.f_constant_pad_nd([pad, pad])?
    };
    let win = hann(n_fft, x.device());
    let spec = padded.f_stft(n_fft, hop, n_fft, Some(&win), false, true, true, false)?;
    Ok(unflatten_batch(&spec, &lead))
}

/// Inverse of [`stft`] by windowed overlap-add (`col2im`), cropped to `length` samples.
/// torch's own `istft` with center=false fails its window-overlap check at the first sample
/// (periodic Hann starts at 0), hence the manual version.
pub fn istft(spec: &Tensor, n_fft: i64, hop: i64, length: i64) -> Result<Tensor> {
    let size = spec.size();
    ensure!(size.len() >= 2, "iSTFT needs [..., F, T], got {size:?}");
    let (f, t) = (size[size.len() - 2], size[size.len() - 1]);
    ensure!(
        f == n_fft / 2 + 1,
        "iSTFT: {f} bins do not match n_fft {n_fft}"
    );
    let lead = size[..size.len() - 2].to_vec();
    let spec = spec.reshape([-1, f, t]);
    let device = spec.device();
    let win = hann(n_fft, device).view([1, n_fft, 1]);
    let frames = spec.f_fft_irfft(n_fft, 1, "backward")? * &win; // [N, n_fft, T]
    let total = n_fft + hop * (t - 1);
    let fold = |cols: &Tensor| cols.f_col2im([1, total], [1, n_fft], [1, 1], [0, 0], [1, hop]);
    let y = fold(&frames)?.reshape([-1, total]);
    let env = fold(&(&win * &win).expand([1, n_fft, t], false))?.reshape([1, total]);
    // Only the outermost samples (inside the padding) have a vanishing envelope.
    let env = env.clamp_min(1e-8);
    let y = y / env;
    let pad = n_fft / 2;
    let avail = (total - pad).max(0);
    let y = if avail >= length {
        y.narrow(1, pad, length)
    } else {
        y.narrow(1, pad, avail)
            .f_constant_pad_nd([0, length - avail])?
    };
    let mut shape = lead;
    shape.push(length);
    Ok(y.reshape(shape))
}

/// Smallest n ≥ `min` whose only prime factors are 2, 3 and 5 (fast for every FFT backend).
pub fn fast_len(min: i64) -> i64 {
    let mut n = min.max(1);
    loop {
        let mut m = n;
        for p in [2, 3, 5] {
            while m % p == 0 {
                m /= p;
            }
        }
        if m == 1 {
            return n;
        }
        n += 1;
    }
}

/// A complex frequency response sampled on the rfft grid of length `n`, as a complex tensor `[n/2+1]`.
pub fn response_tensor(n: i64, device: Device, h: impl Fn(f64) -> (f64, f64)) -> Result<Tensor> {
    let bins = n / 2 + 1;
    let mut v = Vec::with_capacity(2 * bins as usize);
    for k in 0..bins {
        let (re, im) = h(k as f64 * SR / n as f64);
        v.push(re as f32);
        v.push(im as f32);
    }
    Ok(Tensor::from_slice(&v)
        .view([bins, 2])
        .f_view_as_complex()?
        .to_device(device))
}

/// Filters `[..., L]` by a response given as a function of frequency in Hz, through one FFT of
/// length ≥ L + `tail` (the tail holds the filter's decaying impulse response instead of wrapping).
pub fn fft_filter(x: &Tensor, tail: i64, h: impl Fn(f64) -> (f64, f64)) -> Result<Tensor> {
    map_2d(x, |x2| {
        let l = x2.size()[1];
        let n = fast_len(l + tail.max(0));
        let resp = response_tensor(n, x2.device(), h)?;
        let spec = x2.f_fft_rfft(n, 1, "backward")? * resp.unsqueeze(0);
        Ok(spec.f_fft_irfft(n, 1, "backward")?.narrow(1, 0, l))
    })
}

/// A digital biquad `(b0 + b1 z⁻¹ + b2 z⁻²) / (a0 + a1 z⁻¹ + a2 z⁻²)` at the model rate,
/// designed after the RBJ audio-EQ cookbook.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Biquad {
    pub b: [f64; 3],
    pub a: [f64; 3],
}

impl Biquad {
    fn w0_alpha(fc: f64, q: f64) -> (f64, f64) {
        let w0 = 2.0 * std::f64::consts::PI * fc / SR;
        (w0, w0.sin() / (2.0 * q))
    }

    pub fn lowpass(fc: f64, q: f64) -> Self {
        let (w0, al) = Self::w0_alpha(fc, q);
        let c = w0.cos();
        Self {
            b: [(1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0],
            a: [1.0 + al, -2.0 * c, 1.0 - al],
        }
    }

    pub fn highpass(fc: f64, q: f64) -> Self {
        let (w0, al) = Self::w0_alpha(fc, q);
        let c = w0.cos();
        Self {
            b: [(1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0],
            a: [1.0 + al, -2.0 * c, 1.0 - al],
        }
    }

    /// High shelf with `gain_db` above `fc`, in the form pyloudnorm uses for K-weighting.
    pub fn high_shelf(fc: f64, gain_db: f64, q: f64) -> Self {
        let (w0, al) = Self::w0_alpha(fc, q);
        let (c, a) = (w0.cos(), 10f64.powf(gain_db / 40.0));
        let s = 2.0 * a.sqrt() * al;
        Self {
            b: [
                a * ((a + 1.0) + (a - 1.0) * c + s),
                -2.0 * a * ((a - 1.0) + (a + 1.0) * c),
                a * ((a + 1.0) + (a - 1.0) * c - s),
            ],
            a: [
                (a + 1.0) - (a - 1.0) * c + s,
                2.0 * ((a - 1.0) - (a + 1.0) * c),
                (a + 1.0) - (a - 1.0) * c - s,
            ],
        }
    }

    /// Complex response at `f` Hz.
    pub fn response(&self, f: f64) -> (f64, f64) {
        let w = 2.0 * std::f64::consts::PI * f / SR;
        let poly = |c: &[f64; 3]| {
            // c0 + c1 e^{-jw} + c2 e^{-2jw}
            (
                c[0] + c[1] * w.cos() + c[2] * (2.0 * w).cos(),
                -c[1] * w.sin() - c[2] * (2.0 * w).sin(),
            )
        };
        let (nr, ni) = poly(&self.b);
        let (dr, di) = poly(&self.a);
        let d = dr * dr + di * di;
        ((nr * dr + ni * di) / d, (ni * dr - nr * di) / d)
    }
}

/// Product of several responses, for cascades.
pub fn cascade(f: f64, filters: &[Biquad]) -> (f64, f64) {
    filters.iter().fold((1.0, 0.0), |(r, i), q| {
        let (qr, qi) = q.response(f);
        (r * qr - i * qi, r * qi + i * qr)
    })
}

/// Applies a cascade of biquads to `[..., L]`. The IIR filters are applied through their exact
/// frequency response on a zero-padded FFT grid (the 0.1 s pad holds their decaying tail), which is
/// one FFT instead of a sequential recursion and differentiates through the input.
pub fn biquads(x: &Tensor, filters: &[Biquad]) -> Result<Tensor> {
    let tail = (0.1 * SR) as i64;
    fft_filter(x, tail, |f| cascade(f, filters))
}

/// The two BS.1770 K-weighting stages (pre-filter shelf + RLB high-pass), designed at the model rate
/// from their analogue parameters as pyloudnorm does.
pub fn k_weighting() -> [Biquad; 2] {
    [
        Biquad::high_shelf(1500.0, 4.0, std::f64::consts::FRAC_1_SQRT_2),
        Biquad::highpass(38.0, 0.5),
    ]
}

/// Integrated loudness (LUFS) of each item of `[B, L]` (mono) or `[B, C, L]` (channels summed with
/// weight 1, as BS.1770 does for L/R), with the −70 LUFS absolute and −10 LU relative gates over
/// 400 ms blocks at 75 % overlap. Returns `[B]`; items with no block above the gates give −∞.
/// The gates are decisions and carry no gradient; the loudness itself does.
pub fn loudness_lufs(x: &Tensor) -> Result<Tensor> {
    let x3 = match x.dim() {
        2 => x.unsqueeze(1),
        3 => x.shallow_clone(),
        d => bail!("loudness needs [B, L] or [B, C, L], got {d} dims"),
    };
    let y = biquads(&x3.to_kind(Kind::Float), &k_weighting())?;
    let l = y.size()[2];
    let block = (0.4 * SR).round() as i64;
    let step = (0.1 * SR).round() as i64;
    // Shorter than one gating block: the whole signal is the block.
    let z = if l >= block {
        y.square()
            .f_unfold(2, block, step)?
            .mean_dim(-1, false, Kind::Float)
    } else {
        y.square().mean_dim(-1, true, Kind::Float)
    }
    .sum_dim_intlist(1, false, Kind::Float); // [B, J]
    let to_lufs = |p: &Tensor| p.clamp_min(1e-20).log10() * 10.0 - 0.691;
    let lj = to_lufs(&z).detach();
    let abs_gate = lj.gt(-70.0).to_kind(Kind::Float);
    let mean_abs = (&z.detach() * &abs_gate).sum_dim_intlist(1, true, Kind::Float)
        / abs_gate
            .sum_dim_intlist(1, true, Kind::Float)
            .clamp_min(1.0);
    let rel = to_lufs(&mean_abs) - 10.0;
    let gate = &abs_gate * lj.ge_tensor(&rel).to_kind(Kind::Float);
    let count = gate.sum_dim_intlist(1, false, Kind::Float);
    let power = (&z * &gate).sum_dim_intlist(1, false, Kind::Float) / count.clamp_min(1.0);
    let lufs = to_lufs(&power);
    Ok(lufs.where_self(&count.gt(0.0), &Tensor::full_like(&lufs, f64::NEG_INFINITY)))
}

/// Scales each item of `[B, L]` / `[B, C, L]` to `target_lufs` (the paper's −16 LUFS per stem is
/// `spec::STEM_LUFS`). Silent items pass unchanged; the gain is limited to ±`max_gain_db`.
pub fn normalize_loudness(x: &Tensor, target_lufs: f64, max_gain_db: f64) -> Result<Tensor> {
    let lufs = loudness_lufs(x)?;
    let finite = lufs.isfinite();
    let gain_db = (-lufs.where_self(&finite, &Tensor::full_like(&lufs, target_lufs)) + target_lufs)
        .clamp(-max_gain_db, max_gain_db);
    let gain = (gain_db / 20.0 * std::f64::consts::LN_10).exp();
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, x.dim() - 1));
    Ok(x * gain.view(shape.as_slice()))
}

/// Normalises every stem of `[B, S, L]` or `[B, S, C, L]` to `target_lufs` on its own (the paper's
/// per-stem −16 LUFS before mixing), keeping the shape.
pub fn normalize_stems(stems: &Tensor, target_lufs: f64, max_gain_db: f64) -> Result<Tensor> {
    let size = stems.size();
    ensure!(
        matches!(size.len(), 3 | 4),
        "stems must be [B, S, L] or [B, S, C, L], got {size:?}"
    );
    let flat = stems.reshape(
        [-1].into_iter()
            .chain(size[2..].iter().copied())
            .collect::<Vec<_>>(),
    );
    Ok(normalize_loudness(&flat, target_lufs, max_gain_db)?.reshape(size))
}

/// Sums stems `[B, S, ...]` into a mixture `[B, ...]`.
pub fn mix(stems: &Tensor) -> Result<Tensor> {
    ensure!(
        stems.dim() >= 3,
        "mix needs [B, S, ..., L], got {:?}",
        stems.size()
    );
    Ok(stems.sum_dim_intlist(1, false, stems.kind()))
}

/// Band-limited resampling of `[..., L]` to `new_len` samples by truncating or zero-padding the
/// spectrum: the ideal (circular) sinc resampler. Content above the lower Nyquist is removed.
pub fn resample_to_len(x: &Tensor, new_len: i64) -> Result<Tensor> {
    ensure!(new_len > 0, "resampling to an empty signal");
    map_2d(x, |x2| {
        let l = x2.size()[1];
        if l == new_len {
            return Ok(x2.shallow_clone());
        }
        let spec = x2.f_fft_rfft(None::<i64>, 1, "backward")?;
        // Keep strictly below the smaller Nyquist so no half-represented bin survives.
        let keep = (l.min(new_len) + 1) / 2;
        let spec = spec
            .narrow(1, 0, keep)
            .f_constant_pad_nd([0, new_len / 2 + 1 - keep])?;
        Ok(spec.f_fft_irfft(new_len, 1, "backward")? * (new_len as f64 / l as f64))
    })
}

/// Resamples `[..., L]` from rate `from` to rate `to` (Hz); the output has round(L·to/from) samples.
pub fn resample(x: &Tensor, from: f64, to: f64) -> Result<Tensor> {
    ensure!(from > 0.0 && to > 0.0, "sample rates must be positive");
    let l = *x.size().last().unwrap_or(&0);
    resample_to_len(x, ((l as f64) * to / from).round() as i64)
}

/// Crops or zero-pads the last axis to `len` samples (at the end).
pub fn fit_len(x: &Tensor, len: i64) -> Result<Tensor> {
    let l = *x.size().last().unwrap_or(&0);
    Ok(if l >= len {
        x.narrow(-1, 0, len)
    } else {
        x.f_constant_pad_nd([0, len - l])?
    })
}

/// A 32-bit integer hash (lowbias32 structure; multipliers below 2³¹ so int64 products never
/// overflow) of an int64 tensor holding values in [0, 2³²).
fn hash32(x: &Tensor) -> Tensor {
    const M: i64 = 0xFFFF_FFFF;
    let mix = |h: Tensor, shift: i64| h.bitwise_xor_tensor(&h.floor_divide_scalar(1i64 << shift));
    let h = mix(x.bitwise_and(M), 16);
    let h = mix((h * 0x7feb_352d_i64).bitwise_and(M), 15);
    let h = mix((h * 0x5bd1_e995_i64).bitwise_and(M), 16);
    (h * 0x2c1b_3c6d_i64).bitwise_and(M)
}

/// Uniform noise in (0, 1) of `shape`, a pure function of `seed`: the same on CPU and CUDA, and
/// independent of torch's global generator, so attacks replay exactly from the trainer's RNG.
pub fn uniform(shape: &[i64], seed: u64, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let (s1, s2) = ((seed & 0xFFFF_FFFF) as i64, (seed >> 32) as i64);
    let idx = Tensor::arange(n, (Kind::Int64, device));
    let h = hash32(&idx.bitwise_xor(s1));
    let h = hash32(&(h.bitwise_xor(s2) + 0x9e37_79b9_i64));
    // 24 random bits fill an f32 mantissa exactly.
    let u = (h.floor_divide_scalar(256).to_kind(Kind::Float) + 0.5) / (1u64 << 24) as f64;
    u.reshape(shape)
}

/// Standard normal noise of `shape` from `seed` (Box–Muller on [`uniform`]).
pub fn randn(shape: &[i64], seed: u64, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let u = uniform(&[2, n], seed, device);
    let r = (u.get(0).log() * -2.0).sqrt();
    let th = u.get(1) * (2.0 * std::f64::consts::PI);
    (r * th.cos()).reshape(shape)
}

/// Power spectral density shaped 1/f (pink) noise of `shape` (last axis time), zero mean.
pub fn pink(shape: &[i64], seed: u64, device: Device) -> Result<Tensor> {
    let white = randn(shape, seed, device);
    map_2d(&white, |w| {
        let l = w.size()[1];
        let spec = w.f_fft_rfft(None::<i64>, 1, "backward")?;
        let bins = spec.size()[1];
        // Amplitude ∝ 1/√f; DC removed.
        let k = Tensor::arange(bins, (Kind::Float, device));
        let shape = (k.clamp_min(1.0).rsqrt() * k.gt(0.0).to_kind(Kind::Float)).unsqueeze(0);
        Ok(spec.f_mul(&shape)?.f_fft_irfft(l, 1, "backward")?)
    })
}

/// Mean power over the last axis, `[...]`.
pub fn power(x: &Tensor) -> Tensor {
    x.square().mean_dim(-1, false, Kind::Float)
}

/// Per-item SNR in dB of `noisy` against `clean` over the last axis.
pub fn snr_db(clean: &Tensor, noisy: &Tensor) -> Tensor {
    let n = power(&(noisy - clean)).clamp_min(1e-30);
    (power(clean).clamp_min(1e-30) / n).log10() * 10.0
}

/// A sine of `freq` Hz, amplitude `amp`, `len` samples at the model rate (for tests and probes).
pub fn tone(freq: f64, amp: f64, len: i64, device: Device) -> Tensor {
    let t = Tensor::arange(len, (Kind::Double, device)) / SR;
    ((t * (2.0 * std::f64::consts::PI * freq)).sin() * amp).to_kind(Kind::Float)
}

/// Energy of `[..., L]` between `lo` and `hi` Hz (sum of |rfft|² over those bins), `[...]`.
pub fn band_energy(x: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let (x2, lead) = flatten_batch(x)?;
    let l = x2.size()[1];
    let p = x2.f_fft_rfft(None::<i64>, 1, "backward")?.abs().square();
    let bins = p.size()[1];
    let df = SR / l as f64;
    let k0 = ((lo / df).ceil() as i64).clamp(0, bins);
    let k1 = ((hi / df).floor() as i64 + 1).clamp(k0, bins);
    let e = p
        .narrow(1, k0, k1 - k0)
        .sum_dim_intlist(1, false, Kind::Float);
    Ok(e.reshape(lead))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Device {
        Device::Cpu
    }

    fn val(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn stft_istft_round_trip() -> Result<()> {
        let x = randn(&[2, 3000], 1, cpu()) * 0.1;
        for (n, h) in [(1024, 256), (512, 128), (2048, 512)] {
            let s = stft(&x, n, h)?;
            assert_eq!(s.size()[..2], [2, n / 2 + 1]);
            let y = istft(&s, n, h, 3000)?;
            let err = val(&(&y - &x).abs().max());
            assert!(err < 1e-4, "n={n}: round-trip error {err}");
        }
        Ok(())
    }

    #[test]
    fn seeded_noise_is_deterministic_and_normal() {
        let a = randn(&[4, 20000], 7, cpu());
        let b = randn(&[4, 20000], 7, cpu());
        let c = randn(&[4, 20000], 8, cpu());
        // Exact by design: the same seed draws the same numbers.
        assert_eq!(val(&(&a - &b).abs().max()), 0.0);
        assert!(val(&(&a - &c).abs().mean(Kind::Float)) > 0.5);
        assert!(val(&a.mean(Kind::Float)).abs() < 0.02);
        assert!((val(&a.std(true)) - 1.0).abs() < 0.02);
        let u = uniform(&[100000], 3, cpu());
        assert!(val(&u.min()) > 0.0 && val(&u.max()) < 1.0);
        assert!((val(&u.mean(Kind::Float)) - 0.5).abs() < 0.01);
    }

    #[test]
    fn biquad_lowpass_response() {
        let lp = Biquad::lowpass(4000.0, std::f64::consts::FRAC_1_SQRT_2);
        let mag = |f: f64| {
            let (r, i) = lp.response(f);
            20.0 * (r * r + i * i).sqrt().log10()
        };
        assert!(mag(100.0).abs() < 0.1);
        assert!((mag(4000.0) + 3.01).abs() < 0.2);
        assert!(mag(16000.0) < -20.0);
    }

    #[test]
    fn resample_keeps_low_tone_and_length() -> Result<()> {
        let x = tone(1000.0, 0.5, 44100, cpu()).unsqueeze(0);
        let y = resample(&x, SR, 16000.0)?;
        assert_eq!(y.size(), [1, 16000]);
        let z = resample(&y, 16000.0, SR)?;
        assert_eq!(z.size(), [1, 44100]);
        let err = val(&(&z - &x).abs().max());
        assert!(err < 1e-3, "1 kHz tone changed by {err}");
        Ok(())
    }

    #[test]
    fn loudness_of_a_sine_and_normalisation() -> Result<()> {
        // BS.1770: a 997 Hz full-scale sine in one channel reads −3.01 LUFS.
        let x = tone(997.0, 1.0, 3 * 44100, cpu()).unsqueeze(0);
        let l = val(&loudness_lufs(&x)?.get(0));
        assert!((l + 3.01).abs() < 0.1, "sine loudness {l}");
        let quiet = tone(997.0, 0.01, 3 * 44100, cpu()).unsqueeze(0);
        let y = normalize_loudness(&Tensor::cat(&[&x, &quiet], 0), spec::STEM_LUFS, 60.0)?;
        let ly = loudness_lufs(&y)?;
        for i in 0..2 {
            let v = val(&ly.get(i));
            assert!((v - spec::STEM_LUFS).abs() < 0.05, "item {i}: {v} LUFS");
        }
        let silent = Tensor::zeros([1, 44100], (Kind::Float, cpu()));
        assert_eq!(
            val(&normalize_loudness(&silent, spec::STEM_LUFS, 60.0)?
                .abs()
                .sum(Kind::Float)),
            0.0
        );
        Ok(())
    }

    #[test]
    fn loudness_matches_ebur128_with_gating() -> Result<()> {
        // Stereo, three sections of very different level so both gates act.
        let sec = 44_100;
        let loud = randn(&[2, 3 * sec], 1, cpu()) * 0.2 + tone(300.0, 0.3, 3 * sec, cpu());
        let soft = randn(&[2, 3 * sec], 2, cpu()) * 0.01;
        let hush = randn(&[2, sec], 3, cpu()) * 1e-5;
        let x = Tensor::cat(&[loud, soft, hush], 1);
        let ours = val(&loudness_lufs(&x.unsqueeze(0))?.get(0));
        let err = |e| anyhow::anyhow!("ebur128: {e:?}");
        let mut meter =
            ebur128::EbuR128::new(2, spec::SAMPLE_RATE, ebur128::Mode::I).map_err(err)?;
        let ch: Vec<Vec<f32>> = (0..2)
            .map(|c| Vec::<f32>::try_from(x.get(c)).unwrap_or_default())
            .collect();
        meter
            .add_frames_planar_f32(&[&ch[0], &ch[1]])
            .map_err(err)?;
        let reference = meter.loudness_global().map_err(err)?;
        assert!(
            (ours - reference).abs() < 0.1,
            "ours {ours} vs ebur128 {reference}"
        );
        Ok(())
    }

    #[test]
    fn stems_are_normalised_one_by_one() -> Result<()> {
        let a = tone(440.0, 0.5, 44_100, cpu());
        let b = tone(880.0, 0.01, 44_100, cpu());
        let stems = Tensor::stack(
            &[Tensor::stack(&[&a, &a], 0), Tensor::stack(&[&b, &b], 0)],
            0,
        )
        .unsqueeze(0);
        let y = normalize_stems(&stems, spec::STEM_LUFS, 60.0)?; // [1, 2, 2, L]
        assert_eq!(y.size(), stems.size());
        let l = loudness_lufs(&y.squeeze_dim(0))?;
        for s in 0..2 {
            assert!((val(&l.get(s)) - spec::STEM_LUFS).abs() < 0.05);
        }
        Ok(())
    }

    #[test]
    fn mix_sums_stems() -> Result<()> {
        let s = Tensor::ones([2, 3, 2, 10], (Kind::Float, cpu()));
        let m = mix(&s)?;
        assert_eq!(m.size(), [2, 2, 10]);
        // Exact by design: sums of small integers are exact in f32.
        assert_eq!(val(&m.mean(Kind::Float)), 3.0);
        Ok(())
    }
}
