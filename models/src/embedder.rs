//! Embedding: stem + key + payload → marked stem, with `embedder.onnx`.
//!
//! The mask is computed from the mid signal's STFT magnitude, one 2 s block (360 frames) at a
//! time, and applied to each channel's own spectrum, keeping each channel's phase (DESIGN.md).

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView3, Axis, s};
use ort::value::TensorRef;

use crate::contract;
use crate::keys::Key;
use crate::manifest::Manifest;
use crate::modelset::{self, ModelError};
use crate::payload;
use crate::runtime::{Model, Provider, RuntimeError};
use crate::spec::{BINS, FRAMES_PER_BLOCK, KEY_DIM, MESSAGE_BITS};
use crate::stft::{Stft, frames_for_len};

/// Strength scales the mask's deviation from 1; 1 is the trained strength.
pub const MAX_STRENGTH: f32 = 2.0;
/// Blocks per ONNX run: large enough to amortise the call, small enough for bounded memory.
const BATCH: usize = 8;

pub struct Embedder {
    model: Model,
    manifest: Manifest,
    stft: Stft,
}

impl Embedder {
    pub fn open(dir: &Path, provider: Provider) -> Result<Embedder, ModelError> {
        let (manifest, model) = modelset::open(dir, contract::EMBEDDER, provider)?;
        Ok(Embedder { model, manifest, stft: Stft::new() })
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
    /// at its first sample. `progress(done, total)` is called after each batch of blocks.
    pub fn embed(
        &mut self,
        channels: &[Vec<f32>],
        key: &Key,
        payload_value: u32,
        strength: f32,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        modelset::check_channels(channels)?;
        if !(0.0..=MAX_STRENGTH).contains(&strength) {
            return Err(ModelError::Input(format!("strength {strength} is outside 0..={MAX_STRENGTH}")));
        }
        let word = payload::encode(payload_value, key).map_err(|e| ModelError::Input(e.to_string()))?;
        let len = channels[0].len();
        let mid = modelset::mid(channels);
        let mid_spec = self.stft.forward(&mid);
        let frames = frames_for_len(len);
        let blocks = frames.div_ceil(FRAMES_PER_BLOCK);

        // Masks for all frames, [BINS, frames]; full blocks in batches, a last partial block alone.
        let mag = mid_spec.magnitude();
        let mut mask = Array2::<f32>::ones((BINS, frames));
        let full = frames / FRAMES_PER_BLOCK;
        let mut done = 0;
        while done < full {
            let n = BATCH.min(full - done);
            let batch = Array3::from_shape_fn((n, BINS, FRAMES_PER_BLOCK), |(b, f, t)| {
                mag[[f, (done + b) * FRAMES_PER_BLOCK + t]]
            });
            let m = self.masks(batch.view(), word, key, strength)?;
            for (b, mb) in m.axis_iter(Axis(0)).enumerate() {
                let start = (done + b) * FRAMES_PER_BLOCK;
                mask.slice_mut(s![.., start..start + FRAMES_PER_BLOCK]).assign(&mb);
            }
            done += n;
            progress(done, blocks);
        }
        if full * FRAMES_PER_BLOCK < frames {
            let start = full * FRAMES_PER_BLOCK;
            let tail = mag.slice(s![.., start..]).insert_axis(Axis(0)).to_owned();
            let m = self.masks(tail.view(), word, key, strength)?;
            mask.slice_mut(s![.., start..]).assign(&m.index_axis(Axis(0), 0));
            progress(blocks, blocks);
        }

        let mut out = Vec::with_capacity(channels.len());
        for ch in channels {
            let mut spec = self.stft.forward(ch);
            spec.apply_mask(mask.view()).map_err(|e| ModelError::Input(e.to_string()))?;
            out.push(self.stft.inverse(&spec, len));
        }
        Ok(out)
    }
}
