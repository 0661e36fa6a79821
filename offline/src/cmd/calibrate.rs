//! `stemmark calibrate`: measures the decision's null on a model set — readings of audio that
//! carries no mark of the reading key — and checks it against the bound the decision states.
//! The payload code's reader needs no fitted constant: every block's logit is N(0, 1) without a
//! mark (weights from the other blocks), and the chance that a reading names a payload is at most
//! hypotheses · 2²⁴ · Q(T) at its correlation T ([`stemmark_models::code`]). A detector whose
//! logits were not N(0, 1) would break that; this command is how to see it: how many null
//! readings reach each level of the presence bound (≤ p expected about p of the time, the bound
//! being a union bound), and how many name a payload (none expected). Where real readings reach a
//! level more often than the bound says, it fits the scale σ ≥ 1 that T is divided by so they no
//! longer do ([`stemmark_models::code::fit_null_scale`]), and writes σ and the target rate into
//! the manifest; it refuses when a null reading named a payload.
//!
//! Every (item, path, key) reading — each stem, the mix, and each separated stem, read with
//! random keys on the known grid (one hypothesis), or with `--search` the offset and shift search
//! of `stemmark detect` without `--offset` — is one null reading. Two kinds of audio are read:
//! the items unmarked, and the same items with both stems marked by two other keys (what a key
//! ring meets on a master bus); they are reported apart. A third kind is the key's one reading
//! of `stemmark detect` over the mix and its separated stems ([`stemmark_models::tile::joint`]:
//! the best of four candidates, each judged by the bound for four times the hypotheses), over
//! both kinds of audio; the scale fitted is the largest of what either needs.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use stemmark_models::code;
use stemmark_models::decision::{Calibration, GridIndex};
use stemmark_models::detector::{Alignment, Detector};
use stemmark_models::embedder::Embedder;
use stemmark_models::payload::MAX_PAYLOAD;
use stemmark_models::keys::Key;
use stemmark_models::manifest::Manifest;
use stemmark_models::separator::Separator;
use stemmark_models::spec::{SAMPLE_RATE, STEM_NAMES};
use stemmark_models::tile::joint;

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
    /// Only print the measurement; leave the manifest as it is
    #[arg(long)]
    pub dry_run: bool,
    /// Read with the offset and grid-shift search of `stemmark detect` without `--offset` (about
    /// 4× slower): the null of that search, judged by the bound for its 16 shifts
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
    // Read at the rate asked for, whatever the manifest says now.
    det.set_calibration(Calibration { target_fpr: args.target_fpr, ..Calibration::default() });
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
    // (T, a payload named) per reading.
    let mut null: Vec<(f64, bool)> = Vec::new();
    let mut other: Vec<(f64, bool)> = Vec::new();
    let mut joint: Vec<(f64, bool)> = Vec::new();
    let joint_hypotheses = hypotheses * joint::candidates(1 + STEM_NAMES.len());
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
            let mids = paths(&mut sep, &stems)?;
            for mid in &mids {
                for r in det.detect(mid, &keys, align)? {
                    if r.decision.blocks == 0 {
                        continue;
                    }
                    let reading = (r.decision.z, r.decision.payload.is_some());
                    if is_marked { other.push(reading) } else { null.push(reading) }
                }
            }
            // The mix and its separated stems (the last three), read as `stemmark detect` does.
            let on_mix: Vec<(&'static str, &[f32])> =
                std::iter::once("mix").chain(STEM_NAMES).zip(&mids[2..]).map(|(n, m)| (n, m.as_slice())).collect();
            for r in det.detect_paths(&on_mix, &keys, align)? {
                if r.decision.blocks > 0 {
                    joint.push((r.decision.z, r.decision.payload.is_some()));
                }
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if null.len() + other.len() < 10 {
        bail!("fewer than 10 readings: give more items");
    }
    let bound = |k: usize, n: usize| crate::eval::metrics::rate_upper_95(k as u64, n as u64);
    let summary = |rs: &[(f64, bool)], hypotheses: usize| {
        let n = rs.len().max(1) as f64;
        let mean_t = rs.iter().map(|r| r.0).sum::<f64>() / n;
        let max_t = rs.iter().map(|r| r.0).fold(f64::NEG_INFINITY, f64::max);
        let presence = code::NULL_LEVELS
            .iter()
            .map(|&p| rs.iter().filter(|r| code::presence_bound(r.0, hypotheses) <= p).count())
            .collect();
        let found = rs.iter().filter(|r| r.1).count();
        Summary { readings: rs.len(), mean_t, max_t, presence_levels: code::NULL_LEVELS.to_vec(), presence, found, found_upper_95: bound(found, rs.len()) }
    };
    let (unmarked, others, keys_read) = (summary(&null, hypotheses), summary(&other, hypotheses), summary(&joint, joint_hypotheses));
    let pooled: Vec<f64> = null.iter().chain(&other).map(|r| r.0).collect();
    let joint_t: Vec<f64> = joint.iter().map(|r| r.0).collect();
    let scale = code::fit_null_scale(&pooled, hypotheses).max(code::fit_null_scale(&joint_t, joint_hypotheses));
    let cal = Calibration { null_std: scale, target_fpr: args.target_fpr, ..Calibration::default() };
    // On the raw T: the threshold for the rate, times the scale.
    let threshold = code::threshold(args.target_fpr, hypotheses) * scale;
    let readings = null.len() + other.len();
    if json {
        println!(
            "{}",
            serde_json::json!({"readings": readings, "calibration": cal, "threshold": threshold,
                "unmarked": unmarked, "other_marks": others, "key_readings": keys_read})
        );
    } else {
        println!(
            "{readings} null readings ({hypotheses} grid shift(s) each); fitted scale σ {scale:.3}; a payload needs T ≥ {threshold:.2} (raw) for {:.0e} per key and stem",
            args.target_fpr,
        );
        for (what, s) in [
            ("unmarked audio", &unmarked),
            ("marked audio, keys that did not mark it", &others),
            ("the key's one reading over the mix and its separated stems (both kinds)", &keys_read),
        ] {
            let levels: Vec<String> = s
                .presence_levels
                .iter()
                .zip(&s.presence)
                .map(|(p, k)| format!("≤ {p:.0e}: {k} (bound {:.1})", p * s.readings as f64))
                .collect();
            println!(
                "  {what}: {} readings, T mean {:.2}, max {:.2}; presence bound (raw T) {}; payload named: {} (95 % bound {:.2e})",
                s.readings, s.mean_t, s.max_t, levels.join(", "), s.found, s.found_upper_95
            );
        }
    }
    let named = unmarked.found + others.found + keys_read.found;
    if named > 0 {
        bail!("{named} null readings named a payload: these models' logits are not N(0, 1) without a mark, and the decision's bound does not hold for them; the manifest is left as it is");
    }
    if !args.dry_run {
        manifest.calibration = cal;
        manifest.save(&dir).with_context(|| format!("cannot write the manifest in {}", dir.display()))?;
        eprintln!("scale and target rate written to {}", dir.join(stemmark_models::manifest::FILE).display());
    }
    Ok(())
}

/// One kind of null reading, as printed and in `--json`.
#[derive(serde::Serialize)]
struct Summary {
    readings: usize,
    /// The decoded word's correlation T.
    mean_t: f64,
    max_t: f64,
    presence_levels: Vec<f64>,
    /// Readings whose presence bound is at most each level (expected: at most level × readings).
    presence: Vec<usize>,
    /// Readings that named a payload.
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
