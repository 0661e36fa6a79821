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

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(label: &str) -> ProgressBar {
    let pb = ProgressBar::new(1);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}/{eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// Adapts a progress bar to the models' `progress(done, total)` callbacks.
pub fn tick(pb: &ProgressBar) -> impl FnMut(usize, usize) + '_ {
    move |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    }
}
