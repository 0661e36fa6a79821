//! Detection: audio + key ring → per-key report (payload, confidence, per-block bits), with the
//! tile channel's `detector.onnx` and the window decision (`tile::window`).

use std::path::Path;

use ndarray::{Array3, ArrayView3};

use crate::contract;
use crate::decision::{Calibration, Decision, GridBlock, GridIndex};
use crate::keys::Key;
use crate::manifest::Manifest;
use crate::modelset::{self, ModelError};
use crate::runtime::Provider;
use crate::spec::{BINS, BLOCK, FRAMES_PER_BLOCK, HOP};
use crate::stft::Stft;
use crate::tile::{joint, window};
use crate::tile::{BlockFeature, Params, Patterns, TileDetectorModel};

/// Blocks quieter than this (RMS, dBFS) carry no usable mark and are left out of the decision.
pub const SILENCE_DBFS: f32 = -70.0;
/// Blocks per ONNX run.
const BATCH: usize = 8;
/// Coarse offset search step (4 hops = 22 ms), refined afterwards in single hops over the whole
/// span to the neighbouring coarse points. A probe only scores a mark it is within about two hops
/// of: with 9 hops (50 ms) a grid 3–5 hops from every coarse point was found at a wrong offset or
/// not at all (a Stemmark Embed bounce from Ardour 7 read nothing, and z 72 once its grid was
/// known); and the best coarse probe can still sit a few hops from the grid, hence the span.
const COARSE_STEP: usize = 4 * HOP;
/// Blocks the offset search looks at.
const PROBE_BLOCKS: usize = 4;

const _: () = assert!(COARSE_STEP.is_multiple_of(HOP) && BLOCK.is_multiple_of(HOP), "search offsets are whole hops");

/// How the block grid is placed on the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Block k starts at sample `offset + k·BLOCK` and is grid block k of the embedder (a DAW
    /// bounce from timeline zero, a file marked from its first sample: offset 0).
    Fixed(usize),
    /// Search the offset, and the mask cycle's shift (files of unknown origin).
    Search,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyReport {
    pub key: String,
    pub fingerprint: String,
    /// Sample offset of the block grid that was used.
    pub offset: usize,
    #[serde(flatten)]
    pub decision: Decision,
}

pub struct Detector {
    model: TileDetectorModel,
    manifest: Manifest,
    stft: Stft,
}

impl Detector {
    pub fn open(dir: &Path, provider: Provider) -> Result<Detector, ModelError> {
        Detector::open_with_threads(dir, provider, modelset::all_cores())
    }

    /// [`open`](Self::open) with `threads` ONNX Runtime threads (a plugin instance uses few).
    pub fn open_with_threads(dir: &Path, provider: Provider, threads: usize) -> Result<Detector, ModelError> {
        let (manifest, model) = modelset::open_with_threads(dir, contract::DETECTOR, provider, threads)?;
        Ok(Detector { model: TileDetectorModel::from_model(model), manifest, stft: Stft::new() })
    }

    pub fn provider(&self) -> Provider {
        self.model.provider()
    }

    /// Reads with `cal` instead of the manifest's calibration (to measure a new one).
    pub fn set_calibration(&mut self, cal: Calibration) {
        self.manifest.calibration = cal;
    }

    pub fn calibration(&self) -> Calibration {
        self.manifest.calibration
    }

    /// The channel constants the window decision uses.
    pub fn channel(&self) -> &Params {
        &self.manifest.channel
    }

    /// Magnitudes `[B, BINS, FRAMES_PER_BLOCK]` of `blocks` (each `BLOCK` samples of mid, each
    /// from its own STFT): the key-independent input, computed once for every key.
    pub fn magnitudes(&mut self, blocks: &[&[f32]]) -> Result<Array3<f32>, ModelError> {
        if let Some(b) = blocks.iter().find(|b| b.len() != BLOCK) {
            return Err(ModelError::Input(format!("a block has {} samples, not {BLOCK}", b.len())));
        }
        let mut mag = Array3::zeros((blocks.len(), BINS, FRAMES_PER_BLOCK));
        for (i, block) in blocks.iter().enumerate() {
            let spec = self.stft.forward(block);
            let frames = spec.slice_frames(0..FRAMES_PER_BLOCK).expect("a block has its frames");
            frames.magnitude_into(mag.index_axis_mut(ndarray::Axis(0), i)).expect("block shape");
        }
        Ok(mag)
    }

    /// The key-independent features of magnitude blocks ([`magnitudes`](Self::magnitudes)).
    pub fn features(&mut self, magnitude: ArrayView3<f32>) -> Result<Vec<BlockFeature>, ModelError> {
        let n = magnitude.dim().0;
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(BATCH) {
            let part = magnitude.slice_axis(ndarray::Axis(0), (start..(start + BATCH).min(n)).into());
            out.extend(self.model.features(part)?);
        }
        Ok(out)
    }

    /// [`features`](Self::features) of `blocks`' [`magnitudes`](Self::magnitudes).
    pub fn block_features(&mut self, blocks: &[&[f32]]) -> Result<Vec<BlockFeature>, ModelError> {
        let mag = self.magnitudes(blocks)?;
        self.features(mag.view())
    }

    /// Every audible full block of the grid starting at `offset` (at most `limit`), with its
    /// index k on that grid (block k starts at `offset + k·BLOCK`) and its feature.
    pub fn grid_features(&mut self, mid: &[f32], offset: usize, limit: usize) -> Result<Vec<(i64, BlockFeature)>, ModelError> {
        let starts = audible_starts(mid, offset, limit);
        let blocks: Vec<&[f32]> = starts.iter().map(|&s| &mid[s..s + BLOCK]).collect();
        let features = self.block_features(&blocks)?;
        Ok(starts.iter().map(|&s| ((s - offset) / BLOCK) as i64).zip(features).collect())
    }

    /// The logits of every audible full block of the grid starting at `offset` (at most
    /// `limit`) read with `key`, block k (starting at `offset + k·BLOCK`) as the embedder's block
    /// `first_index + k`, weighted from the others ([`window::window_logits`]). The index picks
    /// the key's scramble in the sums, not only the mask: read at the wrong index, a mark is noise.
    pub fn grid_logits(&mut self, mid: &[f32], offset: usize, first_index: i64, key: &Key, limit: usize) -> Result<Vec<GridBlock>, ModelError> {
        let features = self.grid_features(mid, offset, limit)?;
        let blocks: Vec<(i64, &BlockFeature)> = features.iter().map(|(k, f)| (first_index + k, f)).collect();
        Ok(window::shifted_logits(&blocks, &Patterns::from_key(key), 0, &self.manifest.channel))
    }

    /// The grid offset where `key`'s mark is most consistent (at the best shift of the mask
    /// cycle), searched coarse then fine over the first [`PROBE_BLOCKS`] audible blocks.
    ///
    /// Every candidate offset is a whole number of hops, so the probes take their frames from one
    /// STFT of the whole signal instead of one per block and offset (a block's own STFT differs
    /// only in its edge frames, which the search can ignore); the reading itself is exact.
    pub fn find_offset(&mut self, mid: &[f32], key: &Key) -> Result<usize, ModelError> {
        Ok(self.offset_and_score(mid, key)?.0)
    }

    /// [`find_offset`](Self::find_offset) and the probe's score there (the code's T or format
    /// 1's √S on the probe blocks), to compare offsets found on several paths.
    fn offset_and_score(&mut self, mid: &[f32], key: &Key) -> Result<(usize, f64), ModelError> {
        let spec = self.stft.forward(mid);
        let patterns = Patterns::from_key(key);
        let score = |d: &mut Detector, off: usize| -> Result<f64, ModelError> {
            let starts = audible_starts(mid, off, PROBE_BLOCKS);
            if starts.is_empty() {
                return Ok(f64::NEG_INFINITY);
            }
            let mut mag = Array3::zeros((starts.len(), BINS, FRAMES_PER_BLOCK));
            for (i, &s) in starts.iter().enumerate() {
                let first = s / HOP;
                let frames = spec.slice_frames(first..first + FRAMES_PER_BLOCK).expect("a whole block's frames");
                frames.magnitude_into(mag.index_axis_mut(ndarray::Axis(0), i)).expect("block shape");
            }
            let features = d.features(mag.view())?;
            let blocks: Vec<(i64, &BlockFeature)> =
                starts.iter().map(|&s| ((s - off) / BLOCK) as i64).zip(features.iter()).collect();
            // The code's T, or a payload-format-1 mark's √S, whichever lines up (each is ≈ the
            // mark's amplitude × √(bits read) when aligned, noise-sized when not).
            let found = window::best_shift_features(&blocks, &patterns, key, GridIndex::Search, &d.manifest.channel);
            Ok(found.t.max(found.format1.1.sqrt()))
        };
        let mut best = (f64::NEG_INFINITY, 0usize);
        for off in (0..BLOCK).step_by(COARSE_STEP).filter(|o| o + BLOCK <= mid.len()) {
            let z = score(self, off)?;
            if z > best.0 {
                best = (z, off);
            }
        }
        let centre = best.1;
        for k in 1..=COARSE_STEP / HOP {
            for off in [(centre + BLOCK - k * HOP) % BLOCK, (centre + k * HOP) % BLOCK] {
                if off + BLOCK <= mid.len() {
                    let z = score(self, off)?;
                    if z > best.0 {
                        best = (z, off);
                    }
                }
            }
        }
        Ok((best.1, best.0))
    }

    /// Reads `mid` (44.1 kHz, mono: the mean of a stem's channels) with every key. On a fixed
    /// grid the blocks' features are computed once for all keys.
    pub fn detect(&mut self, mid: &[f32], keys: &[Key], align: Alignment) -> Result<Vec<KeyReport>, ModelError> {
        if let Some(p) = mid.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::Input(format!("non-finite sample at index {p}")));
        }
        let cal = self.calibration();
        let fixed = match align {
            Alignment::Fixed(o) => Some((o, self.grid_features(mid, o, usize::MAX)?)),
            Alignment::Search => None,
        };
        let mut reports = Vec::with_capacity(keys.len());
        for key in keys {
            let (offset, grid, searched);
            let features = match &fixed {
                Some((o, f)) => {
                    (offset, grid) = (*o, GridIndex::Known);
                    f
                }
                None => {
                    (offset, grid) = (self.find_offset(mid, key)?, GridIndex::Search);
                    searched = self.grid_features(mid, offset, usize::MAX)?;
                    &searched
                }
            };
            let blocks: Vec<(i64, &BlockFeature)> = features.iter().map(|(k, f)| (*k, f)).collect();
            let decision = window::decide(&blocks, &Patterns::from_key(key), key, &cal, grid, &self.manifest.channel);
            reports.push(KeyReport { key: key.name().to_string(), fingerprint: key.fingerprint(), offset, decision });
        }
        Ok(reports)
    }

    /// Reads every key on several paths of one recording on one time axis (the mix and the stems
    /// separated from it, each `(name, mid)`): per key, each path's reading and the key's one
    /// reading across them ([`joint`]), every candidate charged to its rate. Searched, a key's grid
    /// offset is the one whose probe scored best on any path (a mark has one grid on all paths).
    pub fn detect_paths(&mut self, paths: &[(&'static str, &[f32])], keys: &[Key], align: Alignment) -> Result<Vec<KeyReading>, ModelError> {
        if let Some((name, p)) = paths.iter().find_map(|(n, m)| m.iter().position(|x| !x.is_finite()).map(|p| (n, p))) {
            return Err(ModelError::Input(format!("non-finite sample at index {p} of the {name}")));
        }
        let cal = self.calibration();
        let grid = match align {
            Alignment::Fixed(_) => GridIndex::Known,
            Alignment::Search => GridIndex::Search,
        };
        // Features per (path, offset), computed once for every key that uses them.
        let mut features: std::collections::HashMap<(usize, usize), Vec<(i64, BlockFeature)>> = Default::default();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let offset = match align {
                Alignment::Fixed(o) => o,
                Alignment::Search => {
                    let mut best = (0, f64::NEG_INFINITY);
                    for (_, mid) in paths {
                        let (o, score) = self.offset_and_score(mid, key)?;
                        if score > best.1 {
                            best = (o, score);
                        }
                    }
                    best.0
                }
            };
            for (p, (_, mid)) in paths.iter().enumerate() {
                if let std::collections::hash_map::Entry::Vacant(e) = features.entry((p, offset)) {
                    e.insert(self.grid_features(mid, offset, usize::MAX)?);
                }
            }
            let read: Vec<(&'static str, Vec<(i64, &BlockFeature)>)> = paths
                .iter()
                .enumerate()
                .map(|(p, (name, _))| (*name, features[&(p, offset)].iter().map(|(k, f)| (*k, f)).collect()))
                .collect();
            let d = joint::decide(&read, &Patterns::from_key(key), key, &cal, grid, &self.manifest.channel);
            out.push(KeyReading {
                key: key.name().to_string(),
                fingerprint: key.fingerprint(),
                offset,
                carried_by: d.carried_by,
                decision: d.decision,
                candidates: d.candidates.into_iter().map(|(path, decision)| PathDecision { path, decision }).collect(),
            });
        }
        Ok(out)
    }
}

/// A key's one reading over several paths ([`Detector::detect_paths`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyReading {
    pub key: String,
    pub fingerprint: String,
    /// Sample offset of the block grid that was used (on every path).
    pub offset: usize,
    /// The candidate the key's reading is: a path ("mix", a stem) or "joint" (all paths' logits
    /// combined).
    pub carried_by: &'static str,
    /// The key's reading, its rate counting every candidate and shift.
    #[serde(flatten)]
    pub decision: Decision,
    /// Every candidate's reading, charged alike.
    pub candidates: Vec<PathDecision>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PathDecision {
    pub path: &'static str,
    #[serde(flatten)]
    pub decision: Decision,
}

/// Start samples of the first `limit` audible full blocks of the grid starting at `offset`.
fn audible_starts(mid: &[f32], offset: usize, limit: usize) -> Vec<usize> {
    (0..)
        .map(|k| offset + k * BLOCK)
        .take_while(|s| s + BLOCK <= mid.len())
        .filter(|&s| audible(&mid[s..s + BLOCK]))
        .take(limit)
        .collect()
}

/// Whether a block is loud enough to carry a mark.
pub fn audible(block: &[f32]) -> bool {
    let ms = block.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / block.len().max(1) as f64;
    10.0 * ms.max(1e-30).log10() > SILENCE_DBFS as f64
}

/// One payload found with one key, and every place it was read.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Found {
    pub key: String,
    pub fingerprint: String,
    pub payload: u32,
    /// Where it was read: "mix", separated stem names, "joint" (all paths combined)
    pub read_on: Vec<String>,
    /// The reading with the smallest false-positive rate: the one that carried the evidence
    pub carried_by: String,
    /// Smallest false-positive rate among those readings (each counts every path and shift
    /// tried for the key)
    pub false_positive_rate: f64,
}

/// Groups the readings whose verdict is Found by (key, payload): `(place, key name, fingerprint,
/// decision)` per reading. The CLI and Stemmark Detect summarise with this one rule.
pub fn summarise<'a>(readings: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a crate::decision::Decision)>) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for (place, key, fingerprint, d) in readings {
        let (crate::decision::Verdict::Found, Some(payload)) = (d.verdict, d.payload) else {
            continue;
        };
        match found.iter_mut().find(|f| f.fingerprint == fingerprint && f.payload == payload) {
            Some(f) => {
                f.read_on.push(place.to_string());
                if d.false_positive_rate < f.false_positive_rate {
                    f.false_positive_rate = d.false_positive_rate;
                    f.carried_by = place.to_string();
                }
            }
            None => found.push(Found {
                key: key.to_string(),
                fingerprint: fingerprint.to_string(),
                payload,
                read_on: vec![place.to_string()],
                carried_by: place.to_string(),
                false_positive_rate: d.false_positive_rate,
            }),
        }
    }
    found
}
