//! The loop every stage shares: resume from the run's checkpoint, step, log JSONL, checkpoint
//! atomically. Resume is exact: weights, every optimiser's moments, the step and the RNG position.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::Nets;
use super::optim::Adam;

/// Held while seeding libtorch's single global generator and drawing from it, so threads (tests
/// run in parallel) cannot interleave their draws and break reproducible initialisation.
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seed of the held-out validation draw of every stage (fixed, not the training seed, so runs
/// compare).
pub const HELD_SEED: u64 = 0x7661_6c69_6461_7465; // "validate"

/// Freshly initialised nets, the same for the same seed whatever else runs in the process.
pub fn seeded_nets(config: &super::nets::NetConfig, device: tch::Device, seed: u64) -> Result<Nets> {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    Nets::new(config, device)
}

/// Normal noise from libtorch's global generator, drawn under [`TORCH_RNG`] (for tests).
pub fn randn(shape: impl AsRef<[i64]>, options: (tch::Kind, tch::Device)) -> tch::Tensor {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::Tensor::randn(shape.as_ref(), options)
}

/// What a stage trains and checkpoints: weights it saves to and loads from one safetensors file,
/// and the configuration written beside them.
pub trait Weights {
    fn save(&self, path: &Path) -> Result<()>;
    fn load(&mut self, path: &Path) -> Result<()>;
    /// Writes what rebuilds the networks (`nets.toml`) into the checkpoint folder `dir`.
    fn save_config(&self, dir: &Path) -> Result<()>;
}

impl Weights for Nets {
    fn save(&self, path: &Path) -> Result<()> {
        Nets::save(self, path)
    }
    fn load(&mut self, path: &Path) -> Result<()> {
        Nets::load(self, path)
    }
    fn save_config(&self, dir: &Path) -> Result<()> {
        self.config.save(&dir.join("nets.toml"))
    }
}

/// What a stage's step reports.
pub trait StepLog: serde::Serialize {
    fn loss(&self) -> f64;
    /// A few numbers for the progress line.
    fn summary(&self) -> String;
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct State {
    stage: String,
    step: u64,
    rng_seed: u64,
    rng_word_pos: u128,
}

pub struct Loop<'a> {
    pub stage: &'a str,
    pub run_dir: &'a Path,
    pub steps: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Validation (on held-out examples, `validation.jsonl`) after every this many steps and at
    /// the end; 0: never.
    pub validate_every: u64,
    pub seed: u64,
}

impl Loop<'_> {
    /// Runs `step(nets, optimisers, rng, step)` from the checkpointed step (or 0) to `steps`,
    /// and `validate(nets)` at the validation steps (its numbers go to `validation.jsonl` with
    /// the step and to the log).
    pub fn run<W: Weights, L: StepLog>(
        &self,
        nets: &mut W,
        optims: &mut [(&str, Adam)],
        mut step: impl FnMut(&W, &mut [(&str, Adam)], &mut ChaCha8Rng, u64) -> Result<L>,
        mut validate: impl FnMut(&W) -> Result<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Option<L>> {
        std::fs::create_dir_all(self.run_dir)?;
        let ck = self.run_dir.join("checkpoint");
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut first = 0;
        if ck.join("state.json").is_file() {
            let st: State = serde_json::from_str(&std::fs::read_to_string(ck.join("state.json"))?)?;
            if st.stage != self.stage {
                bail!("{} holds a {} run; use another --run folder for {}", self.run_dir.display(), st.stage, self.stage);
            }
            nets.load(&ck.join("nets.safetensors"))?;
            for (name, adam) in optims.iter_mut() {
                adam.load(&ck.join(format!("adam-{name}.safetensors")))?;
            }
            rng = ChaCha8Rng::seed_from_u64(st.rng_seed);
            rng.set_word_pos(st.rng_word_pos);
            first = st.step;
            tracing::info!("resuming {} at step {first}", self.stage);
        }
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(self.run_dir.join("metrics.jsonl"))?;
        let pb = crate::cmd::progress(self.stage);
        pb.set_length(self.steps);
        pb.set_position(first);
        let mut last = None;
        for s in first..self.steps {
            let m = step(nets, optims, &mut rng, s).with_context(|| format!("{} step {s}", self.stage))?;
            if !m.loss().is_finite() {
                bail!("loss is {} at step {s}; stopping (the last checkpoint is intact)", m.loss());
            }
            if s % self.log_every == 0 || s + 1 == self.steps {
                writeln!(log, "{}", serde_json::to_string(&m)?)?;
                pb.set_message(m.summary());
            }
            if (s + 1) % self.checkpoint_every == 0 || s + 1 == self.steps {
                self.save(nets, optims, &rng, s + 1, &ck)?;
            }
            if self.validate_every > 0 && ((s + 1) % self.validate_every == 0 || s + 1 == self.steps) {
                let mut v = validate(nets).with_context(|| format!("{} validation after step {}", self.stage, s + 1))?;
                v.insert("step".into(), (s + 1).into());
                let line = serde_json::to_string(&v)?;
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.run_dir.join("validation.jsonl"))?;
                writeln!(f, "{line}")?;
                pb.suspend(|| tracing::info!("{} validation: {line}", self.stage));
            }
            pb.set_position(s + 1);
            last = Some(m);
        }
        pb.finish_and_clear();
        Ok(last)
    }

    /// Writes the checkpoint into a fresh folder, then swaps it in: a crash never leaves half of one.
    fn save(&self, nets: &impl Weights, optims: &[(&str, Adam)], rng: &ChaCha8Rng, step: u64, ck: &Path) -> Result<()> {
        let tmp = ck.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        nets.save(&tmp.join("nets.safetensors"))?;
        for (name, adam) in optims {
            adam.save(&tmp.join(format!("adam-{name}.safetensors")))?;
        }
        let st = State { stage: self.stage.into(), step, rng_seed: self.seed, rng_word_pos: rng.get_word_pos() };
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(&st)?)?;
        nets.save_config(&tmp)?;
        let old = ck.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        if ck.exists() {
            std::fs::rename(ck, &old)?;
        }
        std::fs::rename(&tmp, ck)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}
