//! Deterministic test hosts for the channel's tests (here and the model exporter's): music-like notes and a speech-like
//! voice, with onsets, pitch changes and pauses (a steady tone would flatter the detector's
//! time high-pass). Not a substitute for real recordings: the end-to-end tests use those.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f64::consts::TAU;

const RATE: f64 = 44_100.0;

/// Adds `gains[h-1]·sin(2π·h·f0·t)` for t over `out`, by rotating phasors (no sin per sample).
fn add_harmonics(out: &mut [f64], f0: f64, gains: &[f64], env: impl Fn(usize) -> f64) {
    let rot: Vec<(f64, f64)> = (1..=gains.len())
        .map(|h| (TAU * f0 * h as f64 / RATE).sin_cos())
        .collect();
    let mut ph: Vec<(f64, f64)> = vec![(0.0, 1.0); gains.len()];
    for (i, x) in out.iter_mut().enumerate() {
        let mut v = 0.0;
        for ((s, c), ((rs, rc), g)) in ph.iter_mut().zip(rot.iter().zip(gains)) {
            v += g * *s;
            (*s, *c) = (*s * rc + *c * rs, *c * rc - *s * rs);
        }
        *x += env(i) * v;
    }
}

/// Notes of 0.1–0.5 s (random pitch 110–880 Hz, eight harmonics falling 1/h, attack and decay),
/// two voices, plus a hi-hat-like noise burst every 0.25 s and a faint noise floor.
pub fn music(seconds: f64, seed: u64) -> Vec<f32> {
    let n = (seconds * RATE) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0.0f64; n];
    for voice in 0..2 {
        let mut start = 0usize;
        while start < n {
            let len = ((rng.random_range(0.1..0.5) * RATE) as usize).min(n - start);
            let f0 = 110.0 * 2f64.powf(rng.random_range(0.0..3.0) + voice as f64 * 0.5);
            let amp = rng.random_range(0.05..0.2);
            let gains: Vec<f64> = (1..=8).map(|h| amp / h as f64).collect();
            let env = |i: usize| {
                let t = i as f64 / RATE;
                (t / 0.01).min(1.0) * (-t * 4.0).exp()
            };
            add_harmonics(&mut out[start..start + len], f0, &gains, env);
            start += len;
        }
    }
    let burst = (0.25 * RATE) as usize;
    for (i, x) in out.iter_mut().enumerate() {
        let t = (i % burst) as f64 / RATE;
        *x += rng.random_range(-1.0..1.0) * (0.05 * (-t * 60.0).exp() + 0.002);
    }
    out.into_iter().map(|x| x as f32).collect()
}

/// Voiced syllables (a 90–180 Hz harmonic source through three resonances that move per
/// syllable, up to 5 kHz) separated by pauses of near silence.
pub fn speech(seconds: f64, seed: u64) -> Vec<f32> {
    let n = (seconds * RATE) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0.0f64; n];
    let mut start = 0usize;
    while start < n {
        let len = ((rng.random_range(0.12..0.3) * RATE) as usize).min(n - start);
        let f0: f64 = rng.random_range(90.0..180.0);
        let formants = [
            rng.random_range(300.0..900.0),
            rng.random_range(900.0..2500.0),
            rng.random_range(2500.0..3500.0),
        ];
        let gains: Vec<f64> = (1..=(5000.0 / f0) as usize)
            .map(|h| {
                formants
                    .iter()
                    .map(|&fm| 0.05 / (1.0 + ((f0 * h as f64 - fm) / 120.0).powi(2)))
                    .sum()
            })
            .collect();
        add_harmonics(&mut out[start..start + len], f0, &gains, |i| {
            (std::f64::consts::PI * i as f64 / len as f64).sin()
        });
        start += len + (rng.random_range(0.03..0.15) * RATE) as usize;
    }
    out.into_iter()
        .map(|x| (x + rng.random_range(-1e-4..1e-4)) as f32)
        .collect()
}

/// One N(0, 1) draw (Box–Muller): the synthetic logits of the channel's tests and bench.
pub fn gauss(rng: &mut impl Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
}

/// White noise at the given RMS.
pub fn noise(seconds: f64, rms: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = rms * 3f32.sqrt();
    (0..(seconds * RATE) as usize)
        .map(|_| rng.random_range(-a..a))
        .collect()
}
