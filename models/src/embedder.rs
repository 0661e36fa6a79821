//! Embedding: stem + key + payload → marked stem, with the tile channel's `embedder.onnx`.
//!
//! The mask is computed from the mid signal's STFT magnitude, one 2 s block (360 frames) at a
//! time, and applied to each channel's own spectrum, keeping each channel's phase (DESIGN.md).

use std::path::Path;

use ndarray::{Array3, ArrayView3};

use crate::contract;
use crate::embed_stream::EmbedStream;
use crate::keys::Key;
use crate::manifest::Manifest;
use crate::modelset::{self, ModelError};
use crate::runtime::{Provider, RuntimeError};
use crate::spec::{BLOCK, FRAMES_PER_BLOCK, MESSAGE_BITS};
use crate::stft::frames_for_len;
use crate::tile::{Patterns, TileEmbedderModel};

/// Strength scales the mark's ln gain; 1 is the designed strength (every written cell at least
/// 15 dB below its host), 2 doubles it.
pub const MAX_STRENGTH: f32 = 2.0;

pub struct Embedder {
    model: TileEmbedderModel,
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
        Ok(Embedder { model: TileEmbedderModel::from_model(model), manifest })
    }

    pub fn provider(&self) -> Provider {
        self.model.provider()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Masks for whole blocks of mid magnitude `[B, BINS, FRAMES_PER_BLOCK]`: block i is grid
    /// block `blocks[i]` and carries `messages[i]` (±1 per bit, under its block mask), at
    /// `strength` (a power of the designed mask).
    pub fn masks(
        &mut self,
        magnitude: ArrayView3<f32>,
        patterns: &Patterns,
        messages: &[[f32; MESSAGE_BITS]],
        blocks: &[i64],
        strength: f32,
    ) -> Result<Array3<f32>, ModelError> {
        let mask = self.model.masks(magnitude, patterns, messages, blocks)?;
        // Keep every gain inside the (scaled) designed cap, so a model that overshoots can never
        // write more than the promised change; a non-finite value leaves the cell alone.
        let cap = (self.manifest.channel.cell_cap * strength as f64) as f32;
        let out = if strength == 1.0 {
            // The default strength: the same clamp on the gain itself, without a ln and an exp per cell.
            let (lo, hi) = ((-cap).exp(), cap.exp());
            mask.mapv(|m| if m.is_finite() && m > 0.0 { m.clamp(lo, hi) } else { 1.0 })
        } else {
            mask.mapv(|m| if m.is_finite() && m > 0.0 { (strength * m.ln()).clamp(-cap, cap).exp() } else { 1.0 })
        };
        if out.dim().2 != FRAMES_PER_BLOCK {
            return Err(RuntimeError::Run { role: "embedder", why: format!("mask has shape {:?}", out.dim()) }.into());
        }
        Ok(out)
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
