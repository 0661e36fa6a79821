//! Signal helpers for corpus building: decoding through ffmpeg, silence removal, clip cutting and
//! 16-bit WAV output (half the disk of f32; the sources are 16-bit or lossy anyway).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use stemmark_models::spec::SAMPLE_RATE;

use crate::audio::Audio;

/// Analysis frame for silence detection: 50 ms.
pub const FRAME: usize = SAMPLE_RATE as usize / 20;
/// A frame is silent below this RMS (dBFS).
pub const SILENCE_DBFS: f32 = -55.0;
/// Silent frames kept on each side of sound, so cuts never clip onsets or decays (250 ms).
pub const MARGIN_FRAMES: usize = 5;

/// Decodes to stereo f32 at the model rate. WAV/FLAC already at the model rate are read directly;
/// everything else (Opus, which symphonia cannot decode, Vorbis, other rates) goes through ffmpeg.
pub fn decode(path: &Path) -> Result<Audio> {
    if matches!(path.extension().and_then(|e| e.to_str()), Some("wav" | "flac"))
        && let Ok(a) = crate::audio::read(path)
        && a.rate == SAMPLE_RATE
        && a.channels.len() <= 2
    {
        a.check_finite().with_context(|| path.display().to_string())?;
        return a.to_stereo();
    }
    decode_ffmpeg(path)
}

/// Most non-finite samples a render may hold and still be repaired (1 in 100 000).
const MAX_REPAIRED: f64 = 1e-5;

/// [`decode`] for synthesiser renders (LMMS): a few non-finite samples (a synth's first samples
/// came out −inf in one LMMS demo track) are set to 0 and counted, not fatal; more are an error.
pub fn decode_render(path: &Path) -> Result<(Audio, usize)> {
    let mut a = match crate::audio::read(path) {
        Ok(a) if a.rate == SAMPLE_RATE && a.channels.len() <= 2 => a,
        _ => return Ok((decode(path)?, 0)),
    };
    let total = a.channels.iter().map(Vec::len).sum::<usize>();
    let mut bad = 0;
    for x in a.channels.iter_mut().flatten().filter(|x| !x.is_finite()) {
        *x = 0.0;
        bad += 1;
    }
    if bad as f64 > MAX_REPAIRED * total as f64 {
        bail!("{}: {bad} of {total} samples are not finite", path.display());
    }
    Ok((a.to_stereo()?, bad))
}

fn decode_ffmpeg(path: &Path) -> Result<Audio> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-ac", "2", "-ar", &SAMPLE_RATE.to_string(), "-f", "f32le", "-"])
        .output()
        .context("cannot run ffmpeg (is it installed?)")?;
    if !out.status.success() {
        bail!("{}: ffmpeg failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let samples: Vec<f32> =
        out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if samples.len() < 2 {
        bail!("{}: no audio decoded", path.display());
    }
    let l = samples.iter().step_by(2).copied().collect();
    let r = samples.iter().skip(1).step_by(2).copied().collect();
    let a = Audio::new(SAMPLE_RATE, vec![l, r]);
    a.check_finite().with_context(|| path.display().to_string())?;
    Ok(a)
}

/// Zero-pads (or truncates) every channel to `n` samples.
pub fn set_len(a: &mut Audio, n: usize) {
    for c in &mut a.channels {
        c.resize(n, 0.0);
    }
}

/// Sample-wise sum of equally long stereo stems.
pub fn sum(stems: &[&Audio]) -> Audio {
    let n = stems.iter().map(|a| a.len()).max().unwrap_or(0);
    let mut out = Audio::new(SAMPLE_RATE, vec![vec![0.0; n]; 2]);
    for a in stems {
        for (o, c) in out.channels.iter_mut().zip(&a.channels) {
            for (x, y) in o.iter_mut().zip(c) {
                *x += y;
            }
        }
    }
    out
}

/// Signal-to-error ratio (dB) of `b` against reference `a` over their common length.
pub fn snr_db(a: &Audio, b: &Audio) -> f64 {
    let (mut s, mut e) = (0f64, 0f64);
    for (ca, cb) in a.channels.iter().zip(&b.channels) {
        for (x, y) in ca.iter().zip(cb) {
            s += (*x as f64).powi(2);
            e += (*x as f64 - *y as f64).powi(2);
        }
    }
    if e == 0.0 { f64::INFINITY } else { 10.0 * (s / e).log10() }
}

/// Sets the first `n` samples of every channel to 0.
pub fn zero_head(a: &mut Audio, n: usize) {
    for c in &mut a.channels {
        let k = n.min(c.len());
        c[..k].fill(0.0);
    }
}

/// Mean and spread (standard deviation) of `b`'s level minus `a`'s, in dB, over 400 ms frames
/// where `a` is above −60 dBFS; None if no frame is.
pub fn envelope_difference_db(a: &Audio, b: &Audio) -> Option<(f64, f64)> {
    let frame = SAMPLE_RATE as usize * 2 / 5;
    let level = |x: &Audio, f: usize| -> f64 {
        let e: f64 = x.channels.iter().map(|c| c[f * frame..(f + 1) * frame].iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).sum();
        10.0 * (e / (frame * x.channels.len()) as f64 + 1e-12).log10()
    };
    let frames = a.len().min(b.len()) / frame;
    let d: Vec<f64> = (0..frames).filter(|&f| level(a, f) > -60.0).map(|f| level(b, f) - level(a, f)).collect();
    if d.is_empty() {
        return None;
    }
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let spread = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    Some((mean, spread))
}

/// Per-frame "has sound" flags of the sum of `stems`.
fn active_frames(stems: &[&Audio]) -> Vec<bool> {
    let mix = sum(stems);
    let thresh = 10f32.powf(SILENCE_DBFS / 20.0);
    let n = mix.len();
    (0..n.div_ceil(FRAME))
        .map(|f| {
            let (a, b) = (f * FRAME, ((f + 1) * FRAME).min(n));
            let ms = mix.channels.iter().flat_map(|c| &c[a..b]).map(|x| x * x).sum::<f32>()
                / (2 * (b - a)) as f32;
            ms.sqrt() > thresh
        })
        .collect()
}

/// Removes the same silent stretches (of the stems' sum) from every stem, keeping a short margin
/// around sound; since every stem loses the same sample ranges, alignment is preserved.
pub fn drop_silence(stems: &[Audio]) -> Vec<Audio> {
    let refs: Vec<&Audio> = stems.iter().collect();
    let active = active_frames(&refs);
    let keep: Vec<bool> = (0..active.len())
        .map(|i| {
            let lo = i.saturating_sub(MARGIN_FRAMES);
            let hi = (i + MARGIN_FRAMES + 1).min(active.len());
            active[lo..hi].iter().any(|&x| x)
        })
        .collect();
    stems
        .iter()
        .map(|a| {
            let channels = a
                .channels
                .iter()
                .map(|c| {
                    let mut out = Vec::with_capacity(c.len());
                    for (f, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
                        // bounded by this stem's own length, should stems ever differ in length
                        out.extend_from_slice(&c[(f * FRAME).min(c.len())..((f + 1) * FRAME).min(c.len())]);
                    }
                    out
                })
                .collect();
            Audio::new(a.rate, channels)
        })
        .collect()
}

/// Cuts aligned stems into consecutive `len`-sample clips; a remainder of at least half a clip is
/// zero-padded to full length, a shorter one dropped. Returns clips × stems.
pub fn cut_clips(stems: &[Audio], len: usize) -> Vec<Vec<Audio>> {
    let n = stems.iter().map(Audio::len).min().unwrap_or(0);
    let mut clips = Vec::new();
    let mut start = 0;
    while start < n && n - start >= len / 2 {
        let end = (start + len).min(n);
        clips.push(
            stems
                .iter()
                .map(|a| {
                    let mut c = Audio::new(a.rate, a.channels.iter().map(|c| c[start..end].to_vec()).collect());
                    set_len(&mut c, len);
                    c
                })
                .collect(),
        );
        start += len;
    }
    clips
}

/// Gain (≤ 1) that keeps every stem's peak at or below 0.9, applied to all stems alike so their
/// relative levels — and the mix they sum to — are kept.
pub fn headroom_gain(stems: &[Audio]) -> f32 {
    let peak = stems.iter().map(Audio::peak).fold(0.0f32, f32::max);
    if peak > 0.9 { 0.9 / peak } else { 1.0 }
}

/// Writes a corpus clip: 16-bit PCM (half the disk of f32), atomically.
pub fn write_pcm16(path: &Path, audio: &Audio) -> Result<()> {
    crate::audio::write_wav_as(path, audio, crate::audio::WavFormat::Pcm16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_f32(path: &Path, samples: &[f32]) {
        let spec = hound::WavSpec { channels: 1, sample_rate: SAMPLE_RATE, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        samples.iter().for_each(|&x| w.write_sample(x).unwrap());
        w.finalize().unwrap();
    }

    #[test]
    fn envelope_difference_sees_level_not_waveform() {
        // The same loudness contour on two unrelated noises: a sample check fails, this passes.
        let noise = |seed: u64, n: usize| -> Vec<f32> {
            let mut s = seed;
            (0..n).map(|i| {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                let env = if (i / 30_000) % 2 == 0 { 0.5 } else { 0.05 };
                env * ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            }).collect()
        };
        let n = 10 * SAMPLE_RATE as usize;
        let (a, b) = (Audio::new(SAMPLE_RATE, vec![noise(1, n)]), Audio::new(SAMPLE_RATE, vec![noise(2, n)]));
        assert!(snr_db(&a, &b) < 1.0);
        let (mean, spread) = envelope_difference_db(&a, &b).unwrap();
        assert!(mean.abs() < 0.3 && spread < 1.5, "mean {mean}, spread {spread}");
        let mut louder = b.clone();
        louder.channels[0].iter_mut().for_each(|x| *x *= 2.0);
        let (mean, _) = envelope_difference_db(&a, &louder).unwrap();
        assert!((mean - 6.02).abs() < 0.3, "6 dB louder reads {mean}");
        assert!(envelope_difference_db(&Audio::new(SAMPLE_RATE, vec![vec![0.0; n]]), &b).is_none());
        let mut head = a.clone();
        zero_head(&mut head, 256);
        assert!(head.channels[0][..256].iter().all(|&x| x == 0.0) && head.channels[0][256] == a.channels[0][256]);
    }

    #[test]
    fn a_render_with_a_few_non_finite_samples_is_repaired_and_one_with_many_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut x: Vec<f32> = (0..200_000).map(|i| (i as f32 * 0.01).sin() * 0.5).collect();
        x[130] = f32::NEG_INFINITY;
        let one = dir.path().join("one.wav");
        write_f32(&one, &x);
        let (a, bad) = decode_render(&one).unwrap();
        assert_eq!(bad, 1);
        assert_eq!((a.channels.len(), a.channels[0][130], a.channels[1][131]), (2, 0.0, x[131]));
        assert!(decode(&one).is_err(), "plain decoding still refuses it");
        x.iter_mut().step_by(1000).for_each(|v| *v = f32::NAN);
        let many = dir.path().join("many.wav");
        write_f32(&many, &x);
        let err = format!("{:#}", decode_render(&many).unwrap_err());
        assert!(err.contains("201 of 200000 samples are not finite"), "{err}");
    }

    fn tone(n: usize, amp: f32) -> Audio {
        let x: Vec<f32> = (0..n).map(|i| amp * (i as f32 * 0.05).sin()).collect();
        Audio::new(SAMPLE_RATE, vec![x.clone(), x])
    }

    #[test]
    fn silence_is_dropped_identically_from_all_stems() {
        let sr = SAMPLE_RATE as usize;
        let mut a = tone(sr, 0.3);
        a.channels.iter_mut().for_each(|c| c.extend(vec![0.0; 6 * sr]));
        let mut b = tone(6 * sr, 0.0);
        b.channels.iter_mut().for_each(|c| c.extend(tone(sr, 0.2).channels[0].iter()));
        let out = drop_silence(&[a.clone(), b.clone()]);
        assert_eq!(out[0].len(), out[1].len());
        // 2 s of sound plus at most two margins per edge kept
        assert!(out[0].len() <= 2 * sr + 4 * MARGIN_FRAMES * FRAME + FRAME, "{}", out[0].len());
        assert!(out[0].len() >= 2 * sr);
        // the sum of the cut stems equals the cut of the sum
        let cut_sum = drop_silence(&[sum(&[&a, &b])]).remove(0);
        assert!(snr_db(&cut_sum, &sum(&[&out[0], &out[1]])) > 100.0);
    }

    #[test]
    fn clips_are_full_length_and_remainders_handled() {
        let clips = cut_clips(&[tone(250, 0.1), tone(250, 0.2)], 100);
        assert_eq!(clips.len(), 3); // 100, 100, 50 padded to 100
        assert!(clips.iter().flatten().all(|c| c.len() == 100));
        assert_eq!(cut_clips(&[tone(240, 0.1)], 100).len(), 2); // 40 < 50 dropped
    }
}
