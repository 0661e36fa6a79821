//! `stemmark train`: the training stages (built with the `train` feature, which links libtorch).

use std::path::PathBuf;

use anyhow::Result;

use crate::corpus::Split;
use crate::train::device::{self, Want};
use crate::train::joint::{self, CorpusPairs, JointConfig};
use crate::train::pretrain::{self, CorpusSource, PretrainConfig};

#[derive(Debug, clap::Subcommand)]
pub enum Stage {
    /// Embedder + detector on single stems (bits first, quality terms and attacks later)
    Pretrain(Args),
    /// All three nets end to end: marked stems mixed, attacked, separated, decoded
    Joint(Args),
    /// Separator only, with the decoding loss (embedder and detector frozen)
    Finetune(Args),
    /// Spleeter's pretrained vocals U-Net finetuned for plain separation of the corpus's pairs
    /// (export: stemmark export --spleeter-separator --separator-weights RUN/checkpoint/nets.safetensors)
    Separator(Args),
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The built corpus (stemmark corpus build)
    #[arg(long, default_value = "data/corpus")]
    pub corpus: PathBuf,
    /// Run folder: checkpoint/, metrics.jsonl and the config used; an existing run is resumed
    #[arg(long)]
    pub run: PathBuf,
    /// Stage config (TOML); without it the paper's defaults, or the run's saved config on resume
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stop after this many steps in total (overrides the config)
    #[arg(long)]
    pub steps: Option<u64>,
    /// Train on the CPU even when CUDA is available
    #[arg(long)]
    pub cpu: bool,
}

/// The stage config: --config, else the run's saved copy, else the defaults; saved in the run.
fn config<T: serde::Serialize + serde::de::DeserializeOwned + Default>(a: &Args, name: &str) -> Result<T> {
    let saved = a.run.join(format!("{name}.toml"));
    let cfg: T = match (&a.config, saved.is_file()) {
        (Some(p), _) => toml::from_str(&std::fs::read_to_string(p)?)?,
        (None, true) => toml::from_str(&std::fs::read_to_string(&saved)?)?,
        (None, false) => T::default(),
    };
    std::fs::create_dir_all(&a.run)?;
    std::fs::write(&saved, toml::to_string_pretty(&cfg)?)?;
    Ok(cfg)
}

fn pick_device(a: &Args) -> tch::Device {
    let dev = device::pick(if a.cpu { Want::Cpu } else { Want::Auto });
    if dev == tch::Device::Cpu {
        // On a shared CPU, libgomp's spinning threads slow every step down.
        tch::set_num_threads(1);
    }
    dev
}

pub fn run(stage: Stage) -> Result<()> {
    match stage {
        Stage::Separator(ref a) => {
            use crate::train::separation::{self, CorpusSegments, Held, SeparationConfig};
            let mut cfg: SeparationConfig = config(a, separation::STAGE)?;
            if let Some(s) = a.steps {
                cfg.steps = s;
            }
            let dev = pick_device(a);
            let mut source = CorpusSegments::new(&a.corpus, Split::Train, &cfg)?;
            let held = if cfg.validate_every > 0 { Some(Held::from_corpus(&a.corpus, Split::Validation, cfg.validation_examples.max(1))?) } else { None };
            let started = std::time::Instant::now();
            if let Some(m) = separation::run(&cfg, &mut source, held.as_ref(), &a.run, dev)? {
                println!("separator: step {} of {}, L1 {:.5} ({:.0} s)", m.step + 1, cfg.steps, m.loss, started.elapsed().as_secs_f64());
            }
            Ok(())
        }
        Stage::Joint(ref a) | Stage::Finetune(ref a) => {
            let finetune = matches!(stage, Stage::Finetune(_));
            let mut cfg: JointConfig = config(a, if finetune { "finetune" } else { "joint" })?;
            cfg.finetune = finetune;
            if let Some(s) = a.steps {
                cfg.steps = s;
            }
            let dev = pick_device(a);
            let mut source = CorpusPairs::new(&a.corpus, Split::Train, cfg.seed)?;
            let mut validation = CorpusPairs::new(&a.corpus, Split::Validation, cfg.seed)?;
            let started = std::time::Instant::now();
            if let Some(m) = joint::run(&cfg, &mut source, &mut validation, &a.run, dev)? {
                println!(
                    "{}: step {} of {}, bit accuracy {:.3}/{:.3}, separator L1 {:.4}, SNR {:.1} dB ({:.0} s)",
                    if finetune { "finetune" } else { "joint" },
                    m.step + 1,
                    cfg.steps,
                    m.bit_acc[0],
                    m.bit_acc[1],
                    m.separator_l1,
                    m.snr_db,
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        Stage::Pretrain(a) => {
            let mut cfg: PretrainConfig = config(&a, "pretrain")?;
            if let Some(s) = a.steps {
                cfg.steps = s;
            }
            let dev = pick_device(&a);
            let mut source = CorpusSource::new(&a.corpus, Split::Train, cfg.seed, cfg.batch)?;
            let mut validation = CorpusSource::new(&a.corpus, Split::Validation, cfg.seed, cfg.validation_examples.max(1))?;
            let started = std::time::Instant::now();
            let last = pretrain::run(&cfg, &mut source, &mut validation, &a.run, dev)?;
            if let Some(m) = last {
                println!(
                    "pretrain: step {} of {}, bit accuracy {:.3}, wrong-key accuracy {:.3}, SNR {:.1} dB ({:.0} s)",
                    m.step + 1,
                    cfg.steps,
                    m.bit_acc,
                    m.wrong_key_acc,
                    m.snr_db,
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
    }
}

/// `stemmark bench train`: seconds per step of each stage on the CPU (one thread, synthetic data),
/// tiny and default network sizes, measured side by side in one run.
pub fn bench_table() -> Result<String> {
    use rand::SeedableRng;
    use crate::train::checkpoint::Nets;
    use crate::train::nets::NetConfig;
    use crate::train::pretrain::Synthetic;
    use crate::train::stage::seeded_nets;
    tch::set_num_threads(1);
    let mut out = String::from("| stage | nets | batch | s / step (median of 3) |\n|---|---|---:|---:|\n");
    for (label, nets_cfg) in [("tiny", NetConfig::tiny()), ("default", NetConfig::default())] {
        let nets: Nets = seeded_nets(&nets_cfg, tch::Device::Cpu, 0)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let p = PretrainConfig { batch: 4, nets: nets_cfg.clone(), ..PretrainConfig::default() };
        let mut adam = crate::train::optim::Adam::new(nets.embedder_vs.variables().into_iter().chain(nets.detector_vs.variables()).collect(), p.lr);
        let secs = median3(|| pretrain::step(&nets, &mut adam, &p, &mut Synthetic, &mut rng, 0, tch::Device::Cpu).map(|_| ()))?;
        out += &format!("| pretrain | {label} | {} | {secs:.2} |\n", p.batch);
        for finetune in [false, true] {
            let j = JointConfig { batch: 2, finetune, nets: nets_cfg.clone(), ..JointConfig::default() };
            let mut optims = joint::optimisers(&nets, &j);
            let secs = median3(|| joint::step(&nets, &mut optims, &j, &mut Synthetic, &mut rng, 0).map(|_| ()))?;
            out += &format!("| {} | {label} | {} | {secs:.2} |\n", if finetune { "finetune" } else { "joint" }, j.batch);
        }
    }
    Ok(out)
}

/// Median of three timed calls after one untimed warm-up (libtorch's first call allocates and
/// picks kernels, which would otherwise make the first row look slow).
fn median3(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::new();
    for _ in 0..3 {
        let start = std::time::Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[1])
}
