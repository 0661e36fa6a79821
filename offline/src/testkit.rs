//! Fixtures for tests: a complete plumbing model folder (the tile channel's models and a
//! random-weight separator, with a manifest marked `kind = "plumbing"`) and synthetic audio.

use std::path::Path;

use anyhow::Result;
use stemmark_models::decision::Calibration;
use stemmark_models::manifest::Manifest;
use stemmark_models::tile::Params;

use crate::audio::Audio;
use crate::onnx::testmodels::write_plumbing_models;

/// Writes plumbing models and their manifest into `dir`.
pub fn plumbing_model_dir(dir: &Path, seed: u64) -> Result<Manifest> {
    write_plumbing_models(dir, seed)?;
    let m = Manifest::describe(dir, "plumbing", Params::default(), Calibration::default())?;
    m.save(dir)?;
    Ok(m)
}

/// A stereo test signal: two detuned harmonic tones with a slow tremolo and a little noise.
pub fn music_like(rate: u32, seconds: f64, seed: u32) -> Audio {
    let n = (rate as f64 * seconds) as usize;
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32 - 0.5
    };
    let f0 = 110.0 * (1.0 + seed as f32 % 7.0 / 7.0);
    let ch: Vec<Vec<f32>> = (0..2)
        .map(|c| {
            (0..n)
                .map(|i| {
                    let t = i as f32 / rate as f32;
                    let trem = 0.6 + 0.4 * (2.0 * std::f32::consts::PI * 0.5 * t).sin();
                    let tone: f32 = (1..6)
                        .map(|h| (2.0 * std::f32::consts::PI * f0 * h as f32 * (1.0 + 0.002 * c as f32) * t).sin() / h as f32)
                        .sum();
                    0.15 * trem * tone + 0.01 * noise()
                })
                .collect()
        })
        .collect();
    Audio::new(rate, ch)
}
