//! The detector: a 2 s waveform `[B, BLOCK]` and a key `[B, KEY_DIM]` → 32 logits.
//!
//! RobustDNN-style: the block is scaled to unit RMS (so gain changes do not matter), then (if
//! configured) a learned filterbank whose log band energies are FiLMed by the key, then a stack
//! of strided Conv1d layers, each followed by FiLM from an MLP of the key and GELU, then the mean
//! over time and a linear layer to the message bits.

use stemmark_models::spec::{KEY_DIM, MESSAGE_BITS};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::DetectorConfig;
use super::layers::{Film, linear};

/// Added to the mean square before the RMS normalisation, so silence stays finite.
pub const RMS_FLOOR: f64 = 1e-8;
/// Added to the front end's band energies before the log.
pub const ENERGY_FLOOR: f64 = 1e-6;
/// Scale of the centred log band energies.
pub const ENERGY_SCALE: f64 = 0.25;
/// Gain on the pooled demodulated energies (a mean over 90 frames is ~10× smaller than a frame).
pub const POOL_GAIN: f64 = 10.0;

#[derive(Debug)]
pub struct Detector {
    film_mlp: nn::Linear,
    front: Option<(nn::Conv1D, Film, i64, bool)>,
    /// The key spread matrix over the front's bins, when keyed.
    spread: Option<Vec<f32>>,
    convs: Vec<(nn::Conv1D, Film)>,
    head: nn::Linear,
}

impl Detector {
    /// Builds the net under `p` (use `vs.root() / "detector"` for the stable names).
    pub fn new(p: &nn::Path, c: &DetectorConfig) -> Detector {
        let mut convs = Vec::new();
        let mut cin = 1;
        let front = c.front.as_ref().map(|f| {
            let q = p / "front";
            let cfg = nn::ConvConfig {
                stride: f.stride as i64,
                padding: ((f.kernel - f.stride) / 2) as i64,
                ..Default::default()
            };
            let mut conv = nn::conv1d(&q, 1, 2 * f.bands as i64, f.kernel as i64, cfg);
            tch::no_grad(|| {
                conv.ws.copy_(&dft_basis(f).to_device(conv.ws.device()));
                if let Some(b) = &mut conv.bs {
                    let _ = b.zero_();
                }
            });
            cin = f.bands;
            (conv, Film::new(&q / "film", c.film_hidden, f.bands), f.bands as i64, f.demodulate)
        });
        for (i, &cout) in c.channels.iter().enumerate() {
            let q = p / "convs" / i;
            let cfg = nn::ConvConfig {
                stride: c.stride as i64,
                padding: ((c.kernel - c.stride) / 2) as i64,
                ..Default::default()
            };
            let conv = nn::conv1d(&q, cin as i64, cout as i64, c.kernel as i64, cfg);
            convs.push((conv, Film::new(&q / "film", c.film_hidden, cout)));
            cin = cout;
        }
        Detector {
            film_mlp: linear(p / "film_mlp", KEY_DIM, c.film_hidden),
            spread: c.front.as_ref().filter(|f| f.keyed).map(|f| super::key_spread_bins(&f.bins())),
            front,
            convs,
            head: linear(p / "head", cin, MESSAGE_BITS),
        }
    }

    /// Restarts the detector as the matched filter of the embedder's direct pattern `direct`
    /// (`[BINS, 32]`, the `embedder.direct.weight`): DFT front, identity FiLMs, the 1×1 layer as
    /// `[I; −I]` (GELU(x) − GELU(−x) = x, so the layer passes the pooled energies on linearly)
    /// and the head correlating them with each bit's unit-norm pattern on the bands it reads.
    /// A trained embedder's pattern read this way decoded 96 % of the bits where the detector
    /// trained beside it from a random start read 69 % (`diagnose` below): a randomly started
    /// MLP had to rediscover the correlation through noisy gradients and never caught up.
    /// Returns false (and changes nothing) for configurations without that shape: a keyed,
    /// demodulating front and one 1×1 layer of 2·bands channels.
    pub fn start_as_matched_filter(&mut self, c: &DetectorConfig, direct: &Tensor) -> bool {
        let Some(f) = c.front.as_ref() else { return false };
        let ok = f.demodulate && f.keyed && c.channels == [2 * f.bands] && c.kernel == 1 && c.stride == 1;
        let (Some((front, front_film, _, _)), true) = (self.front.as_mut(), ok) else { return false };
        let bins = Tensor::from_slice(&f.bins().iter().map(|&b| b as i64).collect::<Vec<_>>()).to_device(direct.device());
        let w = direct.index_select(0, &bins); // [bands, 32]
        let w = &w / (w.pow_tensor_scalar(2).sum_dim_intlist(0, true, Kind::Float).sqrt() + 1e-8);
        let n = f.bands as i64;
        let (conv, film) = &mut self.convs[0];
        tch::no_grad(|| {
            front.ws.copy_(&dft_basis(f).to_device(front.ws.device()));
            if let Some(b) = &mut front.bs {
                let _ = b.zero_();
            }
            let eye = Tensor::eye(n, (Kind::Float, conv.ws.device()));
            conv.ws.copy_(&Tensor::cat(&[&eye, &(-&eye)], 0).unsqueeze(2));
            if let Some(b) = &mut conv.bs {
                let _ = b.zero_();
            }
            let wt = w.transpose(0, 1).to_device(self.head.ws.device()); // [32, bands]
            self.head.ws.copy_(&Tensor::cat(&[&wt, &(-&wt)], 1));
            if let Some(b) = &mut self.head.bs {
                let _ = b.zero_();
            }
        });
        front_film.reset();
        film.reset();
        true
    }

    /// Logits `[B, 32]` for `audio` `[B, L]` (L is BLOCK in use) under `key` `[B, KEY_DIM]`.
    pub fn forward(&self, audio: &Tensor, key: &Tensor) -> Tensor {
        let cond = self.film_mlp.forward(key).silu();
        let rms = ((audio * audio).mean_dim(-1, true, Kind::Float) + RMS_FLOOR).sqrt();
        let mut x = (audio / rms).unsqueeze(1);
        if let Some((conv, film, bands, demodulate)) = &self.front {
            let h = conv.forward(&x);
            let (re, im) = (h.narrow(1, 0, *bands), h.narrow(1, *bands, *bands));
            let energy = ((&re * &re + &im * &im) + ENERGY_FLOOR).log();
            // Log energies sit around −7 ± 5: centred over the bands of each frame and scaled,
            // so the GELUs after them start in their working range (uncentred, they start dead
            // and training stays at chance).
            let mut energy = (&energy - energy.mean_dim(1, true, Kind::Float)) * ENERGY_SCALE;
            if *demodulate {
                let t = energy.size()[2];
                let chips = Tensor::from_slice(&super::chips(t as usize)).view([1, 1, t]).to_device(energy.device());
                // Pooled right away: the demodulated mean is the statistic that carries the bits
                // (the host cancels in it); convolving the noisy per-frame values first buried it.
                energy = (energy * chips).mean_dim(2, true, Kind::Float) * POOL_GAIN;
                if let Some(spread) = &self.spread {
                    energy *= super::embedder::key_signs(key, spread, *bands).unsqueeze(2);
                }
            }
            x = film.apply(&energy, &cond, 1);
        }
        for (conv, film) in &self.convs {
            x = film.apply(&conv.forward(&x), &cond, 1).gelu("none");
        }
        self.head.forward(&x.mean_dim(-1, false, Kind::Float))
    }
}

/// `[2·bands, 1, kernel]`: Hann-windowed cosines (rows 0..bands) and negated sines (the rest) at
/// the embedder's STFT bins `first_bin + i·bin_step` (bin k = k·SAMPLE_RATE/N_FFT Hz).
fn dft_basis(f: &super::DetectorFront) -> Tensor {
    use stemmark_models::spec::N_FFT;
    let k = f.kernel;
    let hann: Vec<f64> = (0..k).map(|j| 0.5 - 0.5 * (std::f64::consts::TAU * j as f64 / k as f64).cos()).collect();
    // Unit window gain keeps the weights O(1): Adam's steps are absolute, and a basis scaled
    // to ~1e-3 would be rewritten within a few steps. (The centring below removes the scale.)
    let gain = 1.0;
    let mut w = vec![0f32; 2 * f.bands * k];
    for i in 0..f.bands {
        let bin = (f.first_bin + i * f.bin_step) as f64;
        for j in 0..k {
            let phase = std::f64::consts::TAU * bin * j as f64 / N_FFT as f64;
            w[i * k + j] = (gain * hann[j] * phase.cos()) as f32;
            w[(f.bands + i) * k + j] = (-gain * hann[j] * phase.sin()) as f32;
        }
    }
    Tensor::from_slice(&w).view([2 * f.bands as i64, 1, k as i64])
}
