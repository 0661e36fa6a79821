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
        Stage::Joint(ref a) | Stage::Finetune(ref a) => {
            let finetune = matches!(stage, Stage::Finetune(_));
            let mut cfg: JointConfig = config(a, if finetune { "finetune" } else { "joint" })?;
            cfg.finetune = finetune;
            if let Some(s) = a.steps {
                cfg.steps = s;
            }
            let dev = pick_device(a);
            let mut source = CorpusPairs::new(&a.corpus, Split::Train, cfg.seed)?;
            let started = std::time::Instant::now();
            if let Some(m) = joint::run(&cfg, &mut source, &a.run, dev)? {
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
            let mut source = CorpusSource::new(&a.corpus, Split::Train, cfg.seed)?;
            let started = std::time::Instant::now();
            let last = pretrain::run(&cfg, &mut source, &a.run, dev)?;
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
