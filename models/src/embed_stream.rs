//! Streaming embedding: audio in chunks of any size, marked audio out, one 2 s block at a time.
//! The same code marks whole files (`Embedder::embed`) and runs on the plugin's worker thread.
//!
//! Input sample 0 is the start of a block: grid block `first_block`, whose index picks the key's
//! block mask (0 for a file marked from its first sample; the timeline's block for a plugin). The mid signal's frames of a block are collected; once
//! the block's last frame exists, the embedder computes its mask, every channel's frames of that
//! block are masked and resynthesised. At the end of the stream a partial last block is completed
//! with silence and marked as a whole block (what a host's silence after the stem would give), and
//! only the samples that were pushed come out. Output sample i is the marked input sample i; it becomes
//! available at most [`LATENCY`] samples after input sample i was pushed.

use ndarray::Array3;

use crate::embedder::Embedder;
use crate::keys::Key;
use crate::modelset::ModelError;
use crate::payload;
use crate::spec::{BINS, BLOCK, FRAMES_PER_BLOCK, HOP, N_FFT};
use crate::tile::Patterns;
use crate::stft::{Complex32, StreamingIstft, StreamingStft, frames_for_len};

/// Worst-case delay between pushing a sample and getting it back marked: one block (a block's
/// mask needs the whole block) plus the STFT window, less one hop. A real-time user delays its
/// output by exactly this and never runs dry.
pub const LATENCY: usize = BLOCK + N_FFT - HOP;

/// The stream's state (no model: the caller passes its `Embedder` to every call).
pub struct EmbedStream {
    key: Key,
    patterns: Patterns,
    word: u32,
    strength: f32,
    ch_stft: Vec<StreamingStft>,
    ch_istft: Vec<StreamingIstft>,
    /// Mid magnitudes of the current block, `[1, BINS, FRAMES_PER_BLOCK]`.
    mag: Array3<f32>,
    /// Per channel, the current block's frames, frame-major.
    frames: Vec<Vec<Complex32>>,
    /// Absolute index of the current block's first frame.
    block_first: usize,
    /// Frames of the current block collected so far.
    filled: usize,
    pushed: usize,
    /// Grid index of the stream's first block, and of the block being collected.
    first_block: i64,
    index: i64,
    /// Blocks marked so far (a partial last block counts when it is flushed).
    pub blocks_done: usize,
}

impl EmbedStream {
    /// A stream for `channels` (1 or 2) channels marking `payload` under `key` at `strength`,
    /// whose first sample starts grid block `first_block`.
    pub fn new(channels: usize, key: &Key, payload_value: u32, strength: f32, first_block: i64) -> Result<EmbedStream, ModelError> {
        if !(1..=2).contains(&channels) {
            return Err(ModelError::Input(format!("{channels} channels: mono or stereo only")));
        }
        if !(0.0..=crate::embedder::MAX_STRENGTH).contains(&strength) {
            return Err(ModelError::Input(format!("strength {strength} is outside 0..={}", crate::embedder::MAX_STRENGTH)));
        }
        let word = payload::encode(payload_value, key).map_err(|e| ModelError::Input(e.to_string()))?;
        Ok(EmbedStream {
            key: key.clone(),
            patterns: Patterns::from_key(key),
            word,
            strength,
            ch_stft: (0..channels).map(|_| StreamingStft::new()).collect(),
            ch_istft: (0..channels).map(|_| StreamingIstft::new()).collect(),
            mag: Array3::zeros((1, BINS, FRAMES_PER_BLOCK)),
            frames: vec![vec![Complex32::new(0.0, 0.0); BINS * FRAMES_PER_BLOCK]; channels],
            block_first: 0,
            filled: 0,
            pushed: 0,
            first_block,
            index: first_block,
            blocks_done: 0,
        })
    }

    pub fn channels(&self) -> usize {
        self.ch_stft.len()
    }

    /// Samples pushed so far.
    pub fn pushed(&self) -> usize {
        self.pushed
    }

    /// Feeds one chunk (`input[c]`, all the same length) and appends every finished output sample
    /// to `out[c]`.
    pub fn push(&mut self, emb: &mut Embedder, input: &[&[f32]], out: &mut [Vec<f32>]) -> Result<(), ModelError> {
        let n_ch = self.channels();
        if input.len() != n_ch || out.len() != n_ch || input.iter().any(|c| c.len() != input[0].len()) {
            return Err(ModelError::Input(format!("expected {n_ch} equal-length channels")));
        }
        if let Some(c) = input.iter().position(|c| c.iter().any(|x| !x.is_finite())) {
            return Err(ModelError::Input(format!("channel {c} has a non-finite sample")));
        }
        let len = input[0].len();
        // Sub-chunks of at most one hop complete at most one frame each, so a block is processed
        // as soon as it is full and the block buffers never overflow.
        let mut pos = 0;
        while pos < len {
            let n = HOP.min(len - pos);
            let chunk: [&[f32]; 2] = std::array::from_fn(|c| input.get(c).map_or(&[][..], |x| &x[pos..pos + n]));
            self.feed(&chunk[..n_ch])?;
            pos += n;
            if self.filled == FRAMES_PER_BLOCK {
                self.mark_block(emb, out, usize::MAX)?;
            }
        }
        self.pushed += len;
        Ok(())
    }

    /// End of stream: marks the last (partial) block and emits the remaining samples, so that in
    /// total exactly as many samples come out as went in. The stream is then reset.
    pub fn finish(&mut self, emb: &mut Embedder, out: &mut [Vec<f32>]) -> Result<(), ModelError> {
        // Frames past the end are those `Stft::forward` would give: zero-padded input.
        let total_frames = frames_for_len(self.pushed);
        let zeros = [0.0f32; HOP];
        while self.block_first + self.filled < total_frames {
            let chunk: [&[f32]; 2] = [&zeros, &zeros];
            self.feed(&chunk[..self.channels()])?;
            if self.filled == FRAMES_PER_BLOCK {
                self.mark_block(emb, out, self.pushed)?;
            }
        }
        if self.filled > 0 {
            // The channel is defined on whole blocks: complete the last one with silence.
            while self.filled < FRAMES_PER_BLOCK {
                let chunk: [&[f32]; 2] = [&zeros, &zeros];
                self.feed(&chunk[..self.channels()])?;
            }
            self.mark_block(emb, out, self.pushed)?;
        }
        let target = self.pushed;
        for (c, istft) in self.ch_istft.iter_mut().enumerate() {
            let o = &mut out[c];
            istft.flush(|start, samples| extend_until(o, start, samples, target));
        }
        self.reset();
        Ok(())
    }

    /// Forgets everything: the next sample pushed starts block `first_block` again.
    pub fn reset(&mut self) {
        self.index = self.first_block;
        self.ch_stft.iter_mut().for_each(StreamingStft::reset);
        self.ch_istft.iter_mut().for_each(StreamingIstft::reset);
        self.block_first = 0;
        self.filled = 0;
        self.pushed = 0;
    }

    /// Pushes ≤ HOP samples per channel into the analysers, storing any completed frame. The mid
    /// signal's spectrum is the mean of the channels' spectra (the STFT is linear), which saves
    /// one FFT per frame.
    fn feed(&mut self, chunk: &[&[f32]]) -> Result<(), ModelError> {
        let first = self.block_first;
        let mut got = None;
        for (c, stft) in self.ch_stft.iter_mut().enumerate() {
            let frames = &mut self.frames[c];
            stft.push(chunk[c], |j, bins| {
                let t = j - first;
                frames[t * BINS..(t + 1) * BINS].copy_from_slice(bins);
                got = Some(t);
            });
        }
        if let Some(t) = got {
            debug_assert_eq!(t, self.filled);
            let n = self.frames.len() as f32;
            for b in 0..BINS {
                let sum: Complex32 = self.frames.iter().map(|f| f[t * BINS + b]).sum();
                self.mag[[0, b, t]] = crate::stft::magnitude(sum) / n;
            }
            self.filled = t + 1;
        }
        Ok(())
    }

    /// Masks and resynthesises the current (whole) block; output samples at or past `limit` (the
    /// zero-padded tail at the end of the stream) are dropped.
    fn mark_block(&mut self, emb: &mut Embedder, out: &mut [Vec<f32>], limit: usize) -> Result<(), ModelError> {
        let f = self.filled;
        debug_assert_eq!(f, FRAMES_PER_BLOCK, "blocks are completed before they are marked");
        let message = payload::to_bipolar(payload::block_word(self.word, &self.key, self.index));
        let mask = emb.masks(self.mag.view(), &self.patterns, &[message], &[self.index], self.strength)?;
        for (c, istft) in self.ch_istft.iter_mut().enumerate() {
            let frames = &mut self.frames[c];
            for t in 0..f {
                let frame = &mut frames[t * BINS..(t + 1) * BINS];
                frame.iter_mut().enumerate().for_each(|(b, z)| *z *= mask[[0, b, t]]);
                let o = &mut out[c];
                istft
                    .push_frame(self.block_first + t, frame, |start, samples| extend_until(o, start, samples, limit))
                    .map_err(|e| ModelError::Input(e.to_string()))?;
            }
        }
        self.block_first += f;
        self.filled = 0;
        self.index += 1;
        self.blocks_done += 1;
        Ok(())
    }
}

/// Appends the part of `samples` (the first at absolute index `start`) that lies before `limit`.
fn extend_until(out: &mut Vec<f32>, start: usize, samples: &[f32], limit: usize) {
    let end = start.saturating_add(samples.len()).min(limit);
    if start < end {
        out.extend_from_slice(&samples[..end - start]);
    }
}
