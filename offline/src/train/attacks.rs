//! The attack simulator of the separation-first paper (§2.7.1): 18 distortions in three families,
//! as tensor ops on `[B, L]` or `[B, C, L]` audio that run on the input's device inside the
//! training step.
//!
//! | family | attacks (paper's tags) |
//! |---|---|
//! | basic/noise | white noise N, peak-normalised pink noise PK, 0.1 % sample suppression SP, amplitude scaling in [−1, 1] AMP, +20 % boost BST, −20 % duck DK, bit-depth quantisation QT, FFT global phase rotation PHS |
//! | filter | biquad low-pass 3–6 kHz LP, band-pass BF, moving average of 2–10 samples SM, time–frequency spectrogram masking SPAUG |
//! | time/pitch | resampling down to 16 kHz and back RS, single 100 ms echo, convolution reverb RV, pitch-preserving speed SPD, speed-preserving pitch PCH, both SPCH |
//!
//! The paper gives the kinds and some ranges; where it gives none, the ranges below are ours and
//! stated at [`Attack::sample`]. Every parameter, including the seed of any noise, is drawn from the
//! caller's RNG, and noise comes from [`dsp::randn`] (a pure function of its seed), so a training step
//! replays exactly after a resume. Gradients pass through every attack: the signal paths are linear
//! or elementwise, quantisation is straight-through, and the phase-vocoder phases (used by the
//! speed/pitch attacks) are taken without gradient while the magnitudes keep theirs.

pub mod dsp;

use anyhow::{Result, ensure};
use rand::Rng;
use std::f64::consts::PI;
use tch::{Kind, Tensor};

/// The three families of Table 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    BasicNoise,
    Filter,
    TimePitch,
}

/// A set of families, for switching attack groups on per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FamilyMask(pub u8);

impl FamilyMask {
    pub const NONE: Self = Self(0);
    pub const BASIC_NOISE: Self = Self(1);
    pub const FILTER: Self = Self(2);
    pub const TIME_PITCH: Self = Self(4);
    pub const ALL: Self = Self(7);

    pub fn of(family: Family) -> Self {
        match family {
            Family::BasicNoise => Self::BASIC_NOISE,
            Family::Filter => Self::FILTER,
            Family::TimePitch => Self::TIME_PITCH,
        }
    }

    pub fn contains(self, family: Family) -> bool {
        self.0 & Self::of(family).0 != 0
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The set of the listed families.
    pub fn from_families(families: &[Family]) -> Self {
        families.iter().fold(Self::NONE, |m, &f| m.union(Self::of(f)))
    }
}

/// All three families (the stages' default).
pub fn all_families() -> Vec<Family> {
    vec![Family::BasicNoise, Family::Filter, Family::TimePitch]
}

/// The 18 attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Attack {
    WhiteNoise,
    PinkNoise,
    SampleSuppression,
    AmplitudeScale,
    Boost,
    Duck,
    Quantize,
    PhaseShift,
    LowPass,
    BandPass,
    Smooth,
    SpecAugment,
    Resample,
    Echo,
    Reverb,
    Speed,
    Pitch,
    SpeedPitch,
}

/// One attack with its parameters drawn: apply it, log it, replay it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AttackParams {
    WhiteNoise { snr_db: f64, seed: u64 },
    PinkNoise { snr_db: f64, seed: u64 },
    SampleSuppression { fraction: f64, seed: u64 },
    AmplitudeScale { gain: f64 },
    Boost { gain: f64 },
    Duck { gain: f64 },
    Quantize { bits: u32 },
    PhaseShift { radians: f64 },
    LowPass { cutoff_hz: f64 },
    BandPass { low_hz: f64, high_hz: f64 },
    Smooth { window: i64 },
    SpecAugment { freq: (f64, f64), time: (f64, f64) },
    Resample { rate_hz: f64 },
    Echo { delay_s: f64, volume: f64 },
    Reverb { rt60_s: f64, wet: f64, seed: u64 },
    Speed { rate: f64 },
    Pitch { semitones: f64 },
    SpeedPitch { rate: f64, semitones: f64 },
}

/// Butterworth Q of the filter attacks.
const Q: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// STFT used by the spectrogram attacks (SPAUG, phase vocoder).
const ATTACK_FFT: i64 = 1024;
const ATTACK_HOP: i64 = 256;

impl Attack {
    pub const ALL: [Attack; 18] = [
        Attack::WhiteNoise,
        Attack::PinkNoise,
        Attack::SampleSuppression,
        Attack::AmplitudeScale,
        Attack::Boost,
        Attack::Duck,
        Attack::Quantize,
        Attack::PhaseShift,
        Attack::LowPass,
        Attack::BandPass,
        Attack::Smooth,
        Attack::SpecAugment,
        Attack::Resample,
        Attack::Echo,
        Attack::Reverb,
        Attack::Speed,
        Attack::Pitch,
        Attack::SpeedPitch,
    ];

    pub fn family(self) -> Family {
        use Attack::*;
        match self {
            WhiteNoise | PinkNoise | SampleSuppression | AmplitudeScale | Boost | Duck
            | Quantize | PhaseShift => Family::BasicNoise,
            LowPass | BandPass | Smooth | SpecAugment => Family::Filter,
            Resample | Echo | Reverb | Speed | Pitch | SpeedPitch => Family::TimePitch,
        }
    }

    /// The paper's short tag (Table 1).
    pub fn tag(self) -> &'static str {
        use Attack::*;
        match self {
            WhiteNoise => "N",
            PinkNoise => "PK",
            SampleSuppression => "SP",
            AmplitudeScale => "AMP",
            Boost => "BST",
            Duck => "DK",
            Quantize => "QT",
            PhaseShift => "PHS",
            LowPass => "LP",
            BandPass => "BF",
            Smooth => "SM",
            SpecAugment => "SPAUG",
            Resample => "RS",
            Echo => "Echo",
            Reverb => "RV",
            Speed => "SPD",
            Pitch => "PCH",
            SpeedPitch => "SPCH",
        }
    }

    /// Draws this attack's parameters. Ranges: the paper's where it states them (0.1 % suppression,
    /// amplitude in [−1, 1], ±20 % boost/duck, low-pass 3–6 kHz, smoothing 2–10 samples, resampling
    /// down to 16 kHz, 100 ms echo); ours otherwise: noise SNR 15–40 dB, 6–12 bit quantisation,
    /// band-pass 300–500 Hz to 4–8 kHz, SPAUG masks up to 10 % of the band and 10 % of the time,
    /// echo volume 0.1–0.5, reverb RT60 0.2–0.8 s at 10–50 % wet, speed ×0.8–1.25,
    /// pitch ±2 semitones.
    pub fn sample<R: Rng + ?Sized>(self, rng: &mut R) -> AttackParams {
        use AttackParams as P;
        let nyq = dsp::SR / 2.0;
        match self {
            Attack::WhiteNoise => P::WhiteNoise {
                snr_db: rng.random_range(15.0..=40.0),
                seed: rng.random(),
            },
            Attack::PinkNoise => P::PinkNoise {
                snr_db: rng.random_range(15.0..=40.0),
                seed: rng.random(),
            },
            Attack::SampleSuppression => P::SampleSuppression {
                fraction: 0.001,
                seed: rng.random(),
            },
            Attack::AmplitudeScale => P::AmplitudeScale {
                gain: rng.random_range(-1.0..=1.0),
            },
            Attack::Boost => P::Boost { gain: 1.2 },
            Attack::Duck => P::Duck { gain: 0.8 },
            Attack::Quantize => P::Quantize {
                bits: rng.random_range(6..=12),
            },
            Attack::PhaseShift => P::PhaseShift {
                radians: rng.random_range(-PI..=PI),
            },
            Attack::LowPass => P::LowPass {
                cutoff_hz: rng.random_range(3000.0..=6000.0),
            },
            Attack::BandPass => P::BandPass {
                low_hz: rng.random_range(300.0..=500.0),
                high_hz: rng.random_range(4000.0..=8000.0),
            },
            Attack::Smooth => P::Smooth {
                window: rng.random_range(2..=10),
            },
            Attack::SpecAugment => {
                let fw = rng.random_range(0.02..=0.1) * nyq;
                let f0 = rng.random_range(0.0..=nyq - fw);
                let tw = rng.random_range(0.02..=0.1);
                let t0 = rng.random_range(0.0..=1.0 - tw);
                P::SpecAugment {
                    freq: (f0, f0 + fw),
                    time: (t0, t0 + tw),
                }
            }
            Attack::Resample => {
                const RATES: [f64; 4] = [16_000.0, 22_050.0, 24_000.0, 32_000.0];
                P::Resample {
                    rate_hz: RATES[rng.random_range(0..RATES.len())],
                }
            }
            Attack::Echo => P::Echo {
                delay_s: 0.1,
                volume: rng.random_range(0.1..=0.5),
            },
            Attack::Reverb => P::Reverb {
                rt60_s: rng.random_range(0.2..=0.8),
                wet: rng.random_range(0.1..=0.5),
                seed: rng.random(),
            },
            Attack::Speed => P::Speed {
                rate: speed_rate(rng),
            },
            Attack::Pitch => P::Pitch {
                semitones: rng.random_range(-2.0..=2.0),
            },
            Attack::SpeedPitch => P::SpeedPitch {
                rate: speed_rate(rng),
                semitones: rng.random_range(-2.0..=2.0),
            },
        }
    }
}

/// Speed factors log-uniform in [0.8, 1.25], so slowing and speeding are equally likely.
fn speed_rate<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    rng.random_range(0.8f64.ln()..=1.25f64.ln()).exp()
}

impl AttackParams {
    pub fn attack(&self) -> Attack {
        use AttackParams as P;
        match self {
            P::WhiteNoise { .. } => Attack::WhiteNoise,
            P::PinkNoise { .. } => Attack::PinkNoise,
            P::SampleSuppression { .. } => Attack::SampleSuppression,
            P::AmplitudeScale { .. } => Attack::AmplitudeScale,
            P::Boost { .. } => Attack::Boost,
            P::Duck { .. } => Attack::Duck,
            P::Quantize { .. } => Attack::Quantize,
            P::PhaseShift { .. } => Attack::PhaseShift,
            P::LowPass { .. } => Attack::LowPass,
            P::BandPass { .. } => Attack::BandPass,
            P::Smooth { .. } => Attack::Smooth,
            P::SpecAugment { .. } => Attack::SpecAugment,
            P::Resample { .. } => Attack::Resample,
            P::Echo { .. } => Attack::Echo,
            P::Reverb { .. } => Attack::Reverb,
            P::Speed { .. } => Attack::Speed,
            P::Pitch { .. } => Attack::Pitch,
            P::SpeedPitch { .. } => Attack::SpeedPitch,
        }
    }

    /// Applies the attack to `[..., L]`. All attacks keep the length except `Speed` and
    /// `SpeedPitch`, which return round(L / rate) samples (see [`apply_random`] for batching).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        use AttackParams as P;
        match *self {
            P::WhiteNoise { snr_db, seed } => white_noise(x, snr_db, seed),
            P::PinkNoise { snr_db, seed } => pink_noise(x, snr_db, seed),
            P::SampleSuppression { fraction, seed } => sample_suppression(x, fraction, seed),
            P::AmplitudeScale { gain } | P::Boost { gain } | P::Duck { gain } => Ok(x * gain),
            P::Quantize { bits } => quantize(x, bits),
            P::PhaseShift { radians } => phase_shift(x, radians),
            P::LowPass { cutoff_hz } => lowpass(x, cutoff_hz),
            P::BandPass { low_hz, high_hz } => bandpass(x, low_hz, high_hz),
            P::Smooth { window } => smooth(x, window),
            P::SpecAugment { freq, time } => spec_mask(x, freq, time),
            P::Resample { rate_hz } => resample_round_trip(x, rate_hz),
            P::Echo { delay_s, volume } => echo(x, delay_s, volume),
            P::Reverb { rt60_s, wet, seed } => reverb(x, rt60_s, wet, seed),
            P::Speed { rate } => time_stretch(x, rate),
            P::Pitch { semitones } => pitch_shift(x, semitones),
            P::SpeedPitch { rate, semitones } => pitch_shift(&time_stretch(x, rate)?, semitones),
        }
    }
}

/// Applies one random attack from the enabled families to each item of `x` (`[B, L]` or
/// `[B, C, L]`; the channels of an item share the attack). Items get independent attacks. The
/// output has the input's shape: the duration-changing attacks (SPD, SPCH) are cropped or
/// zero-padded at the end back to L. With no family enabled `x` is returned unchanged.
pub fn apply_random<R: Rng + ?Sized>(
    x: &Tensor,
    families: FamilyMask,
    rng: &mut R,
) -> Result<(Tensor, Vec<AttackParams>)> {
    ensure!(
        matches!(x.dim(), 2 | 3),
        "attacks take [B, L] or [B, C, L], got {:?}",
        x.size()
    );
    let pool: Vec<Attack> = Attack::ALL
        .into_iter()
        .filter(|a| families.contains(a.family()))
        .collect();
    if pool.is_empty() {
        return Ok((x.shallow_clone(), Vec::new()));
    }
    let l = *x.size().last().unwrap_or(&0);
    let mut items = Vec::new();
    let mut applied = Vec::new();
    for b in 0..x.size()[0] {
        let params = pool[rng.random_range(0..pool.len())].sample(rng);
        items.push(dsp::fit_len(&params.apply(&x.get(b))?, l)?);
        applied.push(params);
    }
    Ok((Tensor::stack(&items, 0), applied))
}

/// Adds `noise` scaled so that each item's SNR against `x` is exactly `snr_db`.
fn add_at_snr(x: &Tensor, noise: &Tensor, snr_db: f64) -> Result<Tensor> {
    let px = dsp::power(x).unsqueeze(-1);
    let pn = dsp::power(noise).unsqueeze(-1).clamp_min(1e-30);
    // The scale is a level setting, not a path for gradients into the noise level.
    let scale = (px / pn * 10f64.powf(-snr_db / 10.0)).sqrt().detach();
    Ok(x + noise * scale)
}

/// White Gaussian noise at `snr_db` per item.
pub fn white_noise(x: &Tensor, snr_db: f64, seed: u64) -> Result<Tensor> {
    add_at_snr(x, &dsp::randn(&x.size(), seed, x.device()), snr_db)
}

/// Pink (1/f) noise, peak-normalised, then added at `snr_db` per item.
pub fn pink_noise(x: &Tensor, snr_db: f64, seed: u64) -> Result<Tensor> {
    let p = dsp::pink(&x.size(), seed, x.device())?;
    let peak = p.abs().amax([-1], true).clamp_min(1e-12);
    add_at_snr(x, &(p / peak), snr_db)
}

/// Sets a random `fraction` of the samples to zero.
pub fn sample_suppression(x: &Tensor, fraction: f64, seed: u64) -> Result<Tensor> {
    let keep = dsp::uniform(&x.size(), seed, x.device())
        .ge(fraction)
        .to_kind(Kind::Float);
    Ok(x * keep)
}

/// Rounds to a signed `bits`-bit grid on [−1, 1]; straight-through gradient.
pub fn quantize(x: &Tensor, bits: u32) -> Result<Tensor> {
    ensure!((2..=24).contains(&bits), "quantisation to {bits} bits");
    let steps = (1u64 << (bits - 1)) as f64;
    let q = (x * steps).round().clamp(-steps, steps - 1.0) / steps;
    Ok(x + (q - x).detach())
}

/// Rotates the phase of every positive-frequency component by `radians` (FFT, Hilbert-style):
/// cos(ωt) becomes cos(ωt + φ). DC and Nyquist, which have no phase to rotate, are kept.
pub fn phase_shift(x: &Tensor, radians: f64) -> Result<Tensor> {
    dsp::map_2d(x, |x2| {
        let l = x2.size()[1];
        let bins = l / 2 + 1;
        let rot = dsp::response_tensor(l, x2.device(), |_| (radians.cos(), radians.sin()))?;
        let ones = |n| Tensor::ones([n], (Kind::ComplexFloat, x2.device()));
        let last = if l % 2 == 0 { 1 } else { 0 };
        let rot = Tensor::cat(&[ones(1), rot.narrow(0, 1, bins - 1 - last), ones(last)], 0);
        let spec = x2.f_fft_rfft(None::<i64>, 1, "backward")? * rot.unsqueeze(0);
        Ok(spec.f_fft_irfft(l, 1, "backward")?)
    })
}

/// Biquad (Butterworth Q) low-pass at `cutoff_hz`.
pub fn lowpass(x: &Tensor, cutoff_hz: f64) -> Result<Tensor> {
    dsp::biquads(x, &[dsp::Biquad::lowpass(cutoff_hz, Q)])
}

/// Band-pass as a biquad high-pass at `low_hz` cascaded with a biquad low-pass at `high_hz`.
pub fn bandpass(x: &Tensor, low_hz: f64, high_hz: f64) -> Result<Tensor> {
    ensure!(low_hz < high_hz, "band-pass {low_hz}–{high_hz} Hz is empty");
    dsp::biquads(
        x,
        &[
            dsp::Biquad::highpass(low_hz, Q),
            dsp::Biquad::lowpass(high_hz, Q),
        ],
    )
}

/// Moving average over `window` samples, centred ('same' length, zero padded).
pub fn smooth(x: &Tensor, window: i64) -> Result<Tensor> {
    ensure!(window >= 1, "smoothing window {window}");
    dsp::map_2d(x, |x2| {
        let kernel = Tensor::full(
            [1, 1, window],
            1.0 / window as f64,
            (Kind::Float, x2.device()),
        );
        let left = (window - 1) / 2;
        let padded = x2
            .unsqueeze(1)
            .f_constant_pad_nd([left, window - 1 - left])?;
        Ok(padded
            .f_conv1d(&kernel, None::<Tensor>, [1], [0], [1], 1)?
            .squeeze_dim(1))
    })
}

/// SPAUG: zeroes one frequency band `freq` (Hz) over all frames and one time span `time`
/// (fractions of the length) over all bins of the STFT, then resynthesises.
pub fn spec_mask(x: &Tensor, freq: (f64, f64), time: (f64, f64)) -> Result<Tensor> {
    let l = *x.size().last().unwrap_or(&0);
    let spec = dsp::stft(x, ATTACK_FFT, ATTACK_HOP)?;
    let size = spec.size();
    let (f, t) = (size[size.len() - 2], size[size.len() - 1]);
    let df = dsp::SR / ATTACK_FFT as f64;
    let dev = x.device();
    let fk = Tensor::arange(f, (Kind::Float, dev)) * df;
    let f_in = fk.ge(freq.0).logical_and(&fk.le(freq.1));
    // Frame j is centred on sample j·hop.
    let tj = Tensor::arange(t, (Kind::Float, dev)) * (ATTACK_HOP as f64 / l as f64);
    let t_in = tj.ge(time.0).logical_and(&tj.le(time.1));
    let masked = f_in.unsqueeze(1).logical_or(&t_in.unsqueeze(0));
    let keep = masked.logical_not().to_kind(Kind::Float);
    dsp::istft(&(spec * keep), ATTACK_FFT, ATTACK_HOP, l)
}

/// RS: resample to `rate_hz` and back to the model rate (same length).
pub fn resample_round_trip(x: &Tensor, rate_hz: f64) -> Result<Tensor> {
    let l = *x.size().last().unwrap_or(&0);
    let down = dsp::resample(x, dsp::SR, rate_hz)?;
    dsp::resample_to_len(&down, l)
}

/// A single echo: x + volume · x delayed by `delay_s`.
pub fn echo(x: &Tensor, delay_s: f64, volume: f64) -> Result<Tensor> {
    let l = *x.size().last().unwrap_or(&0);
    let d = ((delay_s * dsp::SR).round() as i64).clamp(0, l);
    let delayed = x.f_constant_pad_nd([d, 0])?.narrow(-1, 0, l);
    Ok(x + delayed * volume)
}

/// The reverb's impulse response: a unit direct path, then after 1 ms exponentially decaying
/// Gaussian noise (−60 dB at `rt60_s`) of energy `wet`².
pub fn reverb_ir(rt60_s: f64, wet: f64, seed: u64, device: tch::Device) -> Tensor {
    let n = (rt60_s * dsp::SR).round().max(2.0) as i64;
    let pre = (0.001 * dsp::SR).round() as i64;
    let t = Tensor::arange(n, (Kind::Float, device)) / dsp::SR;
    let env = (t * (-3.0 * std::f64::consts::LN_10 / rt60_s)).exp();
    let tail = dsp::randn(&[n], seed, device) * env;
    let tail = &tail / tail.square().sum(Kind::Float).sqrt() * wet;
    let direct = Tensor::zeros([pre], (Kind::Float, device));
    let ir = Tensor::cat(&[direct, tail], 0);
    let _ = ir.get(0).fill_(1.0);
    ir
}

/// RV: convolution with [`reverb_ir`] (FFT, linear), cropped to the input length.
pub fn reverb(x: &Tensor, rt60_s: f64, wet: f64, seed: u64) -> Result<Tensor> {
    let ir = reverb_ir(rt60_s, wet, seed, x.device());
    dsp::map_2d(x, |x2| {
        let l = x2.size()[1];
        let n = dsp::fast_len(l + ir.size()[0]);
        let h = ir.f_fft_rfft(n, 0, "backward")?.unsqueeze(0);
        let y = (x2.f_fft_rfft(n, 1, "backward")? * h).f_fft_irfft(n, 1, "backward")?;
        Ok(y.narrow(1, 0, l))
    })
}

/// SPD: pitch-preserving speed change by a phase vocoder. `rate` > 1 plays faster: the output
/// has round(L / rate) samples and every tone keeps its frequency.
pub fn time_stretch(x: &Tensor, rate: f64) -> Result<Tensor> {
    ensure!(rate > 0.0, "speed factor {rate}");
    let l = *x.size().last().unwrap_or(&0);
    let out_len = ((l as f64) / rate).round() as i64;
    if (rate - 1.0).abs() < 1e-9 {
        return Ok(x.shallow_clone());
    }
    let (n, hop) = (ATTACK_FFT, ATTACK_HOP);
    let spec = dsp::stft(x, n, hop)?;
    let size = spec.size();
    let (bins, frames) = (size[size.len() - 2], size[size.len() - 1]);
    let spec = spec.reshape([-1, bins, frames]);
    let dev = x.device();
    // Output frame j reads input position j·rate, interpolating between its two neighbours.
    let steps: Vec<f64> = (0..)
        .map(|j| j as f64 * rate)
        .take_while(|&s| s < frames as f64)
        .collect();
    let i0: Vec<i64> = steps.iter().map(|s| s.floor() as i64).collect();
    let alpha: Vec<f32> = steps.iter().map(|s| (s - s.floor()) as f32).collect();
    let idx0 = Tensor::from_slice(&i0).to_device(dev);
    let idx1 = (&idx0 + 1).clamp_max(frames - 1);
    let alpha = Tensor::from_slice(&alpha).to_device(dev).view([1, 1, -1]);
    let s0 = spec.index_select(2, &idx0);
    let s1 = spec.index_select(2, &idx1);
    let mag = s0.abs() * (-&alpha + 1.0) + s1.abs() * &alpha;
    // Phase: the expected advance per hop plus the measured deviation, accumulated over frames.
    let phases = tch::no_grad(|| {
        let advance = (Tensor::arange(bins, (Kind::Float, dev))
            * (2.0 * PI * hop as f64 / n as f64))
            .view([1, -1, 1]);
        let dphi = s1.angle() - s0.angle() - &advance;
        let dphi = &dphi - (&dphi / (2.0 * PI)).round() * (2.0 * PI);
        let inc = dphi + advance;
        let first = spec.narrow(2, 0, 1).angle();
        let steps_out = inc.size()[2];
        let acc = inc.narrow(2, 0, steps_out - 1).cumsum(2, Kind::Float);
        Tensor::cat(&[first.shallow_clone(), &first + acc], 2)
    });
    let out = Tensor::polar(&mag, &phases);
    let mut shape = size[..size.len() - 2].to_vec();
    shape.extend_from_slice(&[bins, out.size()[2]]);
    dsp::istft(&out.reshape(shape), n, hop, out_len)
}

/// PCH: speed-preserving pitch shift by `semitones`: a time stretch by 2^(s/12) followed by
/// band-limited resampling back to the original length, so tones move by exactly that ratio.
pub fn pitch_shift(x: &Tensor, semitones: f64) -> Result<Tensor> {
    let l = *x.size().last().unwrap_or(&0);
    if semitones.abs() < 1e-9 {
        return Ok(x.shallow_clone());
    }
    let ratio = 2f64.powf(semitones / 12.0);
    dsp::resample_to_len(&time_stretch(x, 1.0 / ratio)?, l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsp::{SR, band_energy, tone};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    const L: i64 = 44_100;
    const CPU: Device = Device::Cpu;

    fn val(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    fn db(a: f64, b: f64) -> f64 {
        10.0 * (a / b).log10()
    }

    /// Frequency of the strongest spectral peak of a 1-D signal, parabolically interpolated.
    fn peak_hz(x: &Tensor) -> f64 {
        let l = x.size()[0];
        let w = dsp::hann(l, CPU);
        let p = (x * w).fft_rfft(None::<i64>, 0, "backward").abs();
        let k = p.argmax(0, false).int64_value(&[]);
        let (a, b, c) = (
            p.double_value(&[k - 1]),
            p.double_value(&[k]),
            p.double_value(&[k + 1]),
        );
        let off = 0.5 * (a - c) / (a - 2.0 * b + c);
        (k as f64 + off) * SR / l as f64
    }

    fn music() -> Tensor {
        (tone(440.0, 0.3, L, CPU) + tone(2500.0, 0.1, L, CPU) + dsp::randn(&[L], 11, CPU) * 0.02)
            .unsqueeze(0)
    }

    #[test]
    fn noise_attacks_hit_their_snr() -> Result<()> {
        let x = Tensor::cat(&[music(), music() * 0.01], 0);
        for snr in [15.0, 25.0, 40.0] {
            for y in [white_noise(&x, snr, 1)?, pink_noise(&x, snr, 2)?] {
                let got = dsp::snr_db(&x, &y);
                for i in 0..2 {
                    let g = got.double_value(&[i]);
                    assert!((g - snr).abs() < 0.5, "asked {snr} dB, got {g}");
                }
            }
        }
        // Pink: per-Hz energy falls with frequency, about 10 dB per decade.
        let n = pink_noise(
            &Tensor::zeros([1, L], (Kind::Float, CPU)).fill_(1e-3),
            0.0,
            3,
        )? - 1e-3;
        let lo = val(&band_energy(&n, 100.0, 200.0)?) / 100.0;
        let hi = val(&band_energy(&n, 1000.0, 2000.0)?) / 1000.0;
        assert!(
            (db(lo, hi) - 10.0).abs() < 2.0,
            "pink slope {} dB/decade",
            db(lo, hi)
        );
        Ok(())
    }

    #[test]
    fn sample_suppression_zeroes_a_tenth_of_a_percent() -> Result<()> {
        let x = Tensor::ones([4, 100_000], (Kind::Float, CPU));
        let y = sample_suppression(&x, 0.001, 5)?;
        let zeros = val(&y.eq(0.0).to_kind(Kind::Float).mean(Kind::Float));
        assert!((zeros - 0.001).abs() < 0.0003, "{zeros}");
        Ok(())
    }

    #[test]
    fn amplitude_attacks_scale() -> Result<()> {
        let x = music();
        for (p, g) in [
            (AttackParams::AmplitudeScale { gain: -0.5 }, -0.5),
            (AttackParams::Boost { gain: 1.2 }, 1.2),
            (AttackParams::Duck { gain: 0.8 }, 0.8),
        ] {
            assert!(val(&(p.apply(&x)? - &x * g).abs().max()) < 1e-7);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..100 {
            let AttackParams::AmplitudeScale { gain } = Attack::AmplitudeScale.sample(&mut rng)
            else {
                panic!()
            };
            assert!((-1.0..=1.0).contains(&gain));
        }
        Ok(())
    }

    #[test]
    fn quantize_snaps_to_grid_with_straight_through_gradient() -> Result<()> {
        let x = (music() * 1.0).set_requires_grad(true);
        let y = quantize(&x, 8)?;
        let err = val(&(&y - &x).abs().max());
        assert!(err <= 0.5 / 128.0 + 1e-6 && err > 0.0);
        let on_grid = val(&((&y * 128.0) - (&y * 128.0).round()).abs().max());
        assert!(on_grid < 1e-4);
        y.sum(Kind::Float).backward();
        assert!((val(&x.grad().mean(Kind::Float)) - 1.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn phase_shift_rotates_a_tone_and_keeps_its_spectrum() -> Result<()> {
        // 1 kHz fits a whole number of cycles in 1 s, so the FFT sees one clean line.
        let t = Tensor::arange(L, (Kind::Double, CPU)) / SR;
        let cos = |phi: f64| (&t * (2.0 * PI * 1000.0) + phi).cos().to_kind(Kind::Float);
        let y = phase_shift(&cos(0.0).unsqueeze(0), 0.7)?;
        assert!(val(&(y.squeeze() - cos(0.7)).abs().max()) < 1e-3);
        let x = music();
        let mag = |v: &Tensor| v.fft_rfft(None::<i64>, -1, "backward").abs();
        let z = phase_shift(&x, -2.0)?;
        assert!(val(&(mag(&z) - mag(&x)).abs().max()) < 1e-2);
        Ok(())
    }

    #[test]
    fn lowpass_removes_energy_above_cutoff() -> Result<()> {
        for fc in [3000.0, 6000.0] {
            let low = tone(fc / 4.0, 0.5, L, CPU).unsqueeze(0);
            let high = tone(fc * 3.0, 0.5, L, CPU).unsqueeze(0);
            let gl = db(
                val(&dsp::power(&lowpass(&low, fc)?)),
                val(&dsp::power(&low)),
            );
            let gh = db(
                val(&dsp::power(&lowpass(&high, fc)?)),
                val(&dsp::power(&high)),
            );
            assert!(gl.abs() < 0.5, "pass band {gl} dB");
            assert!(gh < -18.0, "stop band at 3×{fc}: {gh} dB");
        }
        Ok(())
    }

    #[test]
    fn bandpass_keeps_the_middle() -> Result<()> {
        let gain = |f: f64| -> Result<f64> {
            let x = tone(f, 0.5, L, CPU).unsqueeze(0);
            Ok(db(
                val(&dsp::power(&bandpass(&x, 400.0, 6000.0)?)),
                val(&dsp::power(&x)),
            ))
        };
        assert!(gain(1500.0)?.abs() < 0.5);
        assert!(gain(50.0)? < -30.0);
        assert!(gain(18_000.0)? < -15.0);
        Ok(())
    }

    #[test]
    fn smoothing_is_a_moving_average() -> Result<()> {
        let x = music();
        for w in [2, 5, 10] {
            let y = smooth(&x, w)?;
            assert_eq!(y.size(), x.size());
            // A tone at SR/w completes one cycle per window and averages to zero.
            let t = Tensor::arange(L, (Kind::Double, CPU));
            let null = (t * (2.0 * PI / w as f64))
                .cos()
                .to_kind(Kind::Float)
                .unsqueeze(0);
            let g = db(
                val(&dsp::power(&smooth(&null, w)?.narrow(1, 20, L - 40))),
                val(&dsp::power(&null)),
            );
            assert!(g < -40.0, "w={w}: {g} dB");
            let low = tone(50.0, 0.5, L, CPU).unsqueeze(0);
            let gl = db(val(&dsp::power(&smooth(&low, w)?)), val(&dsp::power(&low)));
            assert!(gl.abs() < 0.1);
        }
        // Direct check of the average itself, inside the signal.
        let ramp = Tensor::arange(100, (Kind::Float, CPU)).unsqueeze(0);
        let y = smooth(&ramp, 5)?;
        assert!((y.double_value(&[0, 50]) - 50.0).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn spec_augment_masks_its_band_and_its_time_span() -> Result<()> {
        let x = Tensor::cat(&[dsp::randn(&[1, L], 4, CPU) * 0.1], 0);
        let y = spec_mask(&x, (4000.0, 6000.0), (0.5, 0.6))?;
        let band = |v: &Tensor, lo, hi| -> Result<f64> { Ok(val(&band_energy(v, lo, hi)?)) };
        // The masked band loses most of its energy (edges of the time span leak a little).
        assert!(db(band(&y, 4200.0, 5800.0)?, band(&x, 4200.0, 5800.0)?) < -20.0);
        // A band away from the mask keeps ~90 % (everything but the 10 % time span).
        let kept = band(&y, 1000.0, 2000.0)? / band(&x, 1000.0, 2000.0)?;
        assert!((0.8..0.95).contains(&kept), "kept {kept}");
        // The time span is silent in its middle.
        let mid = y.narrow(1, (0.53 * L as f64) as i64, (0.04 * L as f64) as i64);
        assert!(val(&dsp::power(&mid)) < 1e-8);
        Ok(())
    }

    #[test]
    fn resampling_to_16k_removes_content_above_8k() -> Result<()> {
        let x = (tone(1000.0, 0.3, L, CPU) + tone(12_000.0, 0.3, L, CPU)).unsqueeze(0);
        let y = resample_round_trip(&x, 16_000.0)?;
        assert_eq!(y.size(), x.size());
        let above =
            val(&band_energy(&y, 8000.0, SR / 2.0)?) / val(&band_energy(&x, 8000.0, SR / 2.0)?);
        assert!(above < 1e-6, "{above}");
        let kept = val(&band_energy(&y, 900.0, 1100.0)?) / val(&band_energy(&x, 900.0, 1100.0)?);
        assert!((kept - 1.0).abs() < 1e-3);
        Ok(())
    }

    #[test]
    fn echo_repeats_after_100_ms() -> Result<()> {
        let x = Tensor::zeros([1, L], (Kind::Float, CPU));
        let _ = x.get(0).get(1000).fill_(1.0);
        let y = echo(&x, 0.1, 0.3)?;
        // Exact by design: the echo is a plain sum, and nothing delayed has arrived at sample 1000.
        assert_eq!(y.double_value(&[0, 1000]), 1.0);
        assert!((y.double_value(&[0, 1000 + 4410]) - 0.3).abs() < 1e-6);
        assert!((val(&y.abs().sum(Kind::Float)) - 1.3).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn reverb_adds_a_decaying_tail() -> Result<()> {
        let x = Tensor::zeros([1, L], (Kind::Float, CPU));
        let _ = x.get(0).get(100).fill_(1.0);
        let y = reverb(&x, 0.5, 0.4, 6)?;
        // The dry impulse is kept. The dry path goes through libtorch's convolution, whose rounding
        // depends on the CPU's kernels (0.99999994 on some machines), so this is a tolerance.
        let dry = y.double_value(&[0, 100]);
        assert!((dry - 1.0).abs() < 1e-5, "dry impulse {dry}");
        let seg = |a: f64, b: f64| {
            val(&dsp::power(&y.narrow(
                1,
                200 + (a * SR) as i64,
                ((b - a) * SR) as i64,
            )))
        };
        let (early, late) = (seg(0.0, 0.1), seg(0.3, 0.4));
        assert!(early > 0.0 && late > 0.0);
        // −60 dB over 0.5 s: about −36 dB between these windows, 0.3 s apart.
        let fall = db(late, early);
        assert!((-45.0..-25.0).contains(&fall), "{fall} dB");
        let tail_energy = val(&y.narrow(1, 101, L - 101).square().sum(Kind::Float));
        assert!((tail_energy - 0.16).abs() < 1e-3);
        Ok(())
    }

    /// A 1 kHz tone burst from 0.25 s to 0.75 s of a 1 s signal.
    fn burst() -> Tensor {
        let env = Tensor::zeros([L], (Kind::Float, CPU));
        let _ = env.narrow(0, L / 4, L / 2).fill_(1.0);
        (tone(1000.0, 0.5, L, CPU) * env).unsqueeze(0)
    }

    /// Seconds during which the 10 ms RMS envelope exceeds half the burst's level.
    fn active_seconds(y: &Tensor) -> f64 {
        let frames = y
            .squeeze()
            .unfold(0, 441, 441)
            .square()
            .mean_dim(1, false, Kind::Float)
            .sqrt();
        val(&frames
            .gt(0.5 * 0.5 / 2f64.sqrt() * 0.5)
            .to_kind(Kind::Float)
            .sum(Kind::Float))
            * 0.01
    }

    #[test]
    fn speed_changes_duration_and_keeps_pitch() -> Result<()> {
        for rate in [0.8, 1.25] {
            let y = time_stretch(&burst(), rate)?;
            assert_eq!(y.size()[1], (L as f64 / rate).round() as i64);
            let dur = active_seconds(&y);
            assert!(
                (dur - 0.5 / rate).abs() < 0.03,
                "rate {rate}: burst lasts {dur} s"
            );
            let f = peak_hz(&y.squeeze());
            assert!((f - 1000.0).abs() < 3.0, "rate {rate}: tone at {f} Hz");
        }
        Ok(())
    }

    #[test]
    fn pitch_shift_keeps_duration_and_moves_the_tone() -> Result<()> {
        let x = tone(1000.0, 0.5, L, CPU).unsqueeze(0);
        for s in [-2.0, 1.0, 2.0] {
            let y = pitch_shift(&x, s)?;
            assert_eq!(y.size(), x.size());
            let want = 1000.0 * 2f64.powf(s / 12.0);
            let f = peak_hz(&y.squeeze());
            assert!((f - want).abs() < 3.0, "{s} st: {f} Hz, want {want}");
            assert!((active_seconds(&pitch_shift(&burst(), s)?) - 0.5).abs() < 0.03);
        }
        Ok(())
    }

    #[test]
    fn speed_pitch_changes_both() -> Result<()> {
        let p = AttackParams::SpeedPitch {
            rate: 1.25,
            semitones: 2.0,
        };
        let y = p.apply(&burst())?;
        assert_eq!(y.size()[1], (L as f64 / 1.25).round() as i64);
        assert!((active_seconds(&y) - 0.4).abs() < 0.03);
        let f = peak_hz(&y.squeeze());
        assert!((f - 1000.0 * 2f64.powf(2.0 / 12.0)).abs() < 4.0, "{f}");
        Ok(())
    }

    #[test]
    fn eighteen_attacks_in_three_families() {
        let count = |f| Attack::ALL.iter().filter(|a| a.family() == f).count();
        assert_eq!(Attack::ALL.len(), 18);
        assert_eq!(
            (
                count(Family::BasicNoise),
                count(Family::Filter),
                count(Family::TimePitch)
            ),
            (8, 4, 6)
        );
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for a in Attack::ALL {
            assert_eq!(a.sample(&mut rng).attack(), a);
        }
    }

    #[test]
    fn every_attack_keeps_shape_and_passes_gradient() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = Tensor::stack(&[music(), music() * 0.5], 0).set_requires_grad(true); // [2, 1, L]
        for a in Attack::ALL {
            let p = a.sample(&mut rng);
            let y = dsp::fit_len(&p.apply(&x)?, L)?;
            assert_eq!(y.size(), x.size(), "{p:?}");
            assert!(y.isfinite().all().int64_value(&[]) == 1, "{p:?} not finite");
            let g = Tensor::run_backward(&[y.square().sum(Kind::Float)], &[&x], false, false);
            let gs = val(&g[0].abs().sum(Kind::Float));
            assert!(gs.is_finite() && gs > 0.0, "{p:?}: gradient {gs}");
        }
        Ok(())
    }

    #[test]
    fn apply_random_respects_families_and_replays() -> Result<()> {
        let x = Tensor::cat(&[music(), music(), music(), music()], 0); // [4, L]
        let run = |seed, mask| apply_random(&x, mask, &mut ChaCha8Rng::seed_from_u64(seed));
        let (a, pa) = run(1, FamilyMask::ALL)?;
        let (b, pb) = run(1, FamilyMask::ALL)?;
        assert_eq!(a.size(), x.size());
        assert_eq!(pa, pb);
        // Exact by design: a replay runs the same kernels on the same numbers in one process.
        assert_eq!(val(&(&a - &b).abs().max()), 0.0);
        for fam in [Family::BasicNoise, Family::Filter, Family::TimePitch] {
            let (y, ps) = run(2, FamilyMask::of(fam))?;
            assert_eq!(y.size(), x.size());
            assert!(ps.iter().all(|p| p.attack().family() == fam));
        }
        let stereo = x.view([2, 2, L]);
        assert_eq!(
            apply_random(&stereo, FamilyMask::ALL, &mut ChaCha8Rng::seed_from_u64(4))?
                .0
                .size(),
            [2, 2, L]
        );
        let (same, none) = run(3, FamilyMask::NONE)?;
        // Exact by design: with no family allowed, the input passes through untouched.
        assert!(none.is_empty() && val(&(same - &x).abs().max()) == 0.0);
        Ok(())
    }
}
