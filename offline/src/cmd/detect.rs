//! `stemmark detect`: reads every key's mark from a file, on the file itself and on each stem the
//! separator pulls out of it, and on all of them combined (the joint reading); reports which
//! stem carries which payload. Every rate counts all the readings tried for the key.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use stemmark_models::decision::Verdict;
use stemmark_models::detector::{Alignment, Detector, Found, KeyReport};
use stemmark_models::separator::Separator;
use stemmark_models::spec::{BLOCK, SAMPLE_RATE, STEM_NAMES};
use stemmark_models::tile::joint::JOINT;

use super::{KeyOpts, ModelOpts, load_for_models, progress, tick};
use crate::audio::Audio;

/// Exit code when the command worked but found no mark.
pub const EXIT_NOTHING_FOUND: i32 = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Mix or stem to read (WAV, FLAC, MP3, OGG; any rate)
    pub input: PathBuf,
    #[command(flatten)]
    pub keys: KeyOpts,
    /// Read only the file itself, without separating it into stems
    #[arg(long)]
    pub no_separate: bool,
    /// Block grid offset in samples at 44.1 kHz (0 for a bounce from timeline zero) instead of
    /// searching for it
    #[arg(long)]
    pub offset: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Reading {
    /// "mix" (the file as given), "separated" or "joint" (the mix and the separated stems
    /// combined)
    pub path: &'static str,
    /// Separated stem name, for the separated path
    pub stem: Option<&'static str>,
    #[serde(flatten)]
    pub report: KeyReport,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub file: PathBuf,
    pub seconds: f64,
    pub full_blocks: usize,
    pub provider: String,
    /// The payload format read ([`stemmark_models::code::PAYLOAD_FORMAT`]).
    pub payload_format: &'static str,
    pub found: Vec<Found>,
    pub readings: Vec<Reading>,
    /// Why nothing could be read, when that is known (silence, too short)
    pub note: Option<String>,
}

pub fn run(args: Args, opts: &ModelOpts, json: bool) -> Result<i32> {
    let keys = args.keys.load()?;
    let (audio, _) = load_for_models(&args.input)?;
    let dir = opts.prepare()?;
    let align = args.offset.map_or(Alignment::Search, Alignment::Fixed);
    let pb = progress("detect");
    let report = analyse(&args.input, &audio, &keys, &dir, opts.provider, align, !args.no_separate, &mut |stage| pb.set_message(stage), &mut tick(&pb))?;
    pb.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.found.is_empty() { EXIT_NOTHING_FOUND } else { 0 })
}

/// What `stemmark detect` reports on `audio` (44.1 kHz): every key on the mix and, with
/// `separate`, on each separated stem. `stage` hears "separate" and "detect" as they start;
/// `separated(done, total)` follows the separation.
#[allow(clippy::too_many_arguments)]
pub fn analyse(
    file: &std::path::Path,
    audio: &Audio,
    keys: &[stemmark_models::keys::Key],
    dir: &std::path::Path,
    provider: stemmark_models::runtime::Provider,
    align: Alignment,
    separate: bool,
    stage: &mut dyn FnMut(&'static str),
    separated: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    let mut det = Detector::open(dir, provider)?;
    let mut readings = Vec::new();
    let mut note = None;
    if audio.len() < BLOCK {
        note = Some(format!("the audio is {:.2} s long, shorter than one 2 s block", audio.seconds()));
    } else if audio.peak() == 0.0 {
        note = Some("the audio is digital silence".into());
    } else {
        let mut mids = vec![("mix", audio.mid())];
        if separate {
            let mut sep = Separator::open(dir, provider)?;
            stage("separate");
            let stems = sep.separate(&audio.channels, separated)?;
            mids.extend(STEM_NAMES.iter().zip(stems).map(|(name, stem)| (*name, Audio::new(SAMPLE_RATE, stem).mid())));
        }
        stage("detect");
        let paths: Vec<(&'static str, &[f32])> = mids.iter().map(|(n, m)| (*n, m.as_slice())).collect();
        for k in det.detect_paths(&paths, keys, align)? {
            for c in k.candidates {
                let (path, stem) = match c.path {
                    "mix" => ("mix", None),
                    JOINT => (JOINT, None),
                    name => ("separated", Some(name)),
                };
                let report = KeyReport { key: k.key.clone(), fingerprint: k.fingerprint.clone(), offset: k.offset, decision: c.decision };
                readings.push(Reading { path, stem, report });
            }
        }
    }
    Ok(Report {
        payload_format: stemmark_models::code::PAYLOAD_FORMAT,
        file: file.to_path_buf(),
        seconds: audio.seconds(),
        full_blocks: audio.len() / BLOCK,
        provider: det.provider().to_string(),
        found: summarise(&readings),
        readings,
        note,
    })
}

fn summarise(readings: &[Reading]) -> Vec<Found> {
    stemmark_models::detector::summarise(
        readings.iter().map(|r| (r.stem.unwrap_or(r.path), r.report.key.as_str(), r.report.fingerprint.as_str(), &r.report.decision)),
    )
}

fn print_table(r: &Report) {
    println!("{}: {:.1} s, {} full blocks, {} provider", r.file.display(), r.seconds, r.full_blocks, r.provider);
    if !r.readings.is_empty() {
        println!("{:<12} {:<16} {:<10} {:>9} {:>7} {:>10} {:>7}", "read on", "key", "verdict", "payload", "T", "FP rate", "blocks");
        for x in &r.readings {
            let d = &x.report.decision;
            println!(
                "{:<12} {:<16} {:<10} {:>9} {:>7.2} {:>10} {:>7}",
                x.stem.unwrap_or(x.path),
                x.report.key,
                match d.verdict {
                    Verdict::Found => "found",
                    Verdict::Uncertain => "uncertain",
                    Verdict::NotFound => "not found",
                },
                d.payload.map_or("-".into(), |p| p.to_string()),
                d.z,
                rate(d.false_positive_rate),
                d.blocks
            );
        }
    }
    for x in r.readings.iter().filter(|x| x.report.decision.old_format_payload.is_some()) {
        println!(
            "OLD FORMAT: key {:?} on {} reads a mark of payload format 1 (payload {}), written by a Stemmark build before the payload code; mark the stem again with this version",
            x.report.key,
            x.stem.unwrap_or(x.path),
            x.report.decision.old_format_payload.unwrap_or_default()
        );
    }
    if r.found.is_empty() {
        println!("no Stemmark watermark found{}", r.note.as_ref().map_or(String::new(), |n| format!(" ({n})")));
    }
    for f in &r.found {
        println!(
            "FOUND payload {} with key {:?} ({}) on {}; carried by the {} reading (false-positive rate {}, every reading of the key counted)",
            f.payload,
            f.key,
            f.fingerprint,
            f.read_on.join(", "),
            f.carried_by,
            if f.false_positive_rate < 1e-300 { rate(f.false_positive_rate) } else { format!("≤ {}", rate(f.false_positive_rate)) }
        );
    }
}

/// A false-positive rate for the table: a strong mark's normal tail underflows to 0 in f64,
/// which must not read as "impossible".
fn rate(r: f64) -> String {
    if r < 1e-300 { "< 1e-300".into() } else { format!("{r:.1e}") }
}
