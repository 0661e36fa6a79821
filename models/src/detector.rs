//! Detection: audio + key ring → per-key report (payload, confidence, per-block bits), with
//! `detector.onnx` and the calibrated decision rule.

use std::path::Path;

use ndarray::Array2;
use ort::value::TensorRef;

use crate::contract;
use crate::decision::{self, Calibration, Decision, GridBlock, GridIndex};
use crate::keys::Key;
use crate::manifest::Manifest;
use crate::modelset::{self, ModelError};
use crate::runtime::{Model, Provider, RuntimeError};
use crate::spec::{BLOCK, HOP, KEY_DIM, MESSAGE_BITS};

/// Blocks quieter than this (RMS, dBFS) carry no usable mark and are left out of the decision.
pub const SILENCE_DBFS: f32 = -70.0;
/// Blocks per ONNX run.
const BATCH: usize = 8;
/// Coarse offset search step (9 hops = 50 ms), refined afterwards in single hops.
const COARSE_STEP: usize = 9 * HOP;
/// Blocks the offset search looks at.
const PROBE_BLOCKS: usize = 4;

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
    model: Model,
    manifest: Manifest,
}

impl Detector {
    pub fn open(dir: &Path, provider: Provider) -> Result<Detector, ModelError> {
        let (manifest, model) = modelset::open(dir, contract::DETECTOR, provider)?;
        Ok(Detector { model, manifest })
    }

    /// [`open`](Self::open) with `threads` ONNX Runtime threads (a plugin instance uses few).
    pub fn open_with_threads(dir: &Path, provider: Provider, threads: usize) -> Result<Detector, ModelError> {
        let (manifest, model) = modelset::open_with_threads(dir, contract::DETECTOR, provider, threads)?;
        Ok(Detector { model, manifest })
    }

    pub fn provider(&self) -> Provider {
        self.model.provider
    }

    /// Reads with `cal` instead of the manifest's calibration (to measure a new one).
    pub fn set_calibration(&mut self, cal: Calibration) {
        self.manifest.calibration = cal;
    }

    pub fn calibration(&self) -> Calibration {
        self.manifest.calibration
    }

    /// Logits for a batch of blocks `[B, BLOCK]` under `key`.
    pub fn logits(&mut self, blocks: &Array2<f32>, key: &Key) -> Result<Vec<[f32; MESSAGE_BITS]>, ModelError> {
        let b = blocks.nrows();
        let kv = key.vector();
        let keys = Array2::from_shape_fn((b, KEY_DIM), |(_, i)| kv[i]);
        let run_err = |e: ort::Error| RuntimeError::Run { role: "detector", why: e.to_string() };
        let outputs = self
            .model
            .session
            .run(ort::inputs![
                "audio" => TensorRef::from_array_view(blocks.view()).map_err(run_err)?,
                "key" => TensorRef::from_array_view(keys.view()).map_err(run_err)?,
            ])
            .map_err(run_err)?;
        let logits = outputs["logits"].try_extract_array::<f32>().map_err(run_err)?;
        if logits.shape() != [b, MESSAGE_BITS] {
            return Err(RuntimeError::Run { role: "detector", why: format!("logits have shape {:?}", logits.shape()) }.into());
        }
        Ok(logits
            .as_slice()
            .map(|s| s.chunks_exact(MESSAGE_BITS).map(|c| c.try_into().expect("32 per row")).collect())
            .unwrap_or_else(|| logits.outer_iter().map(|r| std::array::from_fn(|i| r[i])).collect()))
    }

    /// Logits of every audible full block of the grid starting at `offset` (at most `limit`),
    /// each with its index on that grid (block k starts at `offset + k·BLOCK`).
    pub fn grid_logits(&mut self, mid: &[f32], offset: usize, key: &Key, limit: usize) -> Result<Vec<GridBlock>, ModelError> {
        let starts: Vec<usize> = (0..)
            .map(|k| offset + k * BLOCK)
            .take_while(|s| s + BLOCK <= mid.len())
            .filter(|&s| audible(&mid[s..s + BLOCK]))
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(starts.len());
        for chunk in starts.chunks(BATCH) {
            let batch = Array2::from_shape_fn((chunk.len(), BLOCK), |(b, i)| mid[chunk[b] + i]);
            let logits = self.logits(&batch, key)?;
            out.extend(chunk.iter().zip(logits).map(|(&s, logits)| GridBlock { index: ((s - offset) / BLOCK) as i64, logits }));
        }
        Ok(out)
    }

    /// The grid offset where `key`'s mark is most consistent (at the best shift of the mask
    /// cycle), searched coarse then fine.
    pub fn find_offset(&mut self, mid: &[f32], key: &Key) -> Result<usize, ModelError> {
        let score = |d: &mut Detector, off: usize| -> Result<f64, ModelError> {
            let blocks = d.grid_logits(mid, off, key, PROBE_BLOCKS)?;
            Ok(decision::best_shift(&blocks, key, GridIndex::Search).1)
        };
        let mut best = (f64::NEG_INFINITY, 0usize);
        for off in (0..BLOCK).step_by(COARSE_STEP).filter(|o| o + BLOCK <= mid.len()) {
            let z = score(self, off)?;
            if z > best.0 {
                best = (z, off);
            }
        }
        let centre = best.1;
        for k in 1..=COARSE_STEP / HOP / 2 {
            for off in [(centre + BLOCK - k * HOP) % BLOCK, (centre + k * HOP) % BLOCK] {
                if off + BLOCK <= mid.len() {
                    let z = score(self, off)?;
                    if z > best.0 {
                        best = (z, off);
                    }
                }
            }
        }
        Ok(best.1)
    }

    /// Reads `mid` (44.1 kHz, mono: the mean of a stem's channels) with every key.
    pub fn detect(&mut self, mid: &[f32], keys: &[Key], align: Alignment) -> Result<Vec<KeyReport>, ModelError> {
        if let Some(p) = mid.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::Input(format!("non-finite sample at index {p}")));
        }
        let cal = self.calibration();
        keys.iter()
            .map(|key| {
                let (offset, grid) = match align {
                    Alignment::Fixed(o) => (o, GridIndex::Known),
                    Alignment::Search => (self.find_offset(mid, key)?, GridIndex::Search),
                };
                let blocks = self.grid_logits(mid, offset, key, usize::MAX)?;
                Ok(KeyReport {
                    key: key.name().to_string(),
                    fingerprint: key.fingerprint(),
                    offset,
                    decision: decision::decide(&blocks, key, &cal, grid),
                })
            })
            .collect()
    }
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
    /// Where it was read: "mix" and/or separated stem names
    pub read_on: Vec<String>,
    /// Smallest false-positive rate among those readings
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
                f.false_positive_rate = f.false_positive_rate.min(d.false_positive_rate);
            }
            None => found.push(Found {
                key: key.to_string(),
                fingerprint: fingerprint.to_string(),
                payload,
                read_on: vec![place.to_string()],
                false_positive_rate: d.false_positive_rate,
            }),
        }
    }
    found
}
