//! `stemmark calibrate`: measures the decision statistic's null distribution of a model set on
//! unmarked audio and writes it into the manifest, so the threshold holds its false-positive rate
//! for these models (the theory assumes fair, independent blocks; a trained detector need not
//! give that). Every (item, path, key) reading of unmarked audio — each stem, the mix, and each
//! separated stem, with random keys and the offset search `stemmark detect` uses by default — is
//! one sample of the null statistic.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stemmark_models::decision::Calibration;
use stemmark_models::detector::{Alignment, Detector};
use stemmark_models::keys::Key;
use stemmark_models::manifest::Manifest;
use stemmark_models::separator::Separator;
use stemmark_models::spec::SAMPLE_RATE;

use super::{ModelOpts, progress};
use crate::audio::Audio;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Unmarked items: a built corpus (its validation split) or DIR/<item>/{foreground,background}.*
    #[arg(long)]
    pub data: PathBuf,
    /// Items to read
    #[arg(long, default_value_t = 24)]
    pub items: usize,
    /// Random keys per reading
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// False-positive rate per key and stem the threshold is set for
    #[arg(long, default_value_t = 1e-6)]
    pub target_fpr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only print the fit; leave the manifest as it is
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: Args, opts: &ModelOpts, json: bool) -> Result<()> {
    if !(args.target_fpr > 0.0 && args.target_fpr < 0.5) {
        bail!("--target-fpr must lie in (0, 0.5), not {}", args.target_fpr);
    }
    let dir = opts.prepare()?;
    let mut manifest = Manifest::load(&dir)?;
    let mut det = Detector::open(&dir, opts.provider)?;
    let mut sep = Separator::open(&dir, opts.provider)?;
    // Raw statistics: read with the theoretical null, whatever the manifest says now.
    det.set_calibration(Calibration::default());
    let items = crate::eval::items::load(&args.data, args.items, args.seed)?;
    if items.is_empty() {
        bail!("no items in {}", args.data.display());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xca1);
    let keys: Vec<Key> = (0..args.keys.max(1))
        .map(|i| Key::from_bytes(rand::Rng::random(&mut rng), format!("null-{i}")))
        .collect();
    let pb = progress("calibrate");
    pb.set_length(items.len() as u64);
    let mut z = Vec::new();
    for item in &items {
        let mix: Vec<Vec<f32>> = (0..2)
            .map(|c| item.foreground.channels[c].iter().zip(&item.background.channels[c]).map(|(a, b)| a + b).collect())
            .collect();
        let stems = sep.separate(&mix, &mut |_, _| {})?;
        let mut paths = vec![item.foreground.mid(), item.background.mid(), Audio::new(SAMPLE_RATE, mix).mid()];
        paths.extend(stems.into_iter().map(|s| Audio::new(SAMPLE_RATE, s).mid()));
        for mid in &paths {
            for r in det.detect(mid, &keys, Alignment::Search)? {
                if r.decision.blocks > 0 {
                    z.push(r.decision.z);
                }
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let cal = Calibration::fit(&z, args.target_fpr).context("fewer than 10 readings: give more items")?;
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if json {
        println!("{}", serde_json::json!({"readings": z.len(), "calibration": cal, "max_null_z": max, "threshold": cal.threshold()}));
    } else {
        println!(
            "{} null readings: mean {:.3}, std {:.3} (kept ≥ 1), max {:.2}; threshold on the calibrated z {:.2} for {:.0e} per key and stem",
            z.len(),
            cal.null_mean,
            cal.null_std,
            max,
            cal.threshold(),
            cal.target_fpr
        );
    }
    if !args.dry_run {
        manifest.calibration = cal;
        manifest.save(&dir).with_context(|| format!("cannot write the manifest in {}", dir.display()))?;
        println!("calibration written to {}", dir.join(stemmark_models::manifest::FILE).display());
    }
    Ok(())
}
