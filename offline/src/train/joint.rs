//! The `joint` stage (all three nets end to end) and the `finetune` stage (embedder and detector
//! frozen, separator trained with the decoding loss), after §2.5 of the method paper.
//!
//! One example is two stems of `context + BLOCK + context` samples. Each stem's block is marked
//! with its own key and message and spliced back in its context; every stem is brought to
//! −16 LUFS; the stems are mixed, attacked (from `attack_step`), separated, and each separated
//! stem's block (the aligned slice) is decoded with its own key.
//!
//! Gradients (eq. 3): in `joint`, the watermark loss (bits, wrong-key hinge, quality) updates the
//! embedder and detector — it flows *through* the separator but never updates it — and the
//! separator is updated only by its L1 to the stop-gradient marked stems. In `finetune`, the
//! separator is updated by the bit loss plus its L1, and nothing else moves.

use std::path::Path;

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::attacks::{self, Family, FamilyMask, dsp};
use super::checkpoint::Nets;
use super::losses::{self, LossWeights};
use super::nets::NetConfig;
use super::optim::Adam;
use super::pretrain::{block, mark, pm1};
use super::stage::{HELD_SEED, Loop, StepLog, seeded_nets};
use stemmark_models::spec::{BLOCK, HOP, KEY_DIM, MESSAGE_BITS, STEM_LUFS};

/// Largest loudness correction per stem (dB), so near-silent excerpts are not blown up.
const MAX_GAIN_DB: f64 = 30.0;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JointConfig {
    /// `finetune` instead of `joint`.
    pub finetune: bool,
    pub steps: u64,
    pub batch: usize,
    /// Embedder + detector learning rate.
    pub lr: f64,
    /// Separator learning rate.
    pub separator_lr: f64,
    pub attack_step: u64,
    /// The attack families drawn from (all three by default).
    pub attack_families: Vec<Family>,
    /// Context on each side of the marked block (samples, a whole number of hops).
    pub context: usize,
    pub weights: LossWeights,
    pub checkpoint_every: u64,
    pub log_every: u64,
    /// Validate every this many steps (0: never) on `validation_examples` held-out pairs.
    pub validate_every: u64,
    pub validation_examples: usize,
    pub seed: u64,
    pub nets: NetConfig,
    /// Weights to start from (a pretrain or joint checkpoint's nets.safetensors), when the run
    /// has no checkpoint of its own yet.
    pub init: Option<std::path::PathBuf>,
    /// Then the separator's weights alone from this file (e.g. a pretrained embedder and
    /// detector from `init`, the separator of an earlier joint run from here).
    pub separator_init: Option<std::path::PathBuf>,
    /// After loading, restart the detector as the matched filter of the loaded embedder.
    pub reset_detector: bool,
}

impl Default for JointConfig {
    fn default() -> Self {
        // Joint training keeps the second-phase quality weights throughout.
        let weights = LossWeights { quality_step: 0, ..LossWeights::default() };
        JointConfig {
            finetune: false,
            steps: 50_000,
            batch: 8,
            lr: 1e-4,
            separator_lr: 3e-4,
            attack_step: 0,
            attack_families: attacks::all_families(),
            context: BLOCK,
            weights,
            checkpoint_every: 1_000,
            log_every: 50,
            validate_every: 1_000,
            validation_examples: 16,
            seed: 0,
            nets: NetConfig::default(),
            init: None,
            separator_init: None,
            reset_detector: false,
        }
    }
}

impl JointConfig {
    /// A few steps of tiny nets with short context, for tests.
    pub fn tiny() -> Self {
        JointConfig {
            steps: 4,
            batch: 2,
            lr: 1e-3,
            separator_lr: 1e-3,
            attack_step: 2,
            attack_families: attacks::all_families(),
            context: 36 * HOP,
            checkpoint_every: 2,
            log_every: 1,
            validate_every: 2,
            validation_examples: 2,
            seed: 2,
            nets: NetConfig::tiny(),
            ..JointConfig::default()
        }
    }

    pub fn excerpt(&self) -> usize {
        self.context + BLOCK + self.context
    }
}

/// Where stem pairs come from: `[batch, 2, len]` mono (foreground, background).
pub trait PairSource {
    fn pairs(&mut self, batch: usize, len: usize, rng: &mut ChaCha8Rng) -> Result<Tensor>;
}

/// Pairs from the corpus, both stems at the same random position of a random pair.
pub struct CorpusPairs {
    loaders: Vec<crate::corpus::Loader>,
}

impl CorpusPairs {
    pub fn new(corpus: &Path, split: crate::corpus::Split, seed: u64) -> Result<CorpusPairs> {
        Ok(CorpusPairs { loaders: super::pretrain::corpus_loaders(corpus, split, seed)? })
    }
}

impl PairSource for CorpusPairs {
    fn pairs(&mut self, batch: usize, len: usize, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(batch);
        while rows.len() < batch {
            let l = rng.random_range(0..self.loaders.len());
            let p = self.loaders[l].next_pair()?;
            let (f, b) = (p.foreground.mid(), p.background.mid());
            let n = f.len().min(b.len());
            if n < len {
                continue;
            }
            let start = rng.random_range(0..=n - len);
            rows.push(Tensor::stack(&[Tensor::from_slice(&f[start..start + len]), Tensor::from_slice(&b[start..start + len])], 0));
        }
        Ok(Tensor::stack(&rows, 0))
    }
}

impl PairSource for super::pretrain::Synthetic {
    fn pairs(&mut self, batch: usize, len: usize, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        Ok(super::pretrain::Synthetic::signals(2 * batch, len, rng).view([batch as i64, 2, len as i64]))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JointLog {
    pub step: u64,
    pub loss: f64,
    pub bce: f64,
    pub separator_l1: f64,
    pub bit_acc: [f64; 2],
    pub wrong_key_acc: f64,
    pub snr_db: f64,
    pub attacked: bool,
}

impl StepLog for JointLog {
    fn loss(&self) -> f64 {
        self.loss
    }
    fn summary(&self) -> String {
        format!("acc {:.3}/{:.3} l1 {:.4}", self.bit_acc[0], self.bit_acc[1], self.separator_l1)
    }
}

/// One step of `joint` (optims: embedder-detector, separator) or `finetune` (optims: separator).
pub fn step(nets: &Nets, optims: &mut [(&str, Adam)], cfg: &JointConfig, source: &mut dyn PairSource, rng: &mut ChaCha8Rng, step: u64) -> Result<JointLog> {
    let device: Device = nets.embedder_vs.device();
    let b = cfg.batch;
    let x = source.pairs(b, cfg.excerpt(), rng)?.to_device(device);
    let mut marked = Vec::new();
    let mut msgs = Vec::new();
    let mut keys = Vec::new();
    let mut quality = Tensor::zeros([], (Kind::Float, device));
    let q = cfg.weights.quality_at(step);
    let (mut sig, mut err) = (0.0, 0.0);
    for s in 0..2usize {
        let (m, k) = (pm1(b, MESSAGE_BITS, rng, device), pm1(b, KEY_DIM, rng, device));
        let stem = x.select(1, s as i64);
        let w = mark(nets, &stem, &m, &k, cfg.context);
        let (clean, wm) = (block(&stem, cfg.context), block(&w, cfg.context));
        if !cfg.finetune {
            let (qs, _) = losses::quality_loss(&q, &clean, &wm)?;
            quality += qs;
        }
        sig += clean.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
        err += (&clean - &wm).pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
        marked.push(w);
        msgs.push(m);
        keys.push(k);
    }
    let stems = dsp::normalize_stems(&Tensor::stack(&marked, 1), STEM_LUFS, MAX_GAIN_DB)?;
    let mut mix = dsp::mix(&stems)?;
    let attacked = step >= cfg.attack_step;
    if attacked {
        mix = attacks::apply_random(&mix, FamilyMask::from_families(&cfg.attack_families), rng)?.0;
    }
    // The separator works on stereo; these excerpts are mono, so both channels carry the mid.
    let est = nets.separator.forward(&Tensor::stack(&[&mix, &mix], 1));
    let targets = Tensor::stack(&[&stems, &stems], 2);
    let l1 = losses::sep_l1(&est, &targets)?;
    let est_mid = est.mean_dim(2, false, Kind::Float);
    let mut bce = Tensor::zeros([], (Kind::Float, device));
    let mut hinge = Tensor::zeros([], (Kind::Float, device));
    let mut acc = [0.0; 2];
    let mut wrong_acc = 0.0;
    for s in 0..2usize {
        let heard = block(&est_mid.select(1, s as i64), cfg.context);
        let logits = nets.detector.forward(&heard, &keys[s]);
        let wrong = nets.detector.forward(&heard, &pm1(b, KEY_DIM, rng, device));
        bce += losses::bce_bits(&logits, &msgs[s])?;
        hinge += losses::wrong_key_hinge(&wrong, &msgs[s], cfg.weights.wrong_key_margin)?;
        acc[s] = losses::bit_accuracy(&logits, &msgs[s]);
        wrong_acc += losses::bit_accuracy(&wrong, &msgs[s]) / 2.0;
    }
    let bits = &bce * cfg.weights.bce + &hinge * cfg.weights.wrong_key;
    let loss = if cfg.finetune {
        let total = &bits + &l1;
        let g = optims[0].1.grads(&total)?;
        optims[0].1.apply(&g)?;
        total
    } else {
        let wm_loss = &bits + &quality;
        // Each loss reaches only its own parameters (eq. 3).
        let g_wm = optims[0].1.grads(&wm_loss)?;
        let g_sep = optims[1].1.grads(&l1)?;
        optims[0].1.apply(&g_wm)?;
        optims[1].1.apply(&g_sep)?;
        wm_loss + &l1
    };
    Ok(JointLog {
        step,
        loss: loss.double_value(&[]),
        bce: bce.double_value(&[]) / 2.0,
        separator_l1: l1.double_value(&[]),
        bit_acc: acc,
        wrong_key_acc: wrong_acc,
        snr_db: 10.0 * (sig / err.max(1e-20)).log10(),
        attacked,
    })
}

/// The optimisers of a stage, over the right nets' variables.
pub fn optimisers(nets: &Nets, cfg: &JointConfig) -> Vec<(&'static str, Adam)> {
    let sep = ("separator", Adam::new(nets.separator_vs.variables().into_iter().collect(), cfg.separator_lr));
    if cfg.finetune {
        vec![sep]
    } else {
        let ed = nets.embedder_vs.variables().into_iter().chain(nets.detector_vs.variables()).collect();
        vec![("embedder-detector", Adam::new(ed, cfg.lr)), sep]
    }
}

/// Runs (or resumes) `joint` or `finetune` in `run_dir`.
pub fn run(cfg: &JointConfig, source: &mut dyn PairSource, validation: &mut dyn PairSource, run_dir: &Path, device: Device) -> Result<Option<JointLog>> {
    ensure!(cfg.context.is_multiple_of(HOP), "context must be a whole number of hops ({HOP} samples)");
    let mut nets = seeded_nets(&cfg.nets, device, cfg.seed)?;
    if let Some(init) = &cfg.init
        && !run_dir.join("checkpoint/state.json").is_file()
    {
        nets.load(init)?;
    }
    if let Some(sep) = &cfg.separator_init
        && !run_dir.join("checkpoint/state.json").is_file()
    {
        nets.load_net(sep, "separator")?;
    }
    if cfg.reset_detector && !run_dir.join("checkpoint/state.json").is_file() {
        ensure!(nets.start_detector_as_matched_filter(), "reset_detector needs a keyed, demodulating detector front and one 1×1 layer of 2·bands channels");
    }
    let mut optims = optimisers(&nets, cfg);
    let stage = if cfg.finetune { "finetune" } else { "joint" };
    let lp = Loop { stage, run_dir, steps: cfg.steps, log_every: cfg.log_every, checkpoint_every: cfg.checkpoint_every, validate_every: cfg.validate_every, seed: cfg.seed };
    let held = if cfg.validate_every > 0 {
        let mut rng = ChaCha8Rng::seed_from_u64(HELD_SEED);
        let n = cfg.validation_examples.max(1);
        let x = validation.pairs(n, cfg.excerpt(), &mut rng)?.to_device(device);
        let draw = |rng: &mut ChaCha8Rng, dim| [pm1(n, dim, rng, device), pm1(n, dim, rng, device)];
        let (messages, keys) = (draw(&mut rng, MESSAGE_BITS), draw(&mut rng, KEY_DIM));
        Some((x, messages, keys))
    } else {
        None
    };
    lp.run(
        &mut nets,
        &mut optims,
        |nets, optims, rng, s| step(nets, optims, cfg, source, rng, s),
        |nets| {
            let (x, messages, keys) = held.as_ref().expect("drawn when validating");
            validate(nets, cfg, x, messages, keys)
        },
    )
}

/// The joint pipeline without attacks on held-out pairs `x` `[n, 2, len]`: BER per stem after
/// separation and on the mix, SNR of the marked stems, the separator's L1.
fn validate(nets: &Nets, cfg: &JointConfig, x: &Tensor, messages: &[Tensor; 2], keys: &[Tensor; 2]) -> Result<serde_json::Map<String, serde_json::Value>> {
    tch::no_grad(|| {
        let n = x.size()[0];
        let chunk = cfg.batch.max(1) as i64;
        let (mut ok_sep, mut ok_mix, mut l1, mut sig, mut err) = ([0.0; 2], [0.0; 2], 0.0, 0.0, 0.0);
        for start in (0..n).step_by(chunk as usize) {
            let len = chunk.min(n - start);
            let weight = len as f64 / n as f64;
            let xs = x.narrow(0, start, len);
            let (m, k): (Vec<Tensor>, Vec<Tensor>) = (0..2).map(|s| (messages[s].narrow(0, start, len), keys[s].narrow(0, start, len))).unzip();
            let mut marked = Vec::new();
            for s in 0..2 {
                let stem = xs.select(1, s as i64);
                let w = mark(nets, &stem, &m[s], &k[s], cfg.context);
                let (clean, wm) = (block(&stem, cfg.context), block(&w, cfg.context));
                sig += clean.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
                err += (&clean - &wm).pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
                marked.push(w);
            }
            let stems = dsp::normalize_stems(&Tensor::stack(&marked, 1), STEM_LUFS, MAX_GAIN_DB)?;
            let mix = dsp::mix(&stems)?;
            let est = nets.separator.forward(&Tensor::stack(&[&mix, &mix], 1));
            l1 += losses::sep_l1(&est, &Tensor::stack(&[&stems, &stems], 2))?.double_value(&[]) * weight;
            let est_mid = est.mean_dim(2, false, Kind::Float);
            for s in 0..2 {
                let read = |audio: &Tensor| losses::bit_accuracy(&nets.detector.forward(&block(audio, cfg.context), &k[s]), &m[s]) * weight;
                ok_sep[s] += read(&est_mid.select(1, s as i64));
                ok_mix[s] += read(&mix);
            }
        }
        let pct = |acc: f64| ((1.0 - acc) * 1e4).round() / 1e2;
        let mut v = serde_json::Map::new();
        v.insert("examples".into(), n.into());
        v.insert("ber_separated_percent".into(), serde_json::json!([pct(ok_sep[0]), pct(ok_sep[1])]));
        v.insert("ber_mix_percent".into(), serde_json::json!([pct(ok_mix[0]), pct(ok_mix[1])]));
        v.insert("separator_l1".into(), ((l1 * 1e5).round() / 1e5).into());
        v.insert("snr_db".into(), ((10.0 * (sig / err.max(1e-20)).log10() * 100.0).round() / 100.0).into());
        Ok(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    use crate::train::pretrain::Synthetic as Tones;

    fn changed(before: &[(String, Tensor)], nets: &Nets) -> Vec<String> {
        let now: std::collections::HashMap<String, Tensor> = nets.variables().into_iter().collect();
        before.iter().filter(|(n, t)| !t.equal(&now[n])).map(|(n, _)| n.clone()).collect()
    }

    #[test]
    fn joint_updates_all_three_and_finetune_only_the_separator() {
        for finetune in [false, true] {
            let cfg = JointConfig { finetune, attack_step: u64::MAX, ..JointConfig::tiny() };
            let nets = seeded_nets(&cfg.nets, Device::Cpu, 4).unwrap();
            let before: Vec<(String, Tensor)> = nets.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
            let mut optims = optimisers(&nets, &cfg);
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let log = step(&nets, &mut optims, &cfg, &mut Tones, &mut rng, 0).unwrap();
            assert!(log.loss.is_finite());
            let moved = changed(&before, &nets);
            for (name, _) in &before {
                let should = !finetune || name.starts_with("separator.");
                assert_eq!(moved.contains(name), should, "finetune={finetune}: {name} moved={}", moved.contains(name));
            }
        }
    }

    #[test]
    fn the_bit_loss_never_reaches_the_separator() {
        // Two identical steps but for the weight of the bit loss: the separator (moved only by its
        // L1, eq. 3) must end identical, the embedder (moved by the bit loss) must not.
        let after = |bce_weight: f64| {
            let mut cfg = JointConfig { attack_step: u64::MAX, ..JointConfig::tiny() };
            cfg.weights.bce = bce_weight;
            let nets = seeded_nets(&cfg.nets, Device::Cpu, 6).unwrap();
            let mut optims = optimisers(&nets, &cfg);
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            step(&nets, &mut optims, &cfg, &mut Tones, &mut rng, 0).unwrap();
            nets.variables().into_iter().map(|(n, t)| (n, t.copy())).collect::<Vec<_>>()
        };
        let (a, b) = (after(100.0), after(10_000.0));
        let mut embedder_moved = false;
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            if n.starts_with("separator.") {
                assert!(x.equal(y), "{n} depends on the bit loss");
            } else if n.starts_with("embedder.") {
                embedder_moved |= !x.equal(y);
            }
        }
        assert!(embedder_moved, "the bit loss must reach the embedder through the separator");
    }

    #[test]
    fn joint_resumes_exactly() {
        // As `stemmark train` on the CPU: one intra-op thread, set before the first step. The BLAS
        // thread count is process-wide, and a product split over another number of threads rounds
        // differently, so a test that changes it mid-run (device::pick) must not change it here.
        tch::set_num_threads(1);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = JointConfig::tiny();
        run(&cfg, &mut Tones, &mut Tones, a.path(), Device::Cpu).unwrap();
        if std::env::var_os("DETCHECK").is_some() {
            run(&cfg, &mut Tones, &mut Tones, b.path(), Device::Cpu).unwrap();
        } else {
            run(&JointConfig { steps: 2, ..cfg.clone() }, &mut Tones, &mut Tones, b.path(), Device::Cpu).unwrap();
            run(&cfg, &mut Tones, &mut Tones, b.path(), Device::Cpu).unwrap();
        }
        let load = |d: &Path| {
            let mut w = Tensor::read_safetensors(d.join("checkpoint/nets.safetensors")).unwrap();
            w.sort_by(|x, y| x.0.cmp(&y.0));
            w
        };
        let differ: Vec<String> =
            load(a.path()).iter().zip(&load(b.path())).filter(|((_, x), (_, y))| !x.equal(y)).map(|((n, _), _)| n.clone()).collect();
        assert!(differ.is_empty(), "differ after resuming: {differ:?}");
        let val = |d: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(d.join("validation.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        };
        let (va, vb) = (val(a.path()), val(b.path()));
        assert_eq!(va.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(va, vb, "validation differs after resuming");
        for key in ["ber_separated_percent", "ber_mix_percent"] {
            assert_eq!(va[1][key].as_array().map(Vec::len), Some(2), "{key}: {}", va[1]);
        }
        assert!(va[1]["separator_l1"].as_f64().is_some_and(|l| l.is_finite() && l > 0.0));
    }
}
