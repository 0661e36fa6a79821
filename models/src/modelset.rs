//! Finding a model folder and opening its models, checked against the manifest and contracts.

use std::path::{Path, PathBuf};

use crate::contract::Contract;
use crate::manifest::{self, Manifest, ManifestError};
use crate::runtime::{Model, Provider, RuntimeError};

/// Environment variable naming the model folder.
pub const MODELS_ENV: &str = "STEMMARK_MODELS";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Input(String),
}

/// The default model folder: `$STEMMARK_MODELS`, else `models/` beside the executable, else the
/// nearest `models/` with a manifest above the working directory or the executable (a checkout).
pub fn default_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(MODELS_ENV) {
        return Some(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(d) = &exe_dir {
        roots.push(d.clone());
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Some(d) = &exe_dir {
        roots.extend(d.ancestors().map(Path::to_path_buf));
    }
    roots.into_iter().map(|r| r.join("models")).find(|d| d.join(manifest::FILE).is_file())
}

/// ONNX Runtime threads per session when the caller does not say: every core (a command-line
/// tool has the machine to itself; a plugin instance should ask for 1).
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Opens one model of the folder `dir` after checking its manifest and checksum.
pub fn open(dir: &Path, contract: Contract, provider: Provider) -> Result<(Manifest, Model), ModelError> {
    open_with_threads(dir, contract, provider, all_cores())
}

/// [`open`] with a given number of intra-op threads.
pub fn open_with_threads(dir: &Path, contract: Contract, provider: Provider, threads: usize) -> Result<(Manifest, Model), ModelError> {
    let m = Manifest::load(dir)?;
    let path = m.verified_path(dir, &contract)?;
    let model = Model::open(&path, contract, provider, threads)?;
    Ok((m, model))
}

/// Checks planar audio: 1 or 2 channels of equal length, all finite.
pub fn check_channels(channels: &[Vec<f32>]) -> Result<(), ModelError> {
    if channels.is_empty() || channels.len() > 2 {
        return Err(ModelError::Input(format!("{} channels: mono or stereo only", channels.len())));
    }
    if channels.iter().any(|c| c.len() != channels[0].len()) {
        return Err(ModelError::Input("channels differ in length".into()));
    }
    for (i, c) in channels.iter().enumerate() {
        if let Some(p) = c.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::Input(format!("channel {i} has a non-finite sample at index {p}")));
        }
    }
    Ok(())
}

/// Mean of the channels.
pub fn mid(channels: &[Vec<f32>]) -> Vec<f32> {
    let n = channels.len().max(1) as f32;
    (0..channels.first().map_or(0, Vec::len)).map(|i| channels.iter().map(|c| c[i]).sum::<f32>() / n).collect()
}
