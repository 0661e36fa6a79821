//! Evaluation items: stem pairs from a folder layout or from a built corpus's validation split.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use stemmark_models::spec::BLOCK;

use super::bandlimit::{self, Band};
use crate::audio::Audio;
use crate::cmd::load_for_models;
use crate::corpus::{Corpus, Loader, Scenario, Split};

/// Two stems of one item, 44.1 kHz stereo, the same length.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    /// Table 1's scenario: the corpus scenario, or the folder's name for a folder of items.
    pub scenario: String,
    pub foreground: Audio,
    pub background: Audio,
}

const AUDIO_EXT: [&str; 5] = ["wav", "flac", "ogg", "mp3", "oga"];

fn is_audio(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| AUDIO_EXT.contains(&e.to_ascii_lowercase().as_str()))
}

/// The stem file `stem.<ext>` in `dir`, any audio extension.
fn stem_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    AUDIO_EXT.iter().map(|e| dir.join(format!("{stem}.{e}"))).find(|p| p.is_file())
}

/// The scenario of band-limited voices: the speech+music draws with the voice band-limited.
pub const BAND_LIMITED: &str = "band-limited speech+music";

/// Up to `n` items per scenario: a corpus (folder with manifest.json) draws `n` pairs per scenario
/// from its validation split, and `n` more as [`BAND_LIMITED`] (the same speech+music draws, the
/// voice through the chains of [`bandlimit`], cycled; codec2 left out with a note when it cannot
/// be installed); otherwise every `DIR/<item>/` with foreground and background files, one
/// scenario. Notes say what was skipped.
pub fn load(data: &Path, n: usize, seed: u64, notes: &mut Vec<String>) -> Result<Vec<Item>> {
    if data.join("manifest.json").is_file() {
        let corpus = Corpus::open(data)?;
        let mut items = Vec::new();
        for scenario in [Scenario::SpeechMusic, Scenario::LeadAccompaniment] {
            let mut loader = match Loader::new(&corpus, Split::Validation, scenario, seed) {
                Ok(l) => l,
                Err(e) => {
                    notes.push(format!("{scenario} skipped: {e:#}"));
                    continue;
                }
            };
            for i in 0..n {
                let p = loader.next_pair()?;
                items.push(Item { name: format!("{scenario}-{i}"), scenario: scenario.to_string(), foreground: p.foreground, background: p.background });
            }
        }
        let bands: Vec<Band> = match bandlimit::ensure_codec2(true) {
            Ok(()) => Band::ALL.to_vec(),
            Err(e) => {
                notes.push(format!("{BAND_LIMITED}: codec2 left out: {e:#}"));
                Band::ALL.into_iter().filter(|&b| b != Band::Codec2).collect()
            }
        };
        let full: Vec<Item> = items.iter().filter(|i| i.scenario == Scenario::SpeechMusic.to_string()).cloned().collect();
        for (i, item) in full.into_iter().enumerate() {
            let band = bands[i % bands.len()];
            let voice = bandlimit::apply(&item.foreground, band).with_context(|| format!("{BAND_LIMITED} ({})", band.name()))?;
            items.push(Item {
                name: format!("{BAND_LIMITED}-{i} ({})", band.name()),
                scenario: BAND_LIMITED.to_string(),
                foreground: voice,
                background: item.background,
            });
        }
        return Ok(items);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data)
        .with_context(|| format!("cannot read {}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut items = Vec::new();
    for d in dirs.into_iter().take(n) {
        let (Some(f), Some(b)) = (stem_file(&d, "foreground"), stem_file(&d, "background")) else {
            eprintln!("eval: skipping {}: needs foreground.<ext> and background.<ext>", d.display());
            continue;
        };
        let fg = load_for_models(&f)?.0.to_stereo()?;
        let bg = load_for_models(&b)?.0.to_stereo()?;
        let len = fg.len().min(bg.len());
        if len < BLOCK {
            eprintln!("eval: skipping {}: shorter than one 2 s block", d.display());
            continue;
        }
        let cut = |a: Audio| Audio::new(a.rate, a.channels.into_iter().map(|mut c| {
            c.truncate(len);
            c
        }).collect());
        let name = d.file_name().map_or("item".into(), |s| s.to_string_lossy().into_owned());
        let scenario = data.file_name().map_or("items".into(), |s| s.to_string_lossy().into_owned());
        items.push(Item { name, scenario, foreground: cut(fg), background: cut(bg) });
    }
    Ok(items)
}

/// Every audio file in `dir` (sorted), for the false-positive rate.
pub fn unmarked(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_audio(p))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no audio files in {}", dir.display());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{Clip, ItemRecord, Manifest, Role};
    use stemmark_models::spec::{CLIP, SAMPLE_RATE};

    /// A validation-only corpus of one speech clip (pulses through a resonance: energy up to
    /// ~10 kHz) and one music clip (a chord), no lead pairs.
    fn corpus(dir: &Path) {
        let pulses: Vec<f32> = (0..CLIP).map(|i| if i % 300 < 3 { 0.5 } else { 0.0 }).collect();
        let chord: Vec<f32> = (0..CLIP)
            .map(|i| [220.0f32, 277.2, 329.6].iter().map(|f| 0.1 * (2.0 * std::f32::consts::PI * f * i as f32 / SAMPLE_RATE as f32).sin()).sum())
            .collect();
        let mut records = Vec::new();
        for (name, role, x) in [("speech", Role::Speech, pulses), ("music", Role::Music, chord)] {
            let file = format!("{name}/x/c0.wav");
            std::fs::create_dir_all(dir.join(name).join("x")).unwrap();
            crate::audio::write_wav(&dir.join(&file), &Audio::new(SAMPLE_RATE, vec![x.clone(), x])).unwrap();
            records.push(ItemRecord {
                id: format!("{name}/x"),
                group: name.into(),
                scenario: Scenario::SpeechMusic,
                split: Split::Validation,
                package: "test".into(),
                license: "CC0".into(),
                origin: "synthesised".into(),
                notes: Default::default(),
                clips: vec![Clip { files: vec![file], role, seconds: 20.0, lufs: vec![None] }],
            });
        }
        Manifest::new(false, records).save(&dir.join("manifest.json")).unwrap();
    }

    #[test]
    fn a_corpus_gives_each_scenario_and_the_voices_band_limited() {
        let dir = tempfile::tempdir().unwrap();
        corpus(dir.path());
        let mut notes = Vec::new();
        let items = load(dir.path(), 3, 0, &mut notes).unwrap();
        assert!(notes.iter().any(|n| n.starts_with("lead+accompaniment skipped")), "{notes:?}");
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "speech+music-0",
                "speech+music-1",
                "speech+music-2",
                "band-limited speech+music-0 (8 kHz)",
                "band-limited speech+music-1 (codec2 3200)",
                "band-limited speech+music-2 (16 kHz)",
            ]
        );
        for (full, narrow) in items[..3].iter().zip(&items[3..]) {
            assert_eq!(narrow.scenario, BAND_LIMITED);
            // The same draw: the music untouched, the voice changed but as long.
            assert_eq!(narrow.background.channels, full.background.channels);
            assert_eq!(narrow.foreground.len(), full.foreground.len());
            assert_ne!(narrow.foreground.channels, full.foreground.channels);
        }
    }
}
