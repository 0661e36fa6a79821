//! Band-limited voices for the evaluation's own scenario: full-band speech brought down to what
//! telephone and wide-band voice chains leave, before it is marked (the voice is the host, as a
//! podcast guest on a phone line or a voice from a video call would be).
//!
//! Three chains, cycled over the items: through 8 kHz (telephone band, < 4 kHz), through 16 kHz
//! (wide band, < 8 kHz), and Codec2 at 3200 bit/s (Debian's `codec2`: `c2enc`/`c2dec`, 8 kHz mono;
//! installed on first use). The result keeps the input's rate, channel count and length and is
//! brought back to the stem loudness, as every evaluation stem is.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use stemmark_models::resample;
use stemmark_models::spec::STEM_LUFS;

use crate::audio::{self, Audio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// Resampled through 8 kHz.
    Telephone,
    /// Resampled through 16 kHz.
    Wide,
    /// Codec2 3200 bit/s (8 kHz mono).
    Codec2,
}

impl Band {
    pub const ALL: [Band; 3] = [Band::Telephone, Band::Codec2, Band::Wide];

    pub fn name(self) -> &'static str {
        match self {
            Band::Telephone => "8 kHz",
            Band::Wide => "16 kHz",
            Band::Codec2 => "codec2 3200",
        }
    }

    /// The sample rate the voice passes through.
    fn rate(self) -> u32 {
        match self {
            Band::Telephone | Band::Codec2 => 8_000,
            Band::Wide => 16_000,
        }
    }
}

/// Makes sure `c2enc`/`c2dec` are there (installing Debian's `codec2` when allowed).
pub fn ensure_codec2(install: bool) -> Result<()> {
    if !crate::corpus::deps::ensure(&["codec2"], install).is_empty() {
        bail!("codec2 is not installed (apt-get install codec2)");
    }
    Ok(())
}

/// `voice` through `band`'s chain, at `voice`'s rate, channel count and length, at the stem
/// loudness. Codec2 is mono: its output goes to every channel.
pub fn apply(voice: &Audio, band: Band) -> Result<Audio> {
    let (rate, len) = (band.rate(), voice.len());
    let mut narrow = resample::resample_planar(&voice.channels, voice.rate, rate)?;
    if band == Band::Codec2 {
        let decoded = codec2(&Audio::new(rate, narrow).mid())?;
        narrow = vec![decoded; voice.channels.len()];
    }
    let mut channels = resample::resample_planar(&narrow, rate, voice.rate)?;
    for c in &mut channels {
        c.resize(len, 0.0);
    }
    let mut out = Audio::new(voice.rate, channels);
    if let Some(g) = audio::gain_to_lufs(&out, STEM_LUFS)? {
        out.scale(g);
    }
    Ok(out)
}

/// One 8 kHz channel through `c2enc 3200` and `c2dec 3200` (16-bit raw files), the same length.
fn codec2(x: &[f32]) -> Result<Vec<f32>> {
    let dir = tempfile::tempdir()?;
    let (raw, bits, back) = (
        dir.path().join("in.raw"),
        dir.path().join("in.c2"),
        dir.path().join("back.raw"),
    );
    // Headroom: codec2 clips at full scale, and stems at −16 LUFS can peak near it.
    let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let gain = if peak > 0.5 { 0.5 / peak } else { 1.0 };
    let pcm: Vec<u8> = x.iter().flat_map(|&v| i16_le(v * gain)).collect();
    std::fs::write(&raw, pcm)?;
    run("c2enc", &[&raw, &bits])?;
    run("c2dec", &[&bits, &back])?;
    let bytes = std::fs::read(&back)?;
    let mut y: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32767.0 / gain)
        .collect();
    y.resize(x.len(), 0.0);
    Ok(y)
}

fn i16_le(v: f32) -> [u8; 2] {
    ((v.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes()
}

fn run(tool: &str, files: &[&Path; 2]) -> Result<()> {
    let o = Command::new(tool)
        .arg("3200")
        .args(files)
        .output()
        .with_context(|| format!("cannot run {tool} (apt-get install codec2)"))?;
    if !o.status.success() {
        bail!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const RATE: u32 = 44_100;

    /// Share of `x`'s energy above `hz` (one FFT over the whole signal).
    fn share_above(x: &[f32], hz: f64) -> f64 {
        let mut buf = x.to_vec();
        let mut spec = realfft::RealFftPlanner::<f32>::new()
            .plan_fft_forward(buf.len())
            .make_output_vec();
        realfft::RealFftPlanner::<f32>::new()
            .plan_fft_forward(buf.len())
            .process(&mut buf, &mut spec)
            .unwrap();
        let bin_hz = RATE as f64 / x.len() as f64;
        let power: Vec<f64> = spec.iter().map(|c| c.norm_sqr() as f64).collect();
        let above: f64 = power
            .iter()
            .enumerate()
            .filter(|(k, _)| *k as f64 * bin_hz > hz)
            .map(|(_, p)| p)
            .sum();
        above / power.iter().sum::<f64>()
    }

    /// Stereo white noise, 3 s: energy at every frequency, so whatever is above the cut shows.
    fn noise() -> Audio {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let ch = |rng: &mut ChaCha8Rng| {
            (0..3 * RATE as usize)
                .map(|_| rng.random_range(-0.3f32..0.3))
                .collect()
        };
        Audio::new(RATE, vec![ch(&mut rng), ch(&mut rng)])
    }

    #[test]
    fn resampling_chains_cut_the_band_and_keep_shape_and_loudness() {
        let x = noise();
        // White noise holds ~82 % of its energy above 4 kHz and ~64 % above 8 kHz.
        assert!(share_above(&x.channels[0], 4_000.0) > 0.8);
        for (band, cut) in [(Band::Telephone, 4_000.0), (Band::Wide, 8_000.0)] {
            let y = apply(&x, band).unwrap();
            assert_eq!(
                (y.rate, y.channels.len(), y.len()),
                (RATE, 2, x.len()),
                "{band:?}"
            );
            for c in &y.channels {
                // The resampler's transition band sits just under the new Nyquist; −40 dB above it.
                let leak = share_above(c, cut);
                assert!(
                    leak < 1e-4,
                    "{band:?}: {leak:e} of the energy above {cut} Hz"
                );
                // And the band below stays flat: half the energy above half the cut.
                let upper = share_above(c, 0.5 * cut);
                assert!(
                    (0.46..0.51).contains(&upper),
                    "{band:?}: {upper} above half the cut"
                );
            }
            let lufs = audio::loudness(&y).unwrap().unwrap();
            assert!((lufs - STEM_LUFS).abs() < 0.1, "{band:?}: {lufs} LUFS");
        }
    }

    #[test]
    fn codec2_gives_a_mono_telephone_voice_of_the_same_length() {
        ensure_codec2(true).expect("Debian's codec2 (installed on first use)");
        // A voiced-like source: a 120 Hz pulse train through a decaying two-formant resonance,
        // syllables of 200 ms on, 100 ms off.
        let n = 3 * RATE as usize;
        let mut x = vec![0f32; n];
        let period = RATE as usize / 120;
        for i in (0..n).step_by(period) {
            if (i * 10 / RATE as usize) % 3 == 2 {
                continue;
            }
            for k in 0..period.min(n - i) {
                let t = k as f32 / RATE as f32;
                let f = |hz: f32| (2.0 * std::f32::consts::PI * hz * t).sin();
                x[i + k] += 0.3 * (-t * 300.0).exp() * (f(700.0) + 0.6 * f(1_200.0));
            }
        }
        let voice = Audio::new(RATE, vec![x.clone(), x]);
        let y = apply(&voice, Band::Codec2).unwrap();
        assert_eq!((y.rate, y.channels.len(), y.len()), (RATE, 2, voice.len()));
        assert_eq!(
            y.channels[0], y.channels[1],
            "codec2 is mono: one signal on both channels"
        );
        assert!(share_above(&y.channels[0], 4_000.0) < 1e-4);
        // Not silence and not the input: the codec resynthesises the voice.
        let lufs = audio::loudness(&y)
            .unwrap()
            .expect("codec2 output is not silent");
        assert!((lufs - STEM_LUFS).abs() < 0.1, "{lufs} LUFS");
        assert!(crate::eval::metrics::snr(&voice.channels[0], &y.channels[0]) < 10.0);
    }
}
