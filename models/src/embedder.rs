//! Embedding: stem + key + payload → marked stem, with `embedder.onnx`.
//!
//! The mask is computed from the mid signal's STFT magnitude, one 2 s block (360 frames) at a
//! time, and applied to each channel's own spectrum, keeping each channel's phase (DESIGN.md).

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView3};
use ort::value::TensorRef;

use crate::contract;
use crate::keys::Key;
use crate::manifest::Manifest;
use crate::modelset::{self, ModelError};
use crate::payload;
use crate::runtime::{Model, Provider, RuntimeError};
use crate::embed_stream::EmbedStream;
use crate::spec::{BLOCK, FRAMES_PER_BLOCK, KEY_DIM, MESSAGE_BITS};
use crate::stft::frames_for_len;

/// Strength scales the mask's deviation from 1; 1 is the trained strength.
pub const MAX_STRENGTH: f32 = 2.0;

pub struct Embedder {
    model: Model,
    manifest: Manifest,
}

impl Embedder {
    pub fn open(dir: &Path, provider: Provider) -> Result<Embedder, ModelError> {
        Embedder::open_with_threads(dir, provider, modelset::all_cores())
    }

    /// [`open`](Self::open) with `threads` ONNX Runtime threads (1 for a plugin instance, so many
    /// stems do not all claim every core).
    pub fn open_with_threads(dir: &Path, provider: Provider, threads: usize) -> Result<Embedder, ModelError> {
        let (manifest, model) = modelset::open_with_threads(dir, contract::EMBEDDER, provider, threads)?;
        Ok(Embedder { model, manifest })
    }

    pub fn provider(&self) -> Provider {
        self.model.provider
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Masks for a batch of magnitude blocks `[B, BINS, frames]`, all carrying `word` (already
    /// framed and scrambled) under `key`, scaled to `strength`.
    pub fn masks(&mut self, magnitude: ArrayView3<f32>, word: u32, key: &Key, strength: f32) -> Result<Array3<f32>, ModelError> {
        let b = magnitude.dim().0;
        let msg = payload::to_bipolar(word);
        let kv = key.vector();
        let message = Array2::from_shape_fn((b, MESSAGE_BITS), |(_, i)| msg[i]);
        let keys = Array2::from_shape_fn((b, KEY_DIM), |(_, i)| kv[i]);
        let magnitude = magnitude.as_standard_layout();
        let run_err = |e: ort::Error| RuntimeError::Run { role: "embedder", why: e.to_string() };
        let outputs = self
            .model
            .session
            .run(ort::inputs![
                "magnitude" => TensorRef::from_array_view(magnitude.view()).map_err(run_err)?,
                "message" => TensorRef::from_array_view(message.view()).map_err(run_err)?,
                "key" => TensorRef::from_array_view(keys.view()).map_err(run_err)?,
            ])
            .map_err(run_err)?;
        let mask = outputs["mask"].try_extract_array::<f32>().map_err(run_err)?;
        if mask.shape() != magnitude.shape() {
            return Err(RuntimeError::Run { role: "embedder", why: format!("mask has shape {:?}", mask.shape()) }.into());
        }
        // Scale the deviation from 1 and keep it inside the (scaled) trained bound, so a model
        // that overshoots can never produce more than the promised change.
        let bound = self.manifest.mask_bound * strength;
        let mask = mask.mapv(|m| if m.is_finite() { (1.0 + strength * (m - 1.0)).clamp(1.0 - bound, 1.0 + bound) } else { 1.0 });
        Ok(mask.into_dimensionality().expect("checked shape"))
    }

    /// Marks a whole stem (1 or 2 channels at 44.1 kHz) in every block of the grid that starts
    /// at its first sample (block 0), streaming it one block at a time (memory stays bounded by the input
    /// and output). `progress(done, total)` is called after each block.
    pub fn embed(
        &mut self,
        channels: &[Vec<f32>],
        key: &Key,
        payload_value: u32,
        strength: f32,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_at(channels, key, payload_value, strength, 0, progress)
    }

    /// [`embed`](Self::embed) for audio whose first sample starts grid block `first_block` (what
    /// Stemmark Embed does at that place on a DAW's timeline).
    pub fn embed_at(
        &mut self,
        channels: &[Vec<f32>],
        key: &Key,
        payload_value: u32,
        strength: f32,
        first_block: i64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        modelset::check_channels(channels)?;
        let mut stream = EmbedStream::new(channels.len(), key, payload_value, strength, first_block)?;
        let len = channels[0].len();
        let blocks = frames_for_len(len).div_ceil(FRAMES_PER_BLOCK);
        let mut out: Vec<Vec<f32>> = channels.iter().map(|_| Vec::with_capacity(len)).collect();
        for start in (0..len).step_by(BLOCK) {
            let end = (start + BLOCK).min(len);
            let chunk: Vec<&[f32]> = channels.iter().map(|c| &c[start..end]).collect();
            stream.push(self, &chunk, &mut out)?;
            progress(stream.blocks_done, blocks);
        }
        stream.finish(self, &mut out)?;
        progress(blocks, blocks);
        Ok(out)
    }
}
