//! Evaluation items: stem pairs from a folder layout or from a built corpus's validation split.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use stemmark_models::spec::BLOCK;

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

/// Up to `n` items: a corpus (folder with manifest.json) draws `n` pairs per scenario from its
/// validation split; otherwise every `DIR/<item>/` with foreground and background files.
pub fn load(data: &Path, n: usize, seed: u64) -> Result<Vec<Item>> {
    if data.join("manifest.json").is_file() {
        let corpus = Corpus::open(data)?;
        let mut items = Vec::new();
        for scenario in [Scenario::SpeechMusic, Scenario::LeadAccompaniment] {
            let mut loader = match Loader::new(&corpus, Split::Validation, scenario, seed) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("eval: skipping {scenario}: {e:#}");
                    continue;
                }
            };
            for i in 0..n.div_ceil(2) {
                let p = loader.next_pair()?;
                items.push(Item { name: format!("{scenario}-{i}"), scenario: scenario.to_string(), foreground: p.foreground, background: p.background });
            }
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
