//! The `stemmark` subcommands that work on files.

pub mod bench;
pub mod calibrate;
pub mod detect;
pub mod embed;
pub mod export;
pub mod keygen;
pub mod mix;
pub mod separate;
#[cfg(feature = "train")]
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use stemmark_models::keys::Key;
use stemmark_models::resample;
use stemmark_models::runtime::Provider;
use stemmark_models::spec::SAMPLE_RATE;

use crate::audio::{self, Audio};

/// Options every model-running command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelOpts {
    /// Folder with embedder.onnx, detector.onnx, separator.onnx and manifest.toml
    /// [default: $STEMMARK_MODELS, else models/ beside the executable or in the checkout]
    #[arg(long, global = true)]
    pub models: Option<PathBuf>,
    /// Where inference runs: cpu or cuda (CUDA fails loudly if unavailable; no silent fall-back)
    #[arg(long, global = true, default_value = "cpu")]
    pub provider: Provider,
    /// ONNX Runtime library file [default: $STEMMARK_ORT_LIB, beside the executable, .deps/]
    #[arg(long, global = true)]
    pub ort_lib: Option<PathBuf>,
}

impl ModelOpts {
    /// Loads ONNX Runtime and returns the model folder.
    pub fn prepare(&self) -> Result<PathBuf> {
        stemmark_models::runtime::init(self.ort_lib.as_deref(), &[])?;
        match &self.models {
            Some(d) => Ok(d.clone()),
            None => stemmark_models::modelset::default_dir().context(
                "no model folder found: pass --models DIR or set STEMMARK_MODELS (trained models live in models/ of the repository)",
            ),
        }
    }
}

/// Keys named on the command line: key files and passphrases.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyOpts {
    /// Key file (repeat for a key ring)
    #[arg(long = "key", short = 'k')]
    pub key_files: Vec<PathBuf>,
    /// Passphrase to derive a key from (repeat for a key ring; prefer --passphrase-env)
    #[arg(long = "passphrase")]
    pub passphrases: Vec<String>,
    /// Environment variable holding a passphrase (keeps it out of the process list)
    #[arg(long = "passphrase-env")]
    pub passphrase_envs: Vec<String>,
}

impl KeyOpts {
    pub fn load(&self) -> Result<Vec<Key>> {
        let mut keys = Vec::new();
        for p in &self.key_files {
            keys.push(Key::load(p)?);
        }
        for (i, p) in self.passphrases.iter().enumerate() {
            keys.push(Key::from_passphrase(p, format!("passphrase-{}", i + 1))?);
        }
        for var in &self.passphrase_envs {
            let p = std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
            keys.push(Key::from_passphrase(&p, var.clone())?);
        }
        if keys.is_empty() {
            bail!("no key given: use --key FILE (make one with `stemmark keygen`), --passphrase or --passphrase-env");
        }
        Ok(keys)
    }
}

/// Reads an audio file for the models: checked for NaN/Inf and channel count, resampled to
/// 44.1 kHz. Returns the audio and the file's own rate.
pub fn load_for_models(path: &Path) -> Result<(Audio, u32)> {
    let a = audio::read(path)?;
    if a.channels.len() > 2 {
        bail!("{}: {} channels; Stemmark reads mono or stereo stems and mixes", path.display(), a.channels.len());
    }
    a.check_finite().with_context(|| format!("{}", path.display()))?;
    let rate = a.rate;
    let channels = resample::resample_planar(&a.channels, rate, SAMPLE_RATE)
        .with_context(|| format!("{}: cannot resample from {rate} Hz", path.display()))?;
    Ok((Audio::new(SAMPLE_RATE, channels), rate))
}

/// Brings model-rate audio back to `rate`.
pub fn to_rate(a: &Audio, rate: u32) -> Result<Audio> {
    Ok(Audio::new(rate, resample::resample_planar(&a.channels, a.rate, rate)?))
}

/// A progress bar on stderr. When stderr is not a terminal (a `nohup … > log` run), the bar's line
/// is written to it as plain text at most every [`LOG_PROGRESS_EVERY`], so a long evaluation or
/// calibration shows where it is in its log; runs shorter than that print nothing.
pub fn progress(label: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let pb = ProgressBar::new(1);
    if !std::io::stderr().is_terminal() {
        let log = LogLines::new(Box::new(std::io::stderr()), LOG_PROGRESS_EVERY);
        pb.set_draw_target(indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(log), 1));
    }
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}/{eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// How often a progress line goes to a log that is not a terminal.
pub const LOG_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A "terminal" that writes a progress bar's line as one plain line, at most once per `every`
/// (indicatif draws a bar as text plus cursor moves; the moves are dropped).
struct LogLines {
    out: std::sync::Mutex<Box<dyn std::io::Write + Send>>,
    every: std::time::Duration,
    line: std::sync::Mutex<String>,
    last: std::sync::Mutex<std::time::Instant>,
}

impl LogLines {
    fn new(out: Box<dyn std::io::Write + Send>, every: std::time::Duration) -> LogLines {
        LogLines { out: std::sync::Mutex::new(out), every, line: Default::default(), last: std::sync::Mutex::new(std::time::Instant::now()) }
    }
}

impl std::fmt::Debug for LogLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLines")
    }
}

impl indicatif::TermLike for LogLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.line.lock().expect("progress line").push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        let line = std::mem::take(&mut *self.line.lock().expect("progress line"));
        let mut last = self.last.lock().expect("progress clock");
        let text = line.trim();
        if !text.is_empty() && last.elapsed() >= self.every {
            *last = std::time::Instant::now();
            writeln!(self.out.lock().expect("progress output"), "{text}")?;
        }
        Ok(())
    }
}

/// Adapts a progress bar to the models' `progress(done, total)` callbacks.
pub fn tick(pb: &ProgressBar) -> impl FnMut(usize, usize) + '_ {
    move |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn a_bar_in_a_log_becomes_plain_lines_at_most_once_per_interval() {
        let out = Shared::default();
        let pb = ProgressBar::new(3);
        pb.set_draw_target(indicatif::ProgressDrawTarget::term_like(Box::new(LogLines::new(Box::new(out.clone()), std::time::Duration::ZERO))));
        pb.set_style(ProgressStyle::with_template("{msg} {pos}/{len}").unwrap());
        pb.set_message("calibrate");
        for _ in 0..3 {
            pb.inc(1);
            pb.tick();
        }
        let text = out.text();
        assert!(text.lines().any(|l| l == "calibrate 3/3"), "{text:?}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "no terminal codes: {text:?}");

        // Within the interval nothing more is written.
        let quiet = Shared::default();
        let log = LogLines::new(Box::new(quiet.clone()), std::time::Duration::from_secs(3600));
        log.write_str("eval [=> ] 1/9").unwrap();
        log.flush().unwrap();
        assert_eq!(quiet.text(), "");
    }
}
