//! Running the tile channel's contract-v2 models: the embedder's masks and the detector's cell
//! sums for a batch of blocks, with the key's patterns expanded here ([`Patterns`]).

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView3};
use ort::value::TensorRef;

use super::{CellSums, Patterns};
use crate::contract;
use crate::runtime::{Model, Provider, RuntimeError};
use crate::spec::{CELLS, MESSAGE_BITS, TILE_ROWS, TILE_UNIT_COLS, TILE_UNITS};

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
