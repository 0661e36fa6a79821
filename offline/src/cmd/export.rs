//! `stemmark export`: trained weights → the three ONNX files and their manifest (pure Rust).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::train::nets::NetConfig;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run's checkpoint folder (nets.safetensors + nets.toml), or the weights file itself
    pub checkpoint: PathBuf,
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
    let (weights, dir) = if args.checkpoint.is_dir() {
        (args.checkpoint.join("nets.safetensors"), args.checkpoint.clone())
    } else {
        (args.checkpoint.clone(), args.checkpoint.parent().map(PathBuf::from).unwrap_or_default())
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
