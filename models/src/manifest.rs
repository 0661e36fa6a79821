//! `manifest.toml` beside the ONNX files: what each file is (sha256), the signal spec it was
//! trained for, the detector's calibration, and the provenance of the run that made it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::contract::{self, Contract};
use crate::decision::Calibration;
use crate::spec::SignalSpec;
use crate::tile::Params;

pub const FORMAT: &str = "stemmark-models-2";
/// The learned channel's models (embedder and detector conditioned on a key vector).
const OLD_FORMATS: [&str; 1] = ["stemmark-models-1"];
pub const FILE: &str = "manifest.toml";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no model manifest at {0} (a model folder holds embedder.onnx, detector.onnx, separator.onnx and manifest.toml)")]
    Missing(PathBuf),
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{path} is not a Stemmark model manifest: {why}")]
    Format { path: PathBuf, why: String },
    #[error("the models in {dir} are format {found} (the learned channel); this build runs the tile channel, format {FORMAT}: upgrade the folder with `stemmark export --channel-only -o DIR` (keeps its separator), or use the models of this checkout or release (models/)")]
    OldFormat { dir: PathBuf, found: String },
    #[error("the models in {dir} were made for a different signal spec: {why}")]
    Spec { dir: PathBuf, why: String },
    #[error("{role} model file {path} is missing")]
    MissingModel { role: &'static str, path: PathBuf },
    #[error("{role} model {path} does not match its manifest (sha256 {found}, manifest says {expected}); the file is corrupt or was replaced")]
    Checksum { role: &'static str, path: PathBuf, found: String, expected: String },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelEntry {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: String,
    /// "trained" for shipped models; "plumbing" for random-weight test models, never shipped.
    pub kind: String,
    pub spec: SignalSpec,
    /// The tile channel's constants the models were built with (the graphs hold them as
    /// initialisers; the window combination in Rust reads them from here).
    pub channel: Params,
    pub calibration: Calibration,
    pub models: BTreeMap<String, ModelEntry>,
    /// Data, steps, hardware, wall time and measured metrics of the run (free-form).
    #[serde(default)]
    pub provenance: toml::Table,
    /// Earlier runs that were measured but not shipped.
    #[serde(default)]
    pub history: Vec<toml::Table>,
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

impl Manifest {
    /// A manifest describing the three model files already in `dir` (their checksums now).
    pub fn describe(dir: &Path, kind: &str, channel: Params, calibration: Calibration) -> Result<Manifest, ManifestError> {
        let mut models = BTreeMap::new();
        for c in contract::ALL {
            let path = dir.join(c.file);
            let sha256 = sha256_file(&path).map_err(|_| ManifestError::MissingModel { role: c.role, path })?;
            models.insert(c.role.to_string(), ModelEntry { file: c.file.to_string(), sha256 });
        }
        Ok(Manifest {
            format: FORMAT.into(),
            kind: kind.into(),
            spec: SignalSpec::CURRENT,
            channel,
            calibration,
            models,
            provenance: toml::Table::new(),
            history: Vec::new(),
        })
    }

    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Err(ManifestError::Missing(path));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ManifestError::Read { path: path.clone(), why: e.to_string() })?;
        // The format first: an old folder is named as such, not as a parse error of its fields.
        let format = toml::from_str::<toml::Table>(&text).ok().and_then(|t| t.get("format")?.as_str().map(String::from));
        if let Some(old) = format.filter(|f| OLD_FORMATS.contains(&f.as_str())) {
            return Err(ManifestError::OldFormat { dir: dir.into(), found: old });
        }
        let m: Manifest =
            toml::from_str(&text).map_err(|e| ManifestError::Format { path: path.clone(), why: e.message().to_string() })?;
        if m.format != FORMAT {
            return Err(ManifestError::Format { path, why: format!("unknown format {:?}", m.format) });
        }
        if m.spec != SignalSpec::CURRENT {
            let why = format!("{:?}; this build uses {:?}", m.spec, SignalSpec::CURRENT);
            return Err(ManifestError::Spec { dir: dir.into(), why });
        }
        Ok(m)
    }

    /// Writes `manifest.toml` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{FILE}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, dir.join(FILE))
    }

    /// Path of a model after checking that it exists and matches its checksum.
    pub fn verified_path(&self, dir: &Path, c: &Contract) -> Result<PathBuf, ManifestError> {
        let entry = self.models.get(c.role).ok_or_else(|| ManifestError::Format {
            path: dir.join(FILE),
            why: format!("no [models.{}] entry", c.role),
        })?;
        let path = dir.join(&entry.file);
        let found = sha256_file(&path).map_err(|_| ManifestError::MissingModel { role: c.role, path: path.clone() })?;
        if found != entry.sha256 {
            return Err(ManifestError::Checksum { role: c.role, path, found, expected: entry.sha256.clone() });
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for c in contract::ALL {
            std::fs::write(d.path().join(c.file), c.role).unwrap();
        }
        d
    }

    #[test]
    fn round_trip_and_checksums() {
        let d = fake_dir();
        let m = Manifest::describe(d.path(), "plumbing", Params::default(), Calibration::default()).unwrap();
        m.save(d.path()).unwrap();
        let back = Manifest::load(d.path()).unwrap();
        assert_eq!(back, m);
        assert!(back.verified_path(d.path(), &contract::DETECTOR).is_ok());
        std::fs::write(d.path().join("detector.onnx"), "tampered").unwrap();
        let e = back.verified_path(d.path(), &contract::DETECTOR).unwrap_err().to_string();
        assert!(e.contains("does not match its manifest"), "{e}");
        std::fs::remove_file(d.path().join("separator.onnx")).unwrap();
        let e = back.verified_path(d.path(), &contract::SEPARATOR).unwrap_err().to_string();
        assert!(e.contains("is missing"), "{e}");
    }

    #[test]
    fn wrong_spec_and_missing_manifest_are_clear() {
        let d = fake_dir();
        assert!(Manifest::load(d.path()).unwrap_err().to_string().contains("no model manifest"));
        let mut m = Manifest::describe(d.path(), "plumbing", Params::default(), Calibration::default()).unwrap();
        m.spec.hop += 1;
        m.save(d.path()).unwrap();
        assert!(Manifest::load(d.path()).unwrap_err().to_string().contains("different signal spec"));
    }

    #[test]
    fn an_old_model_folder_says_what_to_do() {
        let d = fake_dir();
        let old = "format = \"stemmark-models-1\"\nkind = \"trained\"\nmask_bound = 0.2\n";
        std::fs::write(d.path().join(FILE), old).unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("stemmark-models-1") && e.contains("stemmark export --channel-only"), "{e}");
    }
}
