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
    if json {
        println!("{}", serde_json::json!({"weights": weights, "config": config_path, "out": args.out}));
    } else {
        println!("exported {} ({}) to {}", weights.display(), config_path.display(), args.out.display());
    }
    Ok(())
}
