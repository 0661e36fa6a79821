//! Separation: stereo mix → stems, with `separator.onnx`, in overlapping segments cross-faded
//! together so that long inputs use bounded memory and every sample has context.

use std::path::Path;

use ndarray::Array3;
use ort::value::TensorRef;

use crate::contract;
use crate::modelset::{self, ModelError};
use crate::runtime::{Model, Provider, RuntimeError};
use crate::spec::{SEPARATOR_OVERLAP, SEPARATOR_SEGMENT, STEM_NAMES};

/// Segments per ONNX run.
const BATCH: usize = 2;

pub struct Separator {
    model: Model,
}

/// `stems[s][c][i]`: stem s (in `STEM_NAMES` order), channel c (stereo), sample i.
pub type Stems = Vec<Vec<Vec<f32>>>;

impl Separator {
    pub fn open(dir: &Path, provider: Provider) -> Result<Separator, ModelError> {
        let (_, model) = modelset::open(dir, contract::SEPARATOR, provider)?;
        Ok(Separator { model })
    }

    /// [`open`](Self::open) with `threads` ONNX Runtime threads (a plugin instance uses few).
    pub fn open_with_threads(dir: &Path, provider: Provider, threads: usize) -> Result<Separator, ModelError> {
        let (_, model) = modelset::open_with_threads(dir, contract::SEPARATOR, provider, threads)?;
        Ok(Separator { model })
    }

    /// Opens the `separator.onnx` at `path` without a model folder's manifest (imports, tests).
    pub fn open_file(path: &Path, provider: Provider, threads: usize) -> Result<Separator, ModelError> {
        Ok(Separator { model: Model::open(path, contract::SEPARATOR, provider, threads)? })
    }

    pub fn provider(&self) -> Provider {
        self.model.provider
    }

    /// Separates one batch of stereo segments `[B, 2, L]` into `[B, S, 2, L]`.
    pub fn run(&mut self, mix: &Array3<f32>) -> Result<ndarray::Array4<f32>, ModelError> {
        let run_err = |e: ort::Error| RuntimeError::Run { role: "separator", why: e.to_string() };
        let outputs = self
            .model
            .session
            .run(ort::inputs!["mix" => TensorRef::from_array_view(mix.view()).map_err(run_err)?])
            .map_err(run_err)?;
        let stems = outputs["stems"].try_extract_array::<f32>().map_err(run_err)?;
        let (b, _, l) = mix.dim();
        if stems.shape() != [b, STEM_NAMES.len(), 2, l] {
            return Err(RuntimeError::Run { role: "separator", why: format!("stems have shape {:?}", stems.shape()) }.into());
        }
        Ok(stems.to_owned().into_dimensionality().expect("checked shape"))
    }

    /// Separates a whole mix (mono or stereo, 44.1 kHz). Mono is treated as centred stereo.
    /// `progress(done, total)` is called after each batch of segments.
    pub fn separate(&mut self, mix: &[Vec<f32>], progress: &mut dyn FnMut(usize, usize)) -> Result<Stems, ModelError> {
        modelset::check_channels(mix)?;
        let stereo = [&mix[0], mix.get(1).unwrap_or(&mix[0])];
        let len = mix[0].len();
        let stride = SEPARATOR_SEGMENT - SEPARATOR_OVERLAP;
        let starts: Vec<usize> = (0..).map(|k| k * stride).take_while(|&s| s == 0 || s + SEPARATOR_OVERLAP < len).collect();
        let n_stems = STEM_NAMES.len();
        let mut acc = vec![vec![vec![0f32; len]; 2]; n_stems];
        let mut weight = vec![0f32; len];
        for (done, chunk) in starts.chunks(BATCH).enumerate() {
            // Every segment is full length (zero-padded past the end) so the model sees one shape.
            let batch = Array3::from_shape_fn((chunk.len(), 2, SEPARATOR_SEGMENT), |(b, c, i)| {
                stereo[c].get(chunk[b] + i).copied().unwrap_or(0.0)
            });
            let out = self.run(&batch)?;
            for (b, &start) in chunk.iter().enumerate() {
                let end = (start + SEPARATOR_SEGMENT).min(len);
                for i in start..end {
                    let w = crossfade(i - start, start == 0, end == len);
                    weight[i] += w;
                    for (s, stem) in acc.iter_mut().enumerate() {
                        for (c, ch) in stem.iter_mut().enumerate() {
                            ch[i] += w * out[[b, s, c, i - start]];
                        }
                    }
                }
            }
            progress(((done + 1) * BATCH).min(starts.len()), starts.len());
        }
        for stem in &mut acc {
            for ch in stem.iter_mut() {
                ch.iter_mut().zip(&weight).for_each(|(x, &w)| *x /= w.max(f32::MIN_POSITIVE));
            }
        }
        Ok(acc)
    }
}

/// Weight of sample `i` of a segment: linear ramps across the overlaps, flat where no other
/// segment covers (the first segment's start, the last one's end).
fn crossfade(i: usize, first: bool, last: bool) -> f32 {
    let ramp_in = if first { 1.0 } else { (i + 1) as f32 / (SEPARATOR_OVERLAP + 1) as f32 };
    let ramp_out = if last { 1.0 } else { (SEPARATOR_SEGMENT - i) as f32 / (SEPARATOR_OVERLAP + 1) as f32 };
    ramp_in.min(ramp_out).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossfade_weights_sum_to_one_in_overlaps() {
        let stride = SEPARATOR_SEGMENT - SEPARATOR_OVERLAP;
        for i in 0..SEPARATOR_OVERLAP {
            let a = crossfade(stride + i, true, false);
            let b = crossfade(i, false, false);
            assert!((a + b - 1.0).abs() < 1e-5, "{i}: {a} + {b}");
        }
    }
}
