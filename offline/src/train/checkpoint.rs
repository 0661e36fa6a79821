//! The three networks with their variable stores, and their weights as one safetensors file.
//!
//! Each net has its own `VarStore` (so a stage can train, freeze or optimise them separately) whose
//! root is the net's name, so every weight is stored as `<net>.<module path>.<tensor>`: stable
//! across runs and the names `stemmark export` reads.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::nets::NetConfig;
use super::nets::detector::Detector;
use super::nets::embedder::Embedder;
use super::nets::separator::Separator;

pub struct Nets {
    pub config: NetConfig,
    pub embedder_vs: VarStore,
    pub detector_vs: VarStore,
    pub separator_vs: VarStore,
    pub embedder: Embedder,
    pub detector: Detector,
    pub separator: Separator,
}

impl Nets {
    /// Freshly initialised nets on `device` (seed libtorch first with `tch::manual_seed` for
    /// reproducible weights).
    pub fn new(config: &NetConfig, device: Device) -> Result<Nets> {
        config.validate()?;
        let embedder_vs = VarStore::new(device);
        let detector_vs = VarStore::new(device);
        let separator_vs = VarStore::new(device);
        let embedder = Embedder::new(&(embedder_vs.root() / "embedder"), &config.embedder);
        let detector = Detector::new(&(detector_vs.root() / "detector"), &config.detector);
        let separator = Separator::new(&(separator_vs.root() / "separator"), &config.separator);
        let mut nets = Nets {
            config: config.clone(),
            embedder_vs,
            detector_vs,
            separator_vs,
            embedder,
            detector,
            separator,
        };
        nets.start_detector_as_matched_filter();
        Ok(nets)
    }

    /// Sets the detector to the matched filter of the embedder's direct pattern, where both nets'
    /// configurations allow it (see [`Detector::start_as_matched_filter`]); true if it did.
    pub fn start_detector_as_matched_filter(&mut self) -> bool {
        let Some(direct) = self.embedder_vs.variables().get("embedder.direct.weight").map(|t| t.detach()) else {
            return false;
        };
        self.detector.start_as_matched_filter(&self.config.detector, &direct)
    }

    fn stores(&self) -> [&VarStore; 3] {
        [&self.embedder_vs, &self.detector_vs, &self.separator_vs]
    }

    /// Every variable of the three nets by its stable name.
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> =
            self.stores().iter().flat_map(|vs| vs.variables()).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Writes every weight (f32, on the CPU) to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, Tensor)> = self
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
            .collect();
        let tmp = path.with_extension("safetensors.tmp");
        Tensor::write_safetensors(&named, &tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    }

    /// Loads weights saved by [`save`](Self::save); every variable must be there with its shape,
    /// and the file may hold nothing else.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        self.load_where(path, |_| true)
    }

    /// Loads only the variables of one net (`"separator"`: those named `separator.…`) from a
    /// file saved by [`save`](Self::save).
    pub fn load_net(&mut self, path: &Path, net: &str) -> Result<()> {
        let prefix = format!("{net}.");
        self.load_where(path, |name| name.starts_with(&prefix))
    }

    fn load_where(&mut self, path: &Path, wanted: impl Fn(&str) -> bool) -> Result<()> {
        let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .into_iter()
            .collect();
        let vars: Vec<(String, Tensor)> = self.variables().into_iter().filter(|(n, _)| wanted(n)).collect();
        ensure!(!vars.is_empty(), "no variable of these nets is wanted from {}", path.display());
        let all = self.variables();
        if let Some(extra) = file.keys().find(|k| !all.iter().any(|(n, _)| n == *k)) {
            bail!(
                "{} holds `{extra}`, which these nets do not have (a different network config?)",
                path.display()
            );
        }
        tch::no_grad(|| -> Result<()> {
            for (name, mut var) in vars {
                let src = file
                    .get(&name)
                    .with_context(|| format!("{} has no `{name}`", path.display()))?;
                ensure!(
                    src.size() == var.size(),
                    "`{name}` has shape {:?} in {}, the net has {:?}",
                    src.size(),
                    path.display(),
                    var.size()
                );
                var.copy_(src);
            }
            Ok(())
        })
    }
}
