//! The source items of the corpus — where they are found and how each becomes clips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use stemmark_models::spec::{CLIP, SAMPLE_RATE};

use super::deps;
use super::dsp;
use super::manifest::{Clip, ItemRecord, Role, Scenario, split_of};
use crate::audio::{self, Audio};

/// music21 corpus composers whose works are multi-part (chorales, quartets, madrigals, masses).
pub const MUSIC21_COMPOSERS: &[&str] =
    &["bach", "beethoven", "haydn", "mozart", "monteverdi", "josquin", "corelli", "handel", "schubert"];
/// In `--small` builds every item is cut to this much audio.
pub const SMALL_SECONDS: f64 = 45.0;
/// A rendered mix must match the sum of its rendered stems to this SNR (dB).
pub const MIX_CHECK_DB: f64 = 20.0;
/// LMMS synths are not deterministic (noise, free-running oscillators), so two renders of a song
/// never agree sample by sample: there the mix is checked by its loudness envelope (400 ms frames
/// above −60 dBFS), whose mean and spread of dB differences must stay within these. Measured on
/// Saber-FinalStep, two builds: sample SNR 1.7 / 1.5 dB, envelope mean −0.13 / 0.12 dB, spread
/// 1.09 / 0.60 dB (the first by hand on the rendered files, the second `notes.mix_check_*`).
pub const ENVELOPE_CHECK_DB: (f64, f64) = (1.0, 2.0);
/// `lmms rendertracks` (Debian 1.2.2) leaves garbage in each track's first audio period
/// (measured: non-finite values and |x| up to 1.7e37 in samples 109–127 of most tracks); the first
/// this many samples of every track and of the mix are zeroed. Songs start silent there.
const LMMS_HEAD: usize = 256;
/// Pair clips whose lead or accompaniment is quieter than this (LUFS) carry nothing to learn.
pub const PAIR_MIN_LUFS: f64 = -50.0;
/// Silence between concatenated spoken words, in seconds.
const WORD_GAP: std::ops::Range<f64> = 0.15..0.6;

#[derive(Debug, Clone)]
pub enum Kind {
    /// One speaker/language's recorded words; concatenated into long foreground stems.
    Speech { files: Vec<PathBuf> },
    Music { file: PathBuf },
    /// A music21 corpus score (path inside the installed package).
    Score { path: String },
    /// An LMMS project file.
    Lmms { project: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub group: String,
    pub scenario: Scenario,
    pub package: String,
    pub license: String,
    pub origin: String,
    pub kind: Kind,
}

/// What processing an item ended in. `Unusable` is a property of the material (one part only, all
/// silent, mix check failed) and is remembered; errors are not, and are retried on the next run.
pub enum Outcome {
    Done(ItemRecord),
    Unusable(String),
}

pub struct Ctx {
    pub out: PathBuf,
    pub small: bool,
    /// Extra reshuffled concatenations of each speech set beyond the first.
    pub speech_passes: usize,
    pub python: Option<PathBuf>,
    pub script: PathBuf,
    pub soundfonts: Vec<PathBuf>,
}

/// File-system-safe form of an item id.
pub fn safe(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn seed_of(s: &str) -> u64 {
    u64::from_be_bytes(Sha256::digest(s.as_bytes())[..8].try_into().expect("8 bytes"))
}

fn is_audio(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("ogg" | "opus" | "wav" | "flac" | "mp3"))
}

fn lmms_license(name: &str) -> &'static str {
    // From /usr/share/doc/lmms-common/copyright (Debian 1.2.2+dfsg1-6).
    const TABLE: &[(&str, &str)] = &[
        ("Saber-", "BSD-2-clause"),
        ("Alf42red-", "CC-BY-SA-3.0"),
        ("CapDan-TwilightArea", "CC-BY-SA-3.0"),
        ("Jousboxx-", "CC-BY-SA-4.0"),
        ("Skiessi-", "CC-BY-SA-4.0"),
        ("CapDan-", "Artistic-2.0"),
        ("EsoXLB-", "Artistic-2.0"),
        ("Impulslogik-", "Artistic-2.0"),
        ("Momo64-", "Artistic-2.0"),
        ("Oglsdl-", "Artistic-2.0"),
        ("Settel-", "Artistic-2.0"),
        ("Socceroos-", "Artistic-2.0"),
        ("TameAnderson-", "Artistic-2.0"),
        ("Thomasso-", "Artistic-2.0"),
    ];
    TABLE.iter().find(|(p, _)| name.starts_with(p)).map_or("GPL-2+", |(_, l)| l)
}

/// Finds every source item. Sources whose package is missing are reported in `problems`.
pub fn discover(ctx: &Ctx, missing: &[String], problems: &mut Vec<String>) -> Vec<Item> {
    let mut items = Vec::new();
    let has = |p: &str| !missing.iter().any(|m| m == p);

    // Speech: one item per language directory; the group is the base language, so a language's
    // speaker(s) in both packages land on the same side of the split.
    for (pkg, root, license) in [
        ("klettres-data", "/usr/share/klettres/", "GPL-2+"),
        ("ktuberling-data", "/usr/share/ktuberling/sounds/", "GPL-2+"),
    ] {
        if !has(pkg) {
            problems.push(format!("{pkg}: not installed, speech from it skipped"));
            continue;
        }
        let files = match deps::package_files(pkg) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{pkg}: {e:#}"));
                continue;
            }
        };
        let mut by_lang: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for f in files.into_iter().filter(|f| is_audio(f)) {
            let Some(rest) = f.to_str().and_then(|s| s.strip_prefix(root)) else { continue };
            let Some(lang) = rest.split('/').next().filter(|l| rest.len() > l.len()) else { continue };
            by_lang.entry(lang.to_string()).or_default().push(f.clone());
        }
        let short = pkg.trim_end_matches("-data");
        let take = if ctx.small { 1 } else { usize::MAX };
        for (lang, mut files) in by_lang.into_iter().take(take) {
            files.sort();
            let base = lang.split(['_', '@']).next().unwrap_or(&lang).to_string();
            items.push(Item {
                id: format!("{short}/{lang}"),
                group: format!("speech-lang:{base}"),
                scenario: Scenario::SpeechMusic,
                package: pkg.into(),
                license: license.into(),
                origin: format!("{root}{lang}"),
                kind: Kind::Speech { files },
            });
        }
    }

    // Music: one item (and split group) per track.
    for (pkg, short, license) in [
        ("wesnoth-1.16-music", "wesnoth", "GPL-2+"),
        ("singularity-music", "singularity", "CC-BY-SA-3.0"),
    ] {
        if !has(pkg) {
            problems.push(format!("{pkg}: not installed, music from it skipped"));
            continue;
        }
        let mut files: Vec<PathBuf> = match deps::package_files(pkg) {
            Ok(f) => f.into_iter().filter(|f| is_audio(f)).collect(),
            Err(e) => {
                problems.push(format!("{pkg}: {e:#}"));
                continue;
            }
        };
        files.sort();
        let take = if ctx.small { 1 } else { usize::MAX };
        for f in files.into_iter().take(take) {
            let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("track").to_string();
            let id = format!("{short}/{name}");
            items.push(Item {
                group: id.clone(),
                id,
                scenario: Scenario::SpeechMusic,
                package: pkg.into(),
                license: license.into(),
                origin: f.display().to_string(),
                kind: Kind::Music { file: f },
            });
        }
    }

    // music21 scores: one item and group per score file.
    if !has("fluidsynth") || ctx.soundfonts.is_empty() {
        problems.push("fluidsynth or a GM soundfont missing: music21 multitracks skipped".into());
    } else if let Some(py) = &ctx.python {
        let composers: &[&str] = if ctx.small { &["bach"] } else { MUSIC21_COMPOSERS };
        match Command::new(py).arg(&ctx.script).arg("list").args(composers).output() {
            Ok(o) if o.status.success() => {
                let take = if ctx.small { 2 } else { usize::MAX };
                for p in String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()).take(take) {
                    let rel = p.split("/music21/corpus/").nth(1).unwrap_or(p);
                    let id = format!("music21/{rel}");
                    items.push(Item {
                        group: id.clone(),
                        id,
                        scenario: Scenario::LeadAccompaniment,
                        package: format!("music21=={} (PyPI)", deps::MUSIC21_VERSION),
                        // music21's corpus is BSD-3-Clause; its scores are public-domain works.
                        license: "BSD-3-Clause (music21 corpus)".into(),
                        origin: format!("music21.corpus:{rel}"),
                        kind: Kind::Score { path: p.to_string() },
                    });
                }
            }
            Ok(o) => problems.push(format!("music21 corpus listing failed: {}", String::from_utf8_lossy(&o.stderr))),
            Err(e) => problems.push(format!("cannot run {}: {e}", py.display())),
        }
    } else {
        problems.push("music21 venv unavailable: music21 multitracks skipped".into());
    }

    // LMMS demo projects: slow to render (one pass per track), so never in --small builds.
    if ctx.small {
    } else if !has("lmms") {
        problems.push("lmms: not installed, LMMS demos skipped".into());
    } else {
        match deps::package_files("lmms-common") {
            Ok(files) => {
                let mut projects: Vec<PathBuf> = files
                    .into_iter()
                    .filter(|f| {
                        f.to_str().is_some_and(|s| s.contains("/projects/demos/"))
                            && matches!(f.extension().and_then(|e| e.to_str()), Some("mmp" | "mmpz"))
                    })
                    .collect();
                projects.sort();
                for p in projects {
                    let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("project").to_string();
                    let id = format!("lmms/{name}");
                    items.push(Item {
                        group: id.clone(),
                        id,
                        scenario: Scenario::LeadAccompaniment,
                        package: "lmms-common (Debian lmms)".into(),
                        license: lmms_license(&name).into(),
                        origin: p.display().to_string(),
                        kind: Kind::Lmms { project: p },
                    });
                }
            }
            Err(e) => problems.push(format!("lmms-common: {e:#}")),
        }
    }
    items
}

/// Turns one item into clips under `ctx.out`. Clip files are written atomically; the caller
/// writes the item record only after this returns, so an interrupted item is redone whole.
pub fn process(ctx: &Ctx, item: &Item, work: &Path) -> Result<Outcome> {
    let mut notes = BTreeMap::new();
    let clips = match &item.kind {
        Kind::Speech { files } => speech(ctx, item, files, &mut notes)?,
        Kind::Music { file } => {
            let a = dsp::decode(file)?;
            single(ctx, item, a, Role::Music, "music", "c")?
        }
        Kind::Score { path } => match score(ctx, item, path, work, &mut notes)? {
            Some(stems) => pairs(ctx, item, stems)?,
            None => return Ok(Outcome::Unusable(notes.remove("unusable").unwrap_or_default())),
        },
        Kind::Lmms { project } => match lmms(item, project, work, &mut notes)? {
            Some(stems) => pairs(ctx, item, stems)?,
            None => return Ok(Outcome::Unusable(notes.remove("unusable").unwrap_or_default())),
        },
    };
    if clips.is_empty() {
        return Ok(Outcome::Unusable("no clip with sound after silence removal".into()));
    }
    Ok(Outcome::Done(ItemRecord {
        id: item.id.clone(),
        group: item.group.clone(),
        scenario: item.scenario,
        split: split_of(&item.group),
        package: item.package.clone(),
        license: item.license.clone(),
        origin: item.origin.clone(),
        notes,
        clips,
    }))
}

fn truncate_small(ctx: &Ctx, stems: &mut [Audio]) {
    if ctx.small {
        let n = (SMALL_SECONDS * SAMPLE_RATE as f64) as usize;
        for a in stems.iter_mut().filter(|a| a.len() > n) {
            dsp::set_len(a, n);
        }
    }
}

fn rel_dir(item: &Item, sub: &str) -> String {
    format!("{sub}/{}", safe(&item.id))
}

/// One stem per clip (speech or music).
fn single(ctx: &Ctx, item: &Item, a: Audio, role: Role, sub: &str, prefix: &str) -> Result<Vec<Clip>> {
    let mut stems = dsp::drop_silence(&[a]);
    truncate_small(ctx, &mut stems);
    let g = dsp::headroom_gain(&stems);
    stems.iter_mut().for_each(|s| s.scale(g));
    let dir = rel_dir(item, sub);
    let mut clips = Vec::new();
    for (k, clip) in dsp::cut_clips(&stems, CLIP).into_iter().enumerate() {
        let lufs = audio::loudness(&clip[0])?;
        if lufs.is_none() {
            continue;
        }
        let rel = format!("{dir}/{prefix}{k:03}.wav");
        dsp::write_pcm16(&ctx.out.join(&rel), &clip[0])?;
        clips.push(Clip { files: vec![rel], role, seconds: CLIP as f64 / SAMPLE_RATE as f64, lufs: vec![lufs] });
    }
    Ok(clips)
}

fn speech(ctx: &Ctx, item: &Item, files: &[PathBuf], notes: &mut BTreeMap<String, String>) -> Result<Vec<Clip>> {
    let mut words = Vec::new();
    let mut bad = 0;
    for f in files {
        match dsp::decode(f) {
            // Each word trimmed of its own leading/trailing silence before concatenation.
            Ok(a) => words.push(dsp::drop_silence(&[a]).remove(0)),
            Err(_) => bad += 1,
        }
    }
    words.retain(|w| !w.is_empty());
    if words.is_empty() {
        bail!("none of {} audio files decoded", files.len());
    }
    notes.insert("words".into(), words.len().to_string());
    if bad > 0 {
        notes.insert("undecodable_files".into(), bad.to_string());
    }
    let passes = if ctx.small { 1 } else { 1 + ctx.speech_passes };
    notes.insert("passes".into(), passes.to_string());
    let mut clips = Vec::new();
    for pass in 0..passes {
        // Each pass is a different order and spacing of the same words.
        let mut rng = ChaCha8Rng::seed_from_u64(seed_of(&format!("{}#{pass}", item.id)));
        let mut order: Vec<usize> = (0..words.len()).collect();
        order.shuffle(&mut rng);
        let mut stream = Audio::new(SAMPLE_RATE, vec![Vec::new(), Vec::new()]);
        for i in order {
            let gap = (rng.random_range(WORD_GAP) * SAMPLE_RATE as f64) as usize;
            for (s, w) in stream.channels.iter_mut().zip(&words[i].channels) {
                s.extend_from_slice(w);
                s.extend(std::iter::repeat_n(0.0, gap));
            }
        }
        clips.extend(single(ctx, item, stream, Role::Speech, "speech", &format!("p{pass}_c"))?);
    }
    Ok(clips)
}

/// [lead, accompaniment] stems → aligned pair clips.
fn pairs(ctx: &Ctx, item: &Item, stems: [Audio; 2]) -> Result<Vec<Clip>> {
    let mut stems = dsp::drop_silence(&stems);
    truncate_small(ctx, &mut stems);
    let g = dsp::headroom_gain(&stems);
    stems.iter_mut().for_each(|s| s.scale(g));
    let dir = rel_dir(item, "pairs");
    let mut clips = Vec::new();
    for (k, clip) in dsp::cut_clips(&stems, CLIP).into_iter().enumerate() {
        let lufs = [audio::loudness(&clip[0])?, audio::loudness(&clip[1])?];
        if lufs.iter().any(|l| l.is_none_or(|l| l < PAIR_MIN_LUFS)) {
            continue;
        }
        let files = vec![format!("{dir}/c{k:03}.lead.wav"), format!("{dir}/c{k:03}.acc.wav")];
        for (f, a) in files.iter().zip(&clip) {
            dsp::write_pcm16(&ctx.out.join(f), a)?;
        }
        clips.push(Clip {
            files,
            role: Role::Pair,
            seconds: CLIP as f64 / SAMPLE_RATE as f64,
            lufs: lufs.to_vec(),
        });
    }
    Ok(clips)
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        bail!("{what} failed ({}): {tail}", out.status);
    }
    Ok(())
}

fn fluidsynth(sf: &Path, mid: &Path, wav: &Path) -> Result<Audio> {
    run_tool(
        Command::new("fluidsynth")
            // Dynamic sample loading reads only the samples the song uses: the same output, but
            // the compressed .sf3 loads in ~2 s instead of ~9 s.
            .args(["-ni", "-o", "synth.dynamic-sample-loading=1", "-g", "0.3", "-O", "float", "-T", "wav"])
            .args(["-r", &SAMPLE_RATE.to_string(), "-F"])
            .arg(wav)
            .arg(sf)
            .arg(mid),
        &format!("fluidsynth {}", mid.display()),
    )?;
    dsp::decode(wav)
}

/// Lead + accompaniment of a music21 score, checked against the render of all parts together.
fn score(ctx: &Ctx, item: &Item, path: &str, work: &Path, notes: &mut BTreeMap<String, String>) -> Result<Option<[Audio; 2]>> {
    let py = ctx.python.as_ref().context("music21 venv unavailable")?;
    let seed = seed_of(&item.id) % 1_000_000_007;
    let out = Command::new(py).arg(&ctx.script).arg("export").arg(path).arg(work).arg(seed.to_string()).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("need at least 2") {
            notes.insert("unusable".into(), "fewer than two parts".into());
            return Ok(None);
        }
        bail!("music21 export failed: {}", err.lines().last().unwrap_or(""));
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.join("meta.json"))?)?;
    let parts = meta["parts"].as_array().context("meta.json without parts")?;
    let lead = meta["lead"].as_u64().unwrap_or(0) as usize;
    let sf = &ctx.soundfonts[(seed as usize) % ctx.soundfonts.len()];
    notes.insert("soundfont".into(), sf.file_name().and_then(|s| s.to_str()).unwrap_or("").into());
    notes.insert("lead".into(), format!("part 0 ({})", parts[lead]["name"].as_str().unwrap_or("?")));
    notes.insert(
        "programs".into(),
        parts.iter().map(|p| p["program"].to_string()).collect::<Vec<_>>().join(","),
    );
    let mut rendered = Vec::new();
    for i in 0..parts.len() {
        rendered.push(fluidsynth(sf, &work.join(format!("part_{i:02}.mid")), &work.join(format!("part_{i:02}.wav")))?);
    }
    let full = fluidsynth(sf, &work.join("full.mid"), &work.join("full.wav"))?;
    mix_and_check(rendered, lead, full, Check::Samples, notes)
}

/// How a rendered mix is compared with the sum of its stems.
#[derive(Clone, Copy)]
enum Check {
    /// Sample by sample ([`MIX_CHECK_DB`]): deterministic renders (fluidsynth).
    Samples,
    /// By loudness envelope ([`ENVELOPE_CHECK_DB`]): renders with random synth voices (LMMS).
    Envelope,
}

/// Pads stems to one length (they share a start), sums the non-lead ones, and checks that the
/// independently rendered mix equals lead + accompaniment.
fn mix_and_check(
    mut stems: Vec<Audio>,
    lead: usize,
    mut full: Audio,
    check: Check,
    notes: &mut BTreeMap<String, String>,
) -> Result<Option<[Audio; 2]>> {
    let n = stems.iter().map(Audio::len).chain([full.len()]).max().unwrap_or(0);
    stems.iter_mut().for_each(|a| dsp::set_len(a, n));
    dsp::set_len(&mut full, n);
    let lead_audio = stems[lead].clone();
    let others: Vec<&Audio> = stems.iter().enumerate().filter(|(i, _)| *i != lead).map(|(_, a)| a).collect();
    let acc = dsp::sum(&others);
    let sum = dsp::sum(&[&lead_audio, &acc]);
    let snr = dsp::snr_db(&full, &sum);
    notes.insert("mix_check_snr_db".into(), format!("{snr:.1}"));
    match check {
        Check::Samples if snr < MIX_CHECK_DB => {
            notes.insert("unusable".into(), format!("rendered mix differs from the stem sum ({snr:.1} dB)"));
            return Ok(None);
        }
        Check::Samples => {}
        Check::Envelope => {
            let Some((mean, spread)) = dsp::envelope_difference_db(&full, &sum) else {
                notes.insert("unusable".into(), "the rendered mix is silent".into());
                return Ok(None);
            };
            notes.insert("mix_check_envelope_db".into(), format!("mean {mean:.2}, spread {spread:.2}"));
            if mean.abs() > ENVELOPE_CHECK_DB.0 || spread > ENVELOPE_CHECK_DB.1 {
                notes.insert("unusable".into(), format!("rendered mix's loudness envelope differs from the stem sum's (mean {mean:.2} dB, spread {spread:.2} dB)"));
                return Ok(None);
            }
        }
    }
    Ok(Some([lead_audio, acc]))
}

const PERCUSSION: &[&str] = &[
    "drum", "kick", "snare", "hat", "clap", "cymbal", "crash", "ride", "tom", "rim", "perc", "shaker", "bd", "sd",
    "hh", "conga", "bongo", "tamb", "noise", "fx",
];
const LEADISH: &[&str] = &["lead", "melod", "vocal", "voice", "solo", "pluck", "arp", "piano", "guitar"];

/// Renders every track of an LMMS project and its full mix. Lead: the loudest non-percussion track
/// whose name sounds melodic, else the loudest non-percussion track.
fn lmms(item: &Item, project: &Path, work: &Path, notes: &mut BTreeMap<String, String>) -> Result<Option<[Audio; 2]>> {
    let tracks_dir = work.join("tracks");
    std::fs::create_dir_all(&tracks_dir)?;
    let lmms = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new("timeout");
        c.args(["1800", "lmms", "--allowroot"]).args(args).env("QT_QPA_PLATFORM", "offscreen");
        c
    };
    let mix_path = work.join("mix.wav");
    run_tool(
        &mut lmms(&["render".as_ref(), project.as_os_str(), "-a".as_ref(), "-f".as_ref(), "wav".as_ref(), "-o".as_ref(), mix_path.as_os_str()]),
        &format!("lmms render {}", item.id),
    )?;
    run_tool(
        &mut lmms(&["rendertracks".as_ref(), project.as_os_str(), "-a".as_ref(), "-f".as_ref(), "wav".as_ref(), "-o".as_ref(), tracks_dir.as_os_str()]),
        &format!("lmms rendertracks {}", item.id),
    )?;
    let mut tracks: Vec<(String, Audio, f64)> = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&tracks_dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut repaired = 0;
    for p in paths.into_iter().filter(|p| is_audio(p)) {
        let name = p.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
        let (mut a, bad) = dsp::decode_render(&p)?;
        repaired += bad;
        dsp::zero_head(&mut a, LMMS_HEAD);
        // Silent tracks (muted, empty) add nothing; they still sum to zero, so dropping is exact.
        if let Some(l) = audio::loudness(&a)? {
            tracks.push((name, a, l));
        }
    }
    if tracks.len() < 2 {
        notes.insert("unusable".into(), format!("{} audible track(s)", tracks.len()));
        return Ok(None);
    }
    let lower: Vec<String> = tracks.iter().map(|t| t.0.to_lowercase()).collect();
    let is_perc = |n: &str| {
        n.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| PERCUSSION.iter().any(|p| w.starts_with(p)))
    };
    let loudest = |f: &dyn Fn(usize) -> bool| {
        (0..tracks.len()).filter(|&i| f(i)).max_by(|&a, &b| tracks[a].2.total_cmp(&tracks[b].2))
    };
    let lead = loudest(&|i| !is_perc(&lower[i]) && LEADISH.iter().any(|k| lower[i].contains(k)))
        .or_else(|| loudest(&|i| !is_perc(&lower[i])));
    let Some(lead) = lead else {
        notes.insert("unusable".into(), "only percussion tracks".into());
        return Ok(None);
    };
    notes.insert("lead".into(), tracks[lead].0.clone());
    notes.insert("tracks".into(), tracks.len().to_string());
    let (mut full, bad) = dsp::decode_render(&mix_path)?;
    dsp::zero_head(&mut full, LMMS_HEAD);
    if repaired + bad > 0 {
        notes.insert("non_finite_samples_zeroed".into(), format!("{repaired} in the tracks, {bad} in the mix"));
    }
    mix_and_check(tracks.into_iter().map(|t| t.1).collect(), lead, full, Check::Envelope, notes)
}
