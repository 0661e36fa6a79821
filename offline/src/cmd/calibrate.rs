//! `stemmark calibrate`: measures the decision statistic's null distribution of a model set and
//! writes it into the manifest, so the threshold holds its false-positive rate for these models
//! (the theory assumes fair, independent blocks; a trained detector need not give that). Every
//! (item, path, key) reading — each stem, the mix, and each separated stem, read with random keys
//! on the known grid (one hypothesis; a shift search counts its hypotheses in the threshold) — is
//! one sample of the null statistic, and the calibration is fitted to those. `--search` reads
//! with the offset and shift search instead, to measure what that selection adds (a manifest
//! written from it holds the searched null, conservative for known-grid reading).
//!
//! Two kinds of audio are read: the items unmarked, and the same items with both stems marked by
//! two other keys — what a key ring meets on a master bus (other producers' marks). Both are null
//! readings and both are fitted; they are also reported apart. Before the per-block masks (see
//! [`stemmark_models::keys::Key::block_mask`]) a mark repeated one word in every block and any key
//! read it as some consistent word (shipped models, 24 items × 8 keys: raw z mean 3.92, up to
//! 9.44); with the masks those readings are as random as unmarked audio (mean −0.02, max 2.88).
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stemmark_models::decision::{Calibration, GridIndex};
use stemmark_models::detector::{Alignment, Detector};
use stemmark_models::embedder::Embedder;
use stemmark_models::payload::MAX_PAYLOAD;
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
    /// Items per scenario (see `stemmark eval --items`)
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
    /// Read with the offset and grid-shift search of `stemmark detect` without `--offset` (about
    /// 4× slower): measures how much that search inflates the null (fitted as usual; Found
    /// counted at the threshold for its 16 shifts)
    #[arg(long)]
    pub search: bool,
}

pub fn run(args: Args, opts: &ModelOpts, json: bool) -> Result<()> {
    if !(args.target_fpr > 0.0 && args.target_fpr < 0.5) {
        bail!("--target-fpr must lie in (0, 0.5), not {}", args.target_fpr);
    }
    let dir = opts.prepare()?;
    let mut manifest = Manifest::load(&dir)?;
    let mut det = Detector::open(&dir, opts.provider)?;
    let mut sep = Separator::open(&dir, opts.provider)?;
    let mut emb = Embedder::open(&dir, opts.provider)?;
    // Raw statistics: read with the theoretical null, whatever the manifest says now.
    det.set_calibration(Calibration::default());
    let mut notes = Vec::new();
    let items = crate::eval::items::load(&args.data, args.items, args.seed, &mut notes)?;
    for n in &notes {
        eprintln!("calibrate: {n}");
    }
    if items.is_empty() {
        bail!("no items in {}", args.data.display());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xca1);
    let keys: Vec<Key> = (0..args.keys.max(1))
        .map(|i| Key::from_bytes(rand::Rng::random(&mut rng), format!("null-{i}")))
        .collect();
    let (align, hypotheses) = if args.search { (Alignment::Search, GridIndex::Search) } else { (Alignment::Fixed(0), GridIndex::Known) };
    let hypotheses = hypotheses.hypotheses();
    let pb = progress("calibrate");
    pb.set_length(items.len() as u64);
    // Null readings: of unmarked audio, and of marked audio with keys that did not mark it.
    // (raw z, a payload passed the check and the bound) per reading.
    let mut null: Vec<(f64, bool)> = Vec::new();
    let mut other: Vec<(f64, bool)> = Vec::new();
    for item in &items {
        let unmarked = [item.foreground.channels.clone(), item.background.channels.clone()];
        let marked: Vec<Vec<Vec<f32>>> = unmarked
            .iter()
            .enumerate()
            .map(|(s, stem)| {
                let key = Key::from_bytes(rand::Rng::random(&mut rng), format!("marker-{s}"));
                let payload = rand::Rng::random_range(&mut rng, 0..=MAX_PAYLOAD);
                emb.embed(stem, &key, payload, 1.0, &mut |_, _| {})
            })
            .collect::<Result<_, _>>()?;
        for (is_marked, stems) in [(false, unmarked.to_vec()), (true, marked)] {
            for mid in paths(&mut sep, &stems)? {
                for r in det.detect(&mid, &keys, align)? {
                    if r.decision.blocks == 0 {
                        continue;
                    }
                    // Read with the theoretical null, a payload means: check and bound held.
                    let reading = (r.decision.z, r.decision.payload.is_some());
                    if is_marked { other.push(reading) } else { null.push(reading) }
                }
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let z: Vec<f64> = null.iter().chain(&other).map(|r| r.0).collect();
    let cal = Calibration::fit(&z, args.target_fpr).context("fewer than 10 readings: give more items")?;
    // Found under the fitted rule: a payload (check and bound) and the calibrated z over the threshold.
    let found = |rs: &[(f64, bool)]| rs.iter().filter(|(zr, p)| *p && (zr - cal.null_mean) / cal.null_std >= cal.threshold(hypotheses)).count();
    let bound = |k: usize, n: usize| crate::eval::metrics::rate_upper_95(k as u64, n as u64);
    let summary = |rs: &[(f64, bool)]| {
        let n = rs.len().max(1) as f64;
        let mean_z = rs.iter().map(|r| r.0).sum::<f64>() / n;
        let std_z = (rs.iter().map(|r| (r.0 - mean_z).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let max_z = rs.iter().map(|r| r.0).fold(f64::NEG_INFINITY, f64::max);
        let found = found(rs);
        Summary { readings: rs.len(), mean_z, std_z, max_z, found, found_upper_95: bound(found, rs.len()) }
    };
    let (unmarked, others) = (summary(&null), summary(&other));
    if json {
        println!(
            "{}",
            serde_json::json!({"readings": z.len(), "calibration": cal, "threshold": cal.threshold(hypotheses),
                "unmarked": unmarked, "other_marks": others})
        );
    } else {
        println!(
            "{} null readings: fitted mean {:.3}, std {:.3} (kept ≥ 1); threshold on the calibrated z {:.2} for {:.0e} per key and stem",
            z.len(),
            cal.null_mean,
            cal.null_std,
            cal.threshold(hypotheses),
            cal.target_fpr,
        );
        for (what, s) in [("unmarked audio", &unmarked), ("marked audio, keys that did not mark it", &others)] {
            println!(
                "  {what}: {} readings, raw z mean {:.2}, std {:.2}, max {:.2}; reported as Found: {} (95 % bound {:.2e})",
                s.readings, s.mean_z, s.std_z, s.max_z, s.found, s.found_upper_95
            );
        }
    }
    if !args.dry_run {
        manifest.calibration = cal;
        manifest.save(&dir).with_context(|| format!("cannot write the manifest in {}", dir.display()))?;
        eprintln!("calibration written to {}", dir.join(stemmark_models::manifest::FILE).display());
    }
    Ok(())
}

/// One kind of null reading, as printed and in `--json`.
#[derive(serde::Serialize)]
struct Summary {
    readings: usize,
    mean_z: f64,
    std_z: f64,
    max_z: f64,
    found: usize,
    found_upper_95: f64,
}

/// The mid channels a detection reads from two stems: each stem, their mix, each separated stem.
fn paths(sep: &mut Separator, stems: &[Vec<Vec<f32>>]) -> Result<Vec<Vec<f32>>> {
    let mix: Vec<Vec<f32>> = (0..2).map(|c| stems[0][c].iter().zip(&stems[1][c]).map(|(a, b)| a + b).collect()).collect();
    let separated = sep.separate(&mix, &mut |_, _| {})?;
    let mut out: Vec<Vec<f32>> = stems.iter().map(|s| Audio::new(SAMPLE_RATE, s.clone()).mid()).collect();
    out.push(Audio::new(SAMPLE_RATE, mix).mid());
    out.extend(separated.into_iter().map(|s| Audio::new(SAMPLE_RATE, s).mid()));
    Ok(out)
}
