//! Training-time access to a built corpus: random 20 s stem pairs of one split and scenario,
//! each stem loudness-normalised, and random 2 s segment positions — all deterministic per seed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stemmark_models::spec::{BLOCK, CLIP, SAMPLE_RATE, STEM_LUFS};

use super::dsp;
use super::manifest::{Manifest, Role, Scenario, Split};
use crate::audio::{self, Audio};

/// A built corpus: its directory and manifest.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Corpus {
    /// Opens `dir/manifest.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load(&dir.join("manifest.json"))?;
        Ok(Corpus { dir: dir.to_path_buf(), manifest })
    }

    /// Clip file lists of one split with the given role.
    fn files(&self, split: Split, scenario: Scenario, role: Role) -> Vec<Vec<PathBuf>> {
        self.manifest
            .items
            .iter()
            .filter(|i| i.split == split && i.scenario == scenario)
            .flat_map(|i| &i.clips)
            .filter(|c| c.role == role)
            .map(|c| c.files.iter().map(|f| self.dir.join(f)).collect())
            .collect()
    }
}

/// Output channel layout of the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// Two channels (mono sources duplicated).
    Stereo,
    /// One channel: the mid (mean) of the stereo clip.
    Mono,
}

/// One training example: two stems of CLIP samples at SAMPLE_RATE, each at STEM_LUFS.
#[derive(Debug, Clone)]
pub struct StemPair {
    /// Speech, or the lead part.
    pub foreground: Audio,
    /// Music, or the accompaniment.
    pub background: Audio,
    /// The clip files the stems came from (for logging and debugging).
    pub sources: [PathBuf; 2],
}

/// Random position of a BLOCK-long segment inside a CLIP-long clip, uniform over all positions.
pub fn segment_start<R: Rng>(rng: &mut R) -> usize {
    rng.random_range(0..=CLIP - BLOCK)
}

/// Endless random stem pairs from one split and scenario.
pub struct Loader {
    rng: ChaCha8Rng,
    scenario: Scenario,
    channels: Channels,
    /// SpeechMusic: foreground pool (speech); LeadAccompaniment: the [lead, acc] pairs.
    first: Vec<Vec<PathBuf>>,
    /// SpeechMusic: background pool (music); empty otherwise.
    second: Vec<Vec<PathBuf>>,
}

impl Loader {
    pub fn new(corpus: &Corpus, split: Split, scenario: Scenario, seed: u64) -> Result<Self> {
        let (first, second) = match scenario {
            Scenario::SpeechMusic => {
                (corpus.files(split, scenario, Role::Speech), corpus.files(split, scenario, Role::Music))
            }
            Scenario::LeadAccompaniment => (corpus.files(split, scenario, Role::Pair), Vec::new()),
        };
        if first.is_empty() || (scenario == Scenario::SpeechMusic && second.is_empty()) {
            bail!("corpus {} has no {scenario} clips in the {split} split", corpus.dir.display());
        }
        Ok(Loader { rng: ChaCha8Rng::seed_from_u64(seed), scenario, channels: Channels::Stereo, first, second })
    }

    /// Mono or stereo output (stereo by default).
    pub fn with_channels(mut self, channels: Channels) -> Self {
        self.channels = channels;
        self
    }

    /// Number of distinct foreground clips (or pairs) the loader draws from.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Random 2 s segment start for the current example, from the loader's own stream.
    pub fn segment_start(&mut self) -> usize {
        segment_start(&mut self.rng)
    }

    /// The next random pair; speech and music are drawn independently from the same split.
    pub fn next_pair(&mut self) -> Result<StemPair> {
        let mut rng = self.rng.clone();
        let pair = self.next_pair_with(&mut rng);
        self.rng = rng;
        pair
    }

    /// A random pair drawn with the caller's RNG (so a batch can be a function of its step alone).
    pub fn next_pair_with<R: Rng>(&self, rng: &mut R) -> Result<StemPair> {
        let [fg, bg] = self.pick_with(rng)?;
        Ok(StemPair {
            foreground: self.load(&fg)?,
            background: self.load(&bg)?,
            sources: [fg, bg],
        })
    }

    /// One stem of a random pair (foreground or background with equal odds), loaded alone.
    pub fn next_stem_with<R: Rng>(&self, rng: &mut R) -> Result<Audio> {
        let [fg, bg] = self.pick_with(rng)?;
        self.load(if rng.random_bool(0.5) { &fg } else { &bg })
    }

    /// The files of a random pair: [foreground, background].
    fn pick_with<R: Rng>(&self, rng: &mut R) -> Result<[PathBuf; 2]> {
        let a = rng.random_range(0..self.first.len());
        Ok(match self.scenario {
            Scenario::SpeechMusic => {
                let b = rng.random_range(0..self.second.len());
                [self.first[a][0].clone(), self.second[b][0].clone()]
            }
            Scenario::LeadAccompaniment => {
                let files = &self.first[a];
                if files.len() != 2 {
                    bail!("pair clip {} does not have two files", files[0].display());
                }
                [files[0].clone(), files[1].clone()]
            }
        })
    }

    fn load(&self, path: &Path) -> Result<Audio> {
        let a = audio::read(path)?;
        if a.rate != SAMPLE_RATE {
            bail!("{}: {} Hz, the corpus is {SAMPLE_RATE} Hz", path.display(), a.rate);
        }
        let mut a = a.to_stereo().with_context(|| path.display().to_string())?;
        dsp::set_len(&mut a, CLIP);
        if let Some(g) = audio::gain_to_lufs(&a, STEM_LUFS)? {
            a.scale(g);
        }
        Ok(match self.channels {
            Channels::Stereo => a,
            Channels::Mono => Audio::new(a.rate, vec![a.mid()]),
        })
    }
}
