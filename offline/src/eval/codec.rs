//! Codec attacks on the mix: MP3 at 128 kbit/s and Opus at 64 kbit/s through Debian's ffmpeg
//! (installed on first use). ffmpeg honours the MP3 encoder delay (LAME tag) and Opus pre-skip,
//! so the decoded audio stays on the block grid; a test checks that.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use stemmark_models::resample;

use crate::audio::{self, Audio};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Codec {
    #[serde(rename = "mp3-128k")]
    Mp3,
    #[serde(rename = "opus-64k")]
    Opus,
}

impl Codec {
    pub const ALL: [Codec; 2] = [Codec::Mp3, Codec::Opus];

    pub fn name(self) -> &'static str {
        match self {
            Codec::Mp3 => "MP3 128 kbit/s",
            Codec::Opus => "Opus 64 kbit/s",
        }
    }

    fn encode_args(self) -> (&'static [&'static str], &'static str) {
        match self {
            Codec::Mp3 => (&["-c:a", "libmp3lame", "-b:a", "128k"], "mp3"),
            // Opus runs at 48 kHz; ffmpeg resamples in and out.
            Codec::Opus => (&["-c:a", "libopus", "-b:a", "64k"], "opus"),
        }
    }
}

/// Makes sure ffmpeg is there (installing the Debian package when allowed); an error says why not.
pub fn ensure_ffmpeg(install: bool) -> Result<()> {
    let missing = crate::corpus::deps::ensure(&["ffmpeg"], install);
    if !missing.is_empty() {
        bail!("ffmpeg is not installed (apt-get install ffmpeg)");
    }
    Ok(())
}

/// Encodes and decodes `a` with `codec`; the result has `a`'s rate, channel count and length.
pub fn roundtrip(a: &Audio, codec: Codec) -> Result<Audio> {
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("in.wav");
    audio::write_wav(&wav, a)?;
    let (args, ext) = codec.encode_args();
    let coded = dir.path().join(format!("coded.{ext}"));
    ffmpeg(&[&["-i", s(&wav)], args, &[s(&coded)]].concat())?;
    let back = dir.path().join("back.wav");
    ffmpeg(&["-i", s(&coded), "-c:a", "pcm_f32le", s(&back)])?;
    let d = audio::read(&back)?;
    let mut channels = resample::resample_planar(&d.channels, d.rate, a.rate)?;
    for c in &mut channels {
        c.resize(a.len(), 0.0);
    }
    channels.truncate(a.channels.len());
    Ok(Audio::new(a.rate, channels))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn ffmpeg(args: &[&str]) -> Result<()> {
    let o = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .context("cannot run ffmpeg")?;
    if !o.status.success() {
        bail!("ffmpeg failed: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lag (in samples, within ±600) that best aligns `b` to `a`, over one second of audio.
    fn lag(a: &[f32], b: &[f32]) -> i64 {
        (-600i64..=600)
            .max_by(|&x, &y| {
                let c = |l: i64| -> f64 {
                    (20_000..64_100).map(|i| a[i] as f64 * b[(i as i64 + l) as usize] as f64).sum()
                };
                c(x).total_cmp(&c(y))
            })
            .unwrap()
    }

    #[test]
    fn codecs_keep_length_and_alignment() {
        if ensure_ffmpeg(false).is_err() {
            eprintln!("skipped: ffmpeg is not installed");
            return;
        }
        // Broadband noise: its correlation has one peak (a tone's would repeat every period).
        let mut state = 0x9E37_79B9u32;
        let noise: Vec<f32> = (0..3 * 44_100)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                0.3 * (state as f32 / u32::MAX as f32 - 0.5)
            })
            .collect();
        let a = Audio::new(44_100, vec![noise.clone(), noise]);
        for codec in Codec::ALL {
            let b = roundtrip(&a, codec).unwrap();
            assert_eq!((b.rate, b.channels.len(), b.len()), (a.rate, 2, a.len()));
            assert_eq!(lag(&a.channels[0], &b.channels[0]), 0, "{codec:?} shifts the audio");
            let snr = crate::eval::metrics::snr(&a.channels[0], &b.channels[0]);
            // Perceptual codecs do not keep white noise's waveform; it must still be the same signal.
            assert!(snr > 0.5, "{codec:?}: SNR {snr}");
        }
    }
}
