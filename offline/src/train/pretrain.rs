//! The `pretrain` stage: embedder + detector on single stems (no mixing, no separator yet).
//!
//! One example is a 4 s excerpt of a stem: a 2 s block with 1 s of context on each side, so the
//! block's STFT frames see real neighbours exactly as at run time (1 s = 180 hops). The embedder
//! masks only the block's 360 frames; the whole excerpt is resynthesised (the block spliced back
//! in its context) and the detector reads the central 2 s, attacked from `attack_step` on.
//! Loss: 100·BCE + WAKE's wrong-key hinge + the quality terms of the two-phase schedule
//! (multi-resolution STFT, mel, NMR; the GAN terms come with the joint stage).
//!
//! Checkpoints, logs and exact resume come from the shared stage loop ([`super::stage`]).

use std::path::Path;

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::attacks::{self, Family, FamilyMask};
use super::checkpoint::Nets;
use super::losses::{self, LossWeights};
use super::nets::NetConfig;
use super::optim::Adam;
use super::prefetch::Prefetch;
use super::stage::{HELD_SEED, Loop, StepLog, seeded_nets};
use super::{nmr, stft};
use stemmark_models::spec::{BLOCK, FRAMES_PER_BLOCK, HOP, KEY_DIM, MESSAGE_BITS};

/// Context on each side of the block (1 s).
pub const CONTEXT: usize = BLOCK / 2;
/// Samples of one example.
pub const EXCERPT: usize = CONTEXT + BLOCK + CONTEXT;
const _: () = assert!(CONTEXT.is_multiple_of(HOP), "the block must start on a frame");

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// Attacks are applied from this step on.
    pub attack_step: u64,
    /// The attack families drawn from (all three by default).
    pub attack_families: Vec<Family>,
    pub weights: LossWeights,
    pub checkpoint_every: u64,
    pub log_every: u64,
    /// Validate every this many steps (0: never) on `validation_examples` held-out excerpts.
    pub validate_every: u64,
    pub validation_examples: usize,
    pub seed: u64,
    /// Curriculum on keys: 0 draws a fresh random key for every example (the goal); n > 0 draws
    /// from a fixed pool of n keys (seeded by `seed`), so bits can be learnt before keys.
    pub key_pool: usize,
    /// Weights to start from (a checkpoint's `nets.safetensors`) instead of a fresh start.
    pub init: Option<std::path::PathBuf>,
    /// After loading `init`, restart the detector as the matched filter of the loaded embedder.
    pub reset_detector: bool,
    pub nets: NetConfig,
}

impl Default for PretrainConfig {
    /// The paper's schedule: quality terms raised after 20k steps, attacks from 20k.
    fn default() -> Self {
        PretrainConfig {
            steps: 100_000,
            batch: 16,
            lr: 2e-4,
            attack_step: 20_000,
            attack_families: attacks::all_families(),
            weights: LossWeights::default(),
            checkpoint_every: 1_000,
            log_every: 50,
            validate_every: 1_000,
            validation_examples: 32,
            seed: 0,
            key_pool: 0,
            init: None,
            reset_detector: false,
            nets: NetConfig::default(),
        }
    }
}

impl PretrainConfig {
    /// A few steps of tiny nets, for tests.
    pub fn tiny() -> Self {
        let weights = LossWeights { quality_step: 2, ..LossWeights::default() };
        PretrainConfig {
            steps: 4,
            batch: 2,
            lr: 1e-3,
            attack_step: 2,
            attack_families: attacks::all_families(),
            weights,
            checkpoint_every: 2,
            log_every: 1,
            validate_every: 2,
            validation_examples: 2,
            seed: 1,
            key_pool: 0,
            init: None,
            reset_detector: false,
            nets: NetConfig::tiny(),
        }
    }
}

/// Where examples come from: `[batch, EXCERPT]` mono excerpts for training step `step`.
pub trait Source {
    fn excerpts(&mut self, batch: usize, step: u64, rng: &mut ChaCha8Rng) -> Result<Tensor>;
}

/// Excerpts from the corpus: a random stem of a random pair, its mid, at a random position.
/// Drawn on a background thread ([`Prefetch`]), each batch from an RNG seeded by (seed, step),
/// so a resumed run reads the same examples as a straight one.
pub struct CorpusSource {
    batches: Prefetch<Vec<Vec<f32>>>,
    batch: usize,
}

impl CorpusSource {
    pub fn new(corpus: &Path, split: crate::corpus::Split, seed: u64, batch: usize) -> Result<CorpusSource> {
        let loaders = corpus_loaders(corpus, split, seed)?;
        let batches = Prefetch::new(move |step| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(step);
            let mut rows = Vec::with_capacity(batch);
            let mut tries = 0;
            while rows.len() < batch {
                tries += 1;
                ensure!(tries <= 100 * batch, "no clip of the corpus is {EXCERPT} samples long");
                let l = rng.random_range(0..loaders.len());
                let mid = loaders[l].next_stem_with(&mut rng)?.mid();
                if mid.len() < EXCERPT {
                    continue;
                }
                let start = rng.random_range(0..=mid.len() - EXCERPT);
                rows.push(mid[start..start + EXCERPT].to_vec());
            }
            Ok(rows)
        });
        Ok(CorpusSource { batches, batch })
    }
}

/// One loader per scenario that has clips in `split` (at least one, else an error).
pub fn corpus_loaders(corpus: &Path, split: crate::corpus::Split, seed: u64) -> Result<Vec<crate::corpus::Loader>> {
    let c = crate::corpus::Corpus::open(corpus)?;
    let loaders: Vec<_> = [crate::corpus::Scenario::SpeechMusic, crate::corpus::Scenario::LeadAccompaniment]
        .into_iter()
        .filter_map(|s| crate::corpus::Loader::new(&c, split, s, seed).ok())
        .collect();
    ensure!(!loaders.is_empty(), "corpus {} has no clips in the {split} split", corpus.display());
    Ok(loaders)
}

impl Source for CorpusSource {
    fn excerpts(&mut self, batch: usize, step: u64, _rng: &mut ChaCha8Rng) -> Result<Tensor> {
        ensure!(batch == self.batch, "the corpus source makes batches of {}, not {batch}", self.batch);
        let rows: Vec<Tensor> = self.batches.get(step)?.iter().map(|r| Tensor::from_slice(r)).collect();
        Ok(Tensor::stack(&rows, 0))
    }
}

/// Synthetic excerpts (harmonic tones with noise, different per draw), for tests and benchmarks.
pub struct Synthetic;

impl Synthetic {
    /// `[n, len]` mono signals.
    pub fn signals(n: usize, len: usize, rng: &mut ChaCha8Rng) -> Tensor {
        let rows: Vec<Tensor> = (0..n)
            .map(|_| {
                let a = crate::testkit::music_like(stemmark_models::spec::SAMPLE_RATE, len as f64 / 44_100.0 + 0.01, rng.random());
                Tensor::from_slice(&a.mid()[..len])
            })
            .collect();
        Tensor::stack(&rows, 0)
    }
}

impl Source for Synthetic {
    fn excerpts(&mut self, batch: usize, _step: u64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        Ok(Synthetic::signals(batch, EXCERPT, rng))
    }
}

/// Metrics of one step (the JSONL log line).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PretrainLog {
    pub step: u64,
    pub loss: f64,
    pub bce: f64,
    pub hinge: f64,
    pub stft: f64,
    pub mel: f64,
    pub nmr: f64,
    pub bit_acc: f64,
    pub wrong_key_acc: f64,
    pub snr_db: f64,
    pub attacked: bool,
}

/// ±1 tensor of shape `[b, n]`.
pub fn pm1(b: usize, n: usize, rng: &mut ChaCha8Rng, device: Device) -> Tensor {
    let v: Vec<f32> = (0..b * n).map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect();
    Tensor::from_slice(&v).view([b as i64, n as i64]).to_device(device)
}

/// Marks the block of excerpts `x` `[B, context + BLOCK + context]`: returns the marked
/// excerpts (only the block's frames are masked; `context` must be a whole number of hops).
pub fn mark(nets: &Nets, x: &Tensor, message: &Tensor, key: &Tensor, context: usize) -> Tensor {
    let spec = stft::stft(x);
    let frames = spec.size()[2];
    let (f0, f1) = ((context / HOP) as i64, (context / HOP + FRAMES_PER_BLOCK) as i64);
    let mag = spec.narrow(2, f0, f1 - f0).abs();
    let mask = nets.embedder.forward(&mag, message, key);
    let b = x.size()[0];
    let bins = spec.size()[1];
    let ones = |n: i64| Tensor::ones([b, bins, n], (Kind::Float, x.device()));
    let full = Tensor::cat(&[ones(f0), mask, ones(frames - f1)], 2);
    stft::istft(&(spec * full), x.size()[1])
}

/// The block of excerpts `[..., context + BLOCK + context]`.
pub fn block(x: &Tensor, context: usize) -> Tensor {
    x.narrow(-1, context as i64, BLOCK as i64)
}

/// One training step; returns its metrics.
pub fn step(
    nets: &Nets,
    adam: &mut Adam,
    cfg: &PretrainConfig,
    source: &mut dyn Source,
    rng: &mut ChaCha8Rng,
    step: u64,
    device: Device,
) -> Result<PretrainLog> {
    let t0 = std::time::Instant::now();
    let x = source.excerpts(cfg.batch, step, rng)?.to_device(device);
    let t_data = t0.elapsed();
    let b = cfg.batch;
    let message = pm1(b, MESSAGE_BITS, rng, device);
    let key = if cfg.key_pool == 0 {
        pm1(b, KEY_DIM, rng, device)
    } else {
        let pool = pm1(cfg.key_pool, KEY_DIM, &mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6b65_7973), device);
        let pick: Vec<i64> = (0..b).map(|_| rng.random_range(0..cfg.key_pool) as i64).collect();
        pool.index_select(0, &Tensor::from_slice(&pick).to_device(device))
    };
    let wrong = pm1(b, KEY_DIM, rng, device);
    let marked = mark(nets, &x, &message, &key, CONTEXT);
    let t_mark = t0.elapsed();
    let (clean, wm) = (block(&x, CONTEXT), block(&marked, CONTEXT));
    let attacked = step >= cfg.attack_step;
    let heard = if attacked {
        attacks::apply_random(&wm, FamilyMask::from_families(&cfg.attack_families), rng)?.0
    } else {
        wm.shallow_clone()
    };
    let logits = nets.detector.forward(&heard, &key);
    let wrong_logits = nets.detector.forward(&heard, &wrong);
    let t_det = t0.elapsed();
    let q = cfg.weights.quality_at(step);
    let bce = losses::bce_bits(&logits, &message)?;
    let hinge = losses::wrong_key_hinge(&wrong_logits, &message, cfg.weights.wrong_key_margin)?;
    let mut loss = &bce * cfg.weights.bce + &hinge * cfg.weights.wrong_key;
    // Terms weighted 0 (e.g. bits first) are not computed at all: they cost a quarter of a step.
    let mut term = |w: f64, f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
        if w <= 0.0 {
            return Ok(f64::NAN);
        }
        let t = f()?;
        loss += &t * w;
        Ok(t.double_value(&[]))
    };
    let stft_v = term(q.stft, &|| losses::stft_loss(&clean, &wm))?;
    let mel_v = term(q.mel, &|| losses::mel_loss(&clean, &wm))?;
    let nmr_v = term(q.nmr, &|| nmr::nmr_loss(&clean, &wm))?;
    let t_loss = t0.elapsed();
    adam.step(&loss)?;
    tracing::debug!("step {step}: data {t_data:.2?}, mark {:.2?}, detect {:.2?}, losses {:.2?}, backward+adam {:.2?}", t_mark - t_data, t_det - t_mark, t_loss - t_det, t0.elapsed() - t_loss);
    let err = (&clean - &wm).pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
    let sig = clean.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
    Ok(PretrainLog {
        step,
        loss: loss.double_value(&[]),
        bce: bce.double_value(&[]),
        hinge: hinge.double_value(&[]),
        stft: stft_v,
        mel: mel_v,
        nmr: nmr_v,
        bit_acc: losses::bit_accuracy(&logits, &message),
        wrong_key_acc: losses::bit_accuracy(&wrong_logits, &message),
        snr_db: 10.0 * (sig / err.max(1e-20)).log10(),
        attacked,
    })
}

impl StepLog for PretrainLog {
    fn loss(&self) -> f64 {
        self.loss
    }
    fn summary(&self) -> String {
        format!("acc {:.3} snr {:.1}", self.bit_acc, self.snr_db)
    }
}

/// Runs (or resumes) the stage in `run_dir`: `checkpoint/` holds the latest state, `metrics.jsonl`
/// one line per logged step. Returns the last step's metrics.
pub fn run(cfg: &PretrainConfig, source: &mut dyn Source, validation: &mut dyn Source, run_dir: &Path, device: Device) -> Result<Option<PretrainLog>> {
    let mut nets = seeded_nets(&cfg.nets, device, cfg.seed)?;
    if let Some(init) = &cfg.init
        && !run_dir.join("checkpoint/state.json").is_file()
    {
        nets.load(init)?;
        if cfg.reset_detector {
            ensure!(nets.start_detector_as_matched_filter(), "reset_detector needs a keyed, demodulating detector front and one 1×1 layer of 2·bands channels");
            tracing::info!("detector restarted as the matched filter of {}", init.display());
        }
    }
    let trainable = nets.embedder_vs.variables().into_iter().chain(nets.detector_vs.variables()).collect();
    let mut optims = [("embedder-detector", Adam::new(trainable, cfg.lr))];
    let held = if cfg.validate_every > 0 { Some(Held::draw(cfg, validation, device)?) } else { None };
    let lp = Loop { stage: "pretrain", run_dir, steps: cfg.steps, log_every: cfg.log_every, checkpoint_every: cfg.checkpoint_every, validate_every: cfg.validate_every, seed: cfg.seed };
    lp.run(
        &mut nets,
        &mut optims,
        |nets, optims, rng, s| step(nets, &mut optims[0].1, cfg, source, rng, s, nets_device(nets)),
        |nets| held.as_ref().expect("drawn when validating").validate(nets, cfg),
    )
}

/// The held-out examples of a run's validations: excerpts, messages and keys drawn once (fixed
/// seed), so every validation of a run reads the same thing.
pub struct Held {
    x: Tensor,
    message: Tensor,
    key: Tensor,
    wrong: Tensor,
}

impl Held {
    pub fn draw(cfg: &PretrainConfig, validation: &mut dyn Source, device: Device) -> Result<Held> {
        let mut rng = ChaCha8Rng::seed_from_u64(HELD_SEED);
        let n = cfg.validation_examples.max(1);
        let x = validation.excerpts(n, 0, &mut rng)?.to_device(device);
        let (message, key, wrong) = (pm1(n, MESSAGE_BITS, &mut rng, device), pm1(n, KEY_DIM, &mut rng, device), pm1(n, KEY_DIM, &mut rng, device));
        Ok(Held { x, message, key, wrong })
    }

    /// BER clean, attacked (the stage's families, fixed draws) and with a wrong key; SNR.
    pub fn validate(&self, nets: &Nets, cfg: &PretrainConfig) -> Result<serde_json::Map<String, serde_json::Value>> {
        tch::no_grad(|| {
            let n = self.x.size()[0];
            let chunk = cfg.batch.max(1) as i64;
            let (mut ok, mut ok_attacked, mut ok_wrong, mut sig, mut err) = (0.0, 0.0, 0.0, 0.0, 0.0);
            let mut rng = ChaCha8Rng::seed_from_u64(HELD_SEED + 1);
            for start in (0..n).step_by(chunk as usize) {
                let len = chunk.min(n - start);
                let (x, m, k, w) = (self.x.narrow(0, start, len), self.message.narrow(0, start, len), self.key.narrow(0, start, len), self.wrong.narrow(0, start, len));
                let (clean, wm) = (block(&x, CONTEXT), block(&mark(nets, &x, &m, &k, CONTEXT), CONTEXT));
                let attacked = attacks::apply_random(&wm, FamilyMask::from_families(&cfg.attack_families), &mut rng)?.0;
                let weight = len as f64 / n as f64;
                ok += losses::bit_accuracy(&nets.detector.forward(&wm, &k), &m) * weight;
                ok_attacked += losses::bit_accuracy(&nets.detector.forward(&attacked, &k), &m) * weight;
                ok_wrong += losses::bit_accuracy(&nets.detector.forward(&wm, &w), &m) * weight;
                sig += clean.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
                err += (&clean - &wm).pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
            }
            let pct = |acc: f64| ((1.0 - acc) * 1e4).round() / 1e2;
            let mut v = serde_json::Map::new();
            v.insert("examples".into(), n.into());
            v.insert("ber_percent".into(), pct(ok).into());
            v.insert("ber_attacked_percent".into(), pct(ok_attacked).into());
            v.insert("ber_wrong_key_percent".into(), pct(ok_wrong).into());
            v.insert("snr_db".into(), ((10.0 * (sig / err.max(1e-20)).log10() * 100.0).round() / 100.0).into());
            Ok(v)
        })
    }
}

fn nets_device(nets: &Nets) -> Device {
    nets.embedder_vs.device()
}
#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    use Synthetic as Tones;

    fn weights(dir: &Path) -> Vec<(String, Tensor)> {
        let mut w = Tensor::read_safetensors(dir.join("checkpoint/nets.safetensors")).unwrap();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    }

    #[test]
    fn resume_is_exact() {
        // As `stemmark train` on the CPU: one intra-op thread, set before the first step. The BLAS
        // thread count is process-wide, and a product split over another number of threads rounds
        // differently, so a test that changes it mid-run (device::pick) must not change it here.
        tch::set_num_threads(1);
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = PretrainConfig::tiny();
        run(&cfg, &mut Tones, &mut Tones, a.path(), Device::Cpu).unwrap();
        let half = PretrainConfig { steps: 2, ..cfg.clone() };
        run(&half, &mut Tones, &mut Tones, b.path(), Device::Cpu).unwrap();
        run(&cfg, &mut Tones, &mut Tones, b.path(), Device::Cpu).unwrap();
        let (wa, wb) = (weights(a.path()), weights(b.path()));
        assert_eq!(wa.len(), wb.len());
        for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{na} differs after resuming");
        }
        let lines = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 4, "one line per step, none repeated");
        // Validation after steps 2 and 4, the same numbers straight or resumed.
        let val = |d: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(d.join("validation.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        };
        let (va, vb) = (val(a.path()), val(b.path()));
        assert_eq!(va.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(va, vb);
        for key in ["ber_percent", "ber_attacked_percent", "ber_wrong_key_percent", "snr_db"] {
            assert!(va[1][key].as_f64().is_some_and(f64::is_finite), "{key}: {}", va[1]);
        }
    }

    #[test]
    fn a_fresh_detector_reads_a_fresh_embedder_as_its_matched_filter() {
        let cfg = PretrainConfig::default();
        let nets = seeded_nets(&cfg.nets, Device::Cpu, 23).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let x = Synthetic::signals(8, EXCERPT, &mut rng);
        let message = pm1(8, MESSAGE_BITS, &mut rng, Device::Cpu);
        let (key, wrong) = (pm1(8, KEY_DIM, &mut rng, Device::Cpu), pm1(8, KEY_DIM, &mut rng, Device::Cpu));
        let heard = block(&tch::no_grad(|| mark(&nets, &x, &message, &key, CONTEXT)), CONTEXT);
        let acc = |k: &Tensor| losses::bit_accuracy(&tch::no_grad(|| nets.detector.forward(&heard, k)), &message);
        let (right, wrong) = (acc(&key), acc(&wrong));
        assert!(right > 0.75, "untrained pair reads {right:.3} with the right key");
        assert!((0.35..0.65).contains(&wrong), "a wrong key reads {wrong:.3}");

        let mut other = cfg.nets.clone();
        other.detector.channels = vec![64];
        let mut nets = seeded_nets(&other, Device::Cpu, 23).unwrap();
        assert!(!nets.start_detector_as_matched_filter(), "only a 2·bands 1×1 layer passes the bands on linearly");
    }

    #[test]
    fn every_trainable_variable_gets_a_gradient_and_the_bit_loss_falls() {
        let mut cfg = PretrainConfig::tiny();
        cfg.attack_step = u64::MAX;
        // Bits only: the quality terms pull the other way (the detector starts as a matched filter).
        cfg.weights.quality_step = u64::MAX;
        let nets = seeded_nets(&cfg.nets, Device::Cpu, 3).unwrap();
        let vars: Vec<(String, Tensor)> = nets
            .embedder_vs
            .variables()
            .into_iter()
            .chain(nets.detector_vs.variables())
            .collect();
        let mut adam = Adam::new(vars.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), 3e-3);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let first = step(&nets, &mut adam, &cfg, &mut Tones, &mut rng, 0, Device::Cpu).unwrap();
        for (name, t) in &vars {
            let g = t.grad();
            assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name} got no gradient");
        }
        // One batch (same excerpts, message and keys every step) must be learnt: a fresh batch
        // each step is too noisy a measure over so few steps.
        let same_batch = || ChaCha8Rng::seed_from_u64(99);
        let before = step(&nets, &mut adam, &cfg, &mut Tones, &mut same_batch(), 1, Device::Cpu).unwrap().bce;
        let mut after = before;
        for s in 2..25 {
            after = step(&nets, &mut adam, &cfg, &mut Tones, &mut same_batch(), s, Device::Cpu).unwrap().bce;
        }
        assert!(after < 0.9 * before, "BCE did not fall: {before} → {after}");
        assert!(first.snr_db.is_finite() && first.snr_db > 5.0, "the mask is bounded: SNR {}", first.snr_db);
    }
}

#[cfg(test)]
mod diagnose {
    use super::*;

    /// How readable the direct pattern is at initialisation: decode each bit by correlating the
    /// chip-demodulated time-mean log energies with that bit's pattern, blind and with the clean
    /// reference. `cargo test --release --features train --lib diagnose -- --ignored --nocapture`
    #[test]
    #[ignore = "diagnostic; needs data/corpus"]
    fn direct_pattern_through_the_detector_front() {
        let cfg = PretrainConfig::default();
        let mut nets = seeded_nets(&cfg.nets, Device::Cpu, 19).unwrap();
        // STEMMARK_DIAG_CKPT=runs/NAME/checkpoint/nets.safetensors reads a trained checkpoint.
        if let Ok(ckpt) = std::env::var("STEMMARK_DIAG_CKPT") {
            nets.load(Path::new(&ckpt)).unwrap();
            if std::env::var_os("STEMMARK_DIAG_RESET").is_some() {
                assert!(nets.start_detector_as_matched_filter());
            }
        }
        let mut src = CorpusSource::new(Path::new("../data/corpus"), crate::corpus::Split::Train, 1, 16).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = src.excerpts(16, 0, &mut rng).unwrap();
        let message = pm1(16, MESSAGE_BITS, &mut rng, Device::Cpu);
        let key = pm1(16, KEY_DIM, &mut rng, Device::Cpu);
        let marked = tch::no_grad(|| mark(&nets, &x, &message, &key, CONTEXT));
        let f = cfg.nets.detector.front.clone().unwrap();
        let bins: Vec<i64> = (0..f.bands).map(|i| (f.first_bin + i * f.bin_step) as i64).collect();
        let feats = |a: &Tensor| {
            let spec = stft::stft(&block(a, CONTEXT));
            let e = (spec.abs().pow_tensor_scalar(2) + 1e-9).log().index_select(1, &Tensor::from_slice(&bins));
            let t = e.size()[2];
            let chips = Tensor::from_slice(&crate::train::nets::frame_chips(t as usize)).view([1, 1, t]);
            ((&e - e.mean_dim(1, true, Kind::Float)) * chips).mean_dim(2, false, Kind::Float)
        };
        let signs = crate::train::nets::embedder::key_signs(&key, &crate::train::nets::key_spread_bins(&f.bins()), f.bands as i64);
        let (fm, fc) = (feats(&marked) * &signs, feats(&x) * &signs);
        let w = nets.embedder_vs.variables()["embedder.direct.weight"].index_select(0, &Tensor::from_slice(&bins)); // [bands, 32]
        for (name, f) in [("blind", fm.shallow_clone()), ("with reference", &fm - &fc)] {
            let score = f.matmul(&w); // [16, 32]
            let acc = score.sign().eq_tensor(&message).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            println!("{name}: bit accuracy of the correlation decoder {acc:.3}");
        }
        let logits = tch::no_grad(|| nets.detector.forward(&block(&marked, CONTEXT), &key));
        let acc = logits.sign().eq_tensor(&message).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        println!("learned detector: bit accuracy {acc:.3}");
    }
}
