//! Running the tile channel's contract-v2 models: the embedder's masks and the detector's cell
//! sums for a batch of blocks, with the key's patterns expanded here ([`Patterns`]); and the
//! whole-signal paths of [`super::reference`] with the models in place of the Rust rule.

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView3};
use ort::value::TensorRef;

use super::reference::mid;
use super::{BlockFeature, Patterns};
use crate::contract;
use crate::keys::Key;
use crate::payload;
use crate::runtime::{Model, Provider, RuntimeError};
use crate::spec::{
    BINS, BLOCK, FRAMES_PER_BLOCK, MESSAGE_BITS, TILE_ROWS, TILE_UNIT_COLS, TILE_UNITS,
};
use crate::stft::Stft;

/// Blocks per ONNX run in the whole-signal paths.
const BATCH: usize = 8;

fn run_err(role: &'static str) -> impl Fn(ort::Error) -> RuntimeError {
    move |e| RuntimeError::Run {
        role,
        why: e.to_string(),
    }
}

/// `embedder.onnx` of contract v2.
pub struct TileEmbedderModel {
    model: Model,
}

impl TileEmbedderModel {
    pub fn open(path: &Path, provider: Provider, threads: usize) -> Result<Self, RuntimeError> {
        Ok(TileEmbedderModel {
            model: Model::open(path, contract::EMBEDDER, provider, threads)?,
        })
    }

    /// Wraps a session opened (and checked) for [`contract::EMBEDDER`].
    pub fn from_model(model: Model) -> Self {
        debug_assert_eq!(model.contract.role, contract::EMBEDDER.role);
        TileEmbedderModel { model }
    }

    pub fn provider(&self) -> Provider {
        self.model.provider
    }

    /// Masks `[B, BINS, FRAMES_PER_BLOCK]` for magnitude blocks `[B, BINS, FRAMES_PER_BLOCK]`;
    /// block i is grid block `blocks[i]` and carries `messages[i]` (±1 per bit, under its mask).
    pub fn masks(
        &mut self,
        magnitude: ArrayView3<f32>,
        patterns: &Patterns,
        messages: &[[f32; MESSAGE_BITS]],
        blocks: &[i64],
    ) -> Result<Array3<f32>, RuntimeError> {
        let role = "embedder";
        let b = magnitude.dim().0;
        if messages.len() != b || blocks.len() != b {
            return Err(RuntimeError::Run {
                role,
                why: format!(
                    "{b} blocks, {} messages, {} indices",
                    messages.len(),
                    blocks.len()
                ),
            });
        }
        let pattern: Vec<f32> = messages
            .iter()
            .zip(blocks)
            .flat_map(|(m, &k)| patterns.embed_pattern(m, k))
            .collect();
        let pattern = Array3::from_shape_vec((b, TILE_UNIT_COLS, TILE_ROWS), pattern)
            .expect("one pattern per block");
        let magnitude = magnitude.as_standard_layout();
        let outputs = self
            .model
            .session
            .run(ort::inputs![
                "magnitude" => TensorRef::from_array_view(magnitude.view()).map_err(run_err(role))?,
                "pattern" => TensorRef::from_array_view(pattern.view()).map_err(run_err(role))?,
            ])
            .map_err(run_err(role))?;
        let mask = outputs["mask"]
            .try_extract_array::<f32>()
            .map_err(run_err(role))?;
        if mask.shape() != magnitude.shape() {
            return Err(RuntimeError::Run {
                role,
                why: format!("mask has shape {:?}", mask.shape()),
            });
        }
        Ok(mask
            .to_owned()
            .into_dimensionality()
            .expect("checked shape"))
    }
}

impl TileEmbedderModel {
    /// `channels` (planar, 44.1 kHz) with every whole block marked with `key` and the stem's
    /// `word`, as [`super::reference::embed`] does, the masks from the model.
    pub fn embed(
        &mut self,
        channels: &[Vec<f32>],
        key: &Key,
        word: u32,
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let Some(n) = channels.first().map(Vec::len) else {
            return Err(RuntimeError::Run {
                role: "embedder",
                why: "no channels to mark".into(),
            });
        };
        let patterns = Patterns::from_key(key);
        let mut stft = Stft::new();
        let spec = stft.forward(&mid(channels));
        let mut masks = Vec::with_capacity(n / BLOCK);
        let indices: Vec<i64> = (0..(n / BLOCK) as i64).collect();
        for batch in indices.chunks(BATCH) {
            let mut mag = Array3::zeros((batch.len(), BINS, FRAMES_PER_BLOCK));
            for (i, &b) in batch.iter().enumerate() {
                let frames = b as usize * FRAMES_PER_BLOCK..(b as usize + 1) * FRAMES_PER_BLOCK;
                let block = spec
                    .slice_frames(frames)
                    .expect("whole blocks lie inside the spectrogram");
                block
                    .magnitude_into(mag.index_axis_mut(ndarray::Axis(0), i))
                    .expect("block shape");
            }
            let messages: Vec<[f32; MESSAGE_BITS]> = batch
                .iter()
                .map(|&b| payload::to_bipolar(payload::block_word(word, key, b)))
                .collect();
            let m = self.masks(mag.view(), &patterns, &messages, batch)?;
            masks.extend(m.outer_iter().map(|x| x.to_owned()));
        }
        Ok(super::reference::apply_block_masks(&mut stft, channels, &masks))
    }
}

/// `detector.onnx` of contract v2.
pub struct TileDetectorModel {
    model: Model,
}

impl TileDetectorModel {
    pub fn open(path: &Path, provider: Provider, threads: usize) -> Result<Self, RuntimeError> {
        Ok(TileDetectorModel {
            model: Model::open(path, contract::DETECTOR, provider, threads)?,
        })
    }

    /// Wraps a session opened (and checked) for [`contract::DETECTOR`].
    pub fn from_model(model: Model) -> Self {
        debug_assert_eq!(model.contract.role, contract::DETECTOR.role);
        TileDetectorModel { model }
    }

    pub fn provider(&self) -> Provider {
        self.model.provider
    }

    /// The key-independent features of magnitude blocks `[B, BINS, FRAMES_PER_BLOCK]` (each
    /// block's own STFT); [`BlockFeature::cell_sums`] reads them with a key at a grid index.
    pub fn features(
        &mut self,
        magnitude: ArrayView3<f32>,
    ) -> Result<Vec<BlockFeature>, RuntimeError> {
        let role = "detector";
        let b = magnitude.dim().0;
        let magnitude = magnitude.as_standard_layout();
        let outputs = self
            .model
            .session
            .run(ort::inputs![
                "magnitude" => TensorRef::from_array_view(magnitude.view()).map_err(run_err(role))?,
            ])
            .map_err(run_err(role))?;
        let get = |name: &str| -> Result<Array2<f32>, RuntimeError> {
            let x = outputs[name]
                .try_extract_array::<f32>()
                .map_err(run_err(role))?;
            if x.shape() != [b, TILE_UNITS] {
                return Err(RuntimeError::Run {
                    role,
                    why: format!("{name} have shape {:?}", x.shape()),
                });
            }
            Ok(x.to_owned().into_dimensionality().expect("checked shape"))
        };
        let (values, cells) = (get("unit_values")?, get("unit_cells")?);
        values
            .outer_iter()
            .zip(cells.outer_iter())
            .map(|(v, c)| {
                BlockFeature::from_parts(
                    v.as_slice().expect("standard layout"),
                    c.as_slice().expect("standard layout"),
                )
                .map_err(|e| RuntimeError::Run {
                    role,
                    why: e.to_string(),
                })
            })
            .collect()
    }
}

impl TileDetectorModel {
    /// The features of every whole block of `mid` (block k = grid block k), each from its own
    /// STFT.
    pub fn features_of(&mut self, mid: &[f32]) -> Result<Vec<BlockFeature>, RuntimeError> {
        let mut stft = Stft::new();
        let blocks: Vec<&[f32]> = mid.chunks_exact(BLOCK).collect();
        let mut out = Vec::with_capacity(blocks.len());
        for batch in blocks.chunks(BATCH) {
            let mut mag = Array3::zeros((batch.len(), BINS, FRAMES_PER_BLOCK));
            for (i, block) in batch.iter().enumerate() {
                let spec = stft.forward(block);
                let frames = spec
                    .slice_frames(0..FRAMES_PER_BLOCK)
                    .expect("a block has its frames");
                frames
                    .magnitude_into(mag.index_axis_mut(ndarray::Axis(0), i))
                    .expect("block shape");
            }
            out.extend(self.features(mag.view())?);
        }
        Ok(out)
    }
}
