//! Running the tile channel's contract-v2 models: the embedder's masks and the detector's cell
//! sums for a batch of blocks, with the key's patterns expanded here ([`Patterns`]); and the
//! whole-signal paths of [`super::reference`] with the models in place of the Rust rule.

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView3};
use ort::value::TensorRef;

use super::reference::mid;
use super::window::WindowBlock;
use super::{CellSums, Patterns};
use crate::contract;
use crate::keys::Key;
use crate::payload;
use crate::runtime::{Model, Provider, RuntimeError};
use crate::spec::{
    BINS, BLOCK, CELLS, FRAMES_PER_BLOCK, MESSAGE_BITS, TILE_ROWS, TILE_UNIT_COLS, TILE_UNITS,
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
            model: Model::open(path, contract::TILE_EMBEDDER, provider, threads)?,
        })
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
        Ok(channels
            .iter()
            .map(|ch| {
                let mut s = stft.forward(ch);
                for (b, m) in masks.iter().enumerate() {
                    s.apply_mask_at(b * FRAMES_PER_BLOCK, m.view())
                        .expect("mask fits the block's frames");
                }
                stft.inverse(&s, n)
            })
            .collect())
    }
}

/// `detector.onnx` of contract v2.
pub struct TileDetectorModel {
    model: Model,
}

impl TileDetectorModel {
    pub fn open(path: &Path, provider: Provider, threads: usize) -> Result<Self, RuntimeError> {
        Ok(TileDetectorModel {
            model: Model::open(path, contract::TILE_DETECTOR, provider, threads)?,
        })
    }

    /// Cell sums of magnitude blocks `[B, BINS, FRAMES_PER_BLOCK]` (each block's own STFT) read
    /// with `patterns`, block i as grid block `blocks[i]`.
    pub fn sums(
        &mut self,
        magnitude: ArrayView3<f32>,
        patterns: &Patterns,
        blocks: &[i64],
    ) -> Result<Vec<CellSums>, RuntimeError> {
        let role = "detector";
        let b = magnitude.dim().0;
        if blocks.len() != b {
            return Err(RuntimeError::Run {
                role,
                why: format!("{b} blocks, {} indices", blocks.len()),
            });
        }
        let allocation: Vec<f32> = blocks
            .iter()
            .flat_map(|&k| patterns.detect_allocation(k))
            .collect();
        let allocation = Array3::from_shape_vec((b, MESSAGE_BITS, TILE_UNITS), allocation)
            .expect("one allocation per block");
        let magnitude = magnitude.as_standard_layout();
        let outputs = self
            .model
            .session
            .run(ort::inputs![
                "magnitude" => TensorRef::from_array_view(magnitude.view()).map_err(run_err(role))?,
                "allocation" => TensorRef::from_array_view(allocation.view()).map_err(run_err(role))?,
            ])
            .map_err(run_err(role))?;
        let get = |name: &str| -> Result<Array2<f64>, RuntimeError> {
            let x = outputs[name]
                .try_extract_array::<f32>()
                .map_err(run_err(role))?;
            if x.shape() != [b, MESSAGE_BITS, CELLS] {
                return Err(RuntimeError::Run {
                    role,
                    why: format!("{name} have shape {:?}", x.shape()),
                });
            }
            Ok(x.mapv(f64::from)
                .into_shape_with_order((b * MESSAGE_BITS, CELLS))
                .expect("checked shape"))
        };
        let (s, v) = (get("sums")?, get("variances")?);
        Ok((0..b)
            .map(|i| CellSums {
                s: std::array::from_fn(|bit| {
                    std::array::from_fn(|e| s[[i * MESSAGE_BITS + bit, e]])
                }),
                v: std::array::from_fn(|bit| {
                    std::array::from_fn(|e| v[[i * MESSAGE_BITS + bit, e]])
                }),
            })
            .collect())
    }
}

impl TileDetectorModel {
    /// Every whole block of `mid` (block k = grid block k) read with `key`, each from its own
    /// STFT, for [`super::window::decide`].
    pub fn window(&mut self, mid: &[f32], key: &Key) -> Result<Vec<WindowBlock>, RuntimeError> {
        let patterns = Patterns::from_key(key);
        let mut stft = Stft::new();
        let indices: Vec<i64> = (0..(mid.len() / BLOCK) as i64).collect();
        let mut out = Vec::with_capacity(indices.len());
        for batch in indices.chunks(BATCH) {
            let mut mag = Array3::zeros((batch.len(), BINS, FRAMES_PER_BLOCK));
            for (i, &b) in batch.iter().enumerate() {
                let spec = stft.forward(&mid[b as usize * BLOCK..(b as usize + 1) * BLOCK]);
                let block = spec
                    .slice_frames(0..FRAMES_PER_BLOCK)
                    .expect("a block has its frames");
                block
                    .magnitude_into(mag.index_axis_mut(ndarray::Axis(0), i))
                    .expect("block shape");
            }
            let sums = self.sums(mag.view(), &patterns, batch)?;
            out.extend(
                batch
                    .iter()
                    .zip(sums)
                    .map(|(&index, sums)| WindowBlock { index, sums }),
            );
        }
        Ok(out)
    }
}
