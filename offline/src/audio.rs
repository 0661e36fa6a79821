//! Audio files in and out: decode anything symphonia reads, write WAV atomically, measure loudness.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Planar f32 audio: `channels[c][i]`, all channels the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    pub fn new(rate: u32, channels: Vec<Vec<f32>>) -> Self {
        debug_assert!(channels.windows(2).all(|w| w[0].len() == w[1].len()));
        Audio { rate, channels }
    }

    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn seconds(&self) -> f64 {
        self.len() as f64 / self.rate as f64
    }

    /// Mean of the channels (the signal the detector reads).
    pub fn mid(&self) -> Vec<f32> {
        let n = self.channels.len().max(1) as f32;
        (0..self.len())
            .map(|i| self.channels.iter().map(|c| c[i]).sum::<f32>() / n)
            .collect()
    }

    /// Stereo copy: mono is duplicated, stereo kept; more channels are an error.
    pub fn to_stereo(&self) -> Result<Audio> {
        match self.channels.len() {
            1 => Ok(Audio::new(self.rate, vec![self.channels[0].clone(), self.channels[0].clone()])),
            2 => Ok(self.clone()),
            n => bail!("{n}-channel audio is not supported (mono or stereo only)"),
        }
    }

    /// Fails on NaN or infinite samples, naming where the first one is.
    pub fn check_finite(&self) -> Result<()> {
        for (c, ch) in self.channels.iter().enumerate() {
            if let Some(i) = ch.iter().position(|x| !x.is_finite()) {
                bail!(
                    "channel {c} has a non-finite sample ({}) at {:.3} s",
                    ch[i],
                    i as f64 / self.rate as f64
                );
            }
        }
        Ok(())
    }

    pub fn peak(&self) -> f32 {
        self.channels.iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()))
    }

    pub fn scale(&mut self, gain: f32) {
        self.channels.iter_mut().flatten().for_each(|x| *x *= gain);
    }
}

/// Decodes a WAV, FLAC, MP3 or Ogg/Vorbis file to f32 at its own rate and channel count.
pub fn read(path: &Path) -> Result<Audio> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| anyhow!("{}: not a readable audio file ({e})", path.display()))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| anyhow!("{}: no audio track", path.display()))?;
    let track_id = track.id;
    let rate = track
        .codec_params
        .sample_rate
        .ok_or_else(|| anyhow!("{}: unknown sample rate", path.display()))?;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| anyhow!("{}: unsupported codec ({e})", path.display()))?;

    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => bail!("{}: corrupt stream ({e})", path.display()),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet is skipped, as players do; a truncated file ends at EOF above.
            Err(SymError::DecodeError(_)) => continue,
            Err(e) => bail!("{}: decode failed ({e})", path.display()),
        };
        let spec = *decoded.spec();
        let n_ch = spec.channels.count();
        if channels.is_empty() {
            channels = vec![Vec::new(); n_ch];
        } else if channels.len() != n_ch {
            bail!("{}: channel count changes mid-stream", path.display());
        }
        let sb = buf.get_or_insert_with(|| SampleBuffer::new(decoded.capacity() as u64, spec));
        if sb.capacity() < decoded.capacity() {
            *sb = SampleBuffer::new(decoded.capacity() as u64, spec);
        }
        sb.copy_interleaved_ref(decoded);
        for frame in sb.samples().chunks_exact(n_ch) {
            for (c, &x) in frame.iter().enumerate() {
                channels[c].push(x);
            }
        }
    }
    if channels.is_empty() || channels[0].is_empty() {
        bail!("{}: no audio samples could be decoded", path.display());
    }
    Ok(Audio::new(rate, channels))
}

/// Sample format of a written WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    /// 32-bit float: lossless for our f32 audio, the default for outputs.
    F32,
    /// 16-bit PCM (rounded, clipped to full scale): half the size, for the corpus.
    Pcm16,
}

/// Writes 32-bit float WAV; see [`write_wav_as`].
pub fn write_wav(path: &Path, audio: &Audio) -> Result<()> {
    write_wav_as(path, audio, WavFormat::F32)
}

/// Writes WAV through a temporary file in the same folder, renamed into place only when
/// complete, so a failed or interrupted write never leaves a half-written output.
pub fn write_wav_as(path: &Path, audio: &Audio, format: WavFormat) -> Result<()> {
    if audio.channels.is_empty() {
        bail!("refusing to write {}: no channels", path.display());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".stemmark-")
        .suffix(".wav.tmp")
        .permissions(crate::audio::new_file_permissions())
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    {
        let (bits_per_sample, sample_format) = match format {
            WavFormat::F32 => (32, hound::SampleFormat::Float),
            WavFormat::Pcm16 => (16, hound::SampleFormat::Int),
        };
        let spec = hound::WavSpec { channels: audio.channels.len() as u16, sample_rate: audio.rate, bits_per_sample, sample_format };
        let mut w = hound::WavWriter::new(std::io::BufWriter::new(tmp.as_file()), spec)?;
        for i in 0..audio.len() {
            for ch in &audio.channels {
                match format {
                    WavFormat::F32 => w.write_sample(ch[i])?,
                    WavFormat::Pcm16 => w.write_sample((ch[i] * 32767.0).round().clamp(-32768.0, 32767.0) as i16)?,
                }
            }
        }
        w.finalize()?;
    }
    tmp.persist(path).map_err(|e| anyhow!("cannot move output into {}: {e}", path.display()))?;
    Ok(())
}

/// Integrated loudness (EBU R128) in LUFS; `None` for silence or audio too short to gate.
pub fn loudness(audio: &Audio) -> Result<Option<f64>> {
    let n_ch = audio.channels.len() as u32;
    let mut meter = ebur128::EbuR128::new(n_ch, audio.rate, ebur128::Mode::I)
        .map_err(|e| anyhow!("loudness meter: {e:?}"))?;
    let refs: Vec<&[f32]> = audio.channels.iter().map(Vec::as_slice).collect();
    meter.add_frames_planar_f32(&refs).map_err(|e| anyhow!("loudness meter: {e:?}"))?;
    let l = meter.loudness_global().map_err(|e| anyhow!("loudness meter: {e:?}"))?;
    Ok(l.is_finite().then_some(l))
}

/// Gain that brings `audio` to `target` LUFS; `None` when the audio is silent.
pub fn gain_to_lufs(audio: &Audio, target: f64) -> Result<Option<f32>> {
    Ok(loudness(audio)?.map(|l| 10f64.powf((target - l) / 20.0) as f32))
}

/// Permissions for output files written through a temp file: tempfile makes them 0600, but a
/// marked stem or an exported model is an ordinary file (0666 minus the umask, like `cp`).
#[cfg(unix)]
pub fn new_file_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o666)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, secs: f64, amp: f32) -> Audio {
        let n = (rate as f64 * secs) as usize;
        let x: Vec<f32> = (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * 997.0 * i as f32 / rate as f32).sin())
            .collect();
        Audio::new(rate, vec![x.clone(), x])
    }

    #[test]
    fn wav_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        let a = sine(48_000, 0.5, 0.5);
        write_wav(&p, &a).unwrap();
        assert_eq!(read(&p).unwrap(), a);
        // no temporary files are left beside the output
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn truncated_and_garbage_files_give_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        write_wav(&p, &sine(44_100, 1.0, 0.5)).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &bytes[..30]).unwrap();
        assert!(read(&cut).is_err());
        let junk = dir.path().join("junk.mp3");
        std::fs::write(&junk, b"this is not audio at all").unwrap();
        assert!(read(&junk).is_err());
        // a file cut mid-data still decodes what is there
        let half = dir.path().join("half.wav");
        std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
        let a = read(&half).unwrap();
        assert!(a.len() > 10_000 && a.len() < 44_100);
    }

    #[test]
    fn loudness_of_full_scale_sine_and_silence() {
        // Stereo 1 kHz sine of peak A: each channel's mean square is A²/2, the two channels sum to
        // A², and K-weighting's +0.69 dB at 1 kHz cancels BS.1770's -0.691 offset: 20·log10(A) LUFS.
        let l = loudness(&sine(48_000, 3.0, 0.1)).unwrap().unwrap();
        assert!((l + 20.0).abs() < 0.1, "{l}");
        assert!(loudness(&Audio::new(48_000, vec![vec![0.0; 96_000]])).unwrap().is_none());
    }

    #[test]
    fn non_finite_samples_are_named() {
        let mut a = sine(44_100, 0.1, 0.5);
        a.channels[1][100] = f32::NAN;
        let e = a.check_finite().unwrap_err().to_string();
        assert!(e.contains("channel 1"), "{e}");
    }
}
