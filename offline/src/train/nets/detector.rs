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
pub const ENERGY_FLOOR: f64 = 1e-4;

#[derive(Debug)]
pub struct Detector {
    film_mlp: nn::Linear,
    front: Option<(nn::Conv1D, Film, i64)>,
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
            let conv = nn::conv1d(&q, 1, 2 * f.bands as i64, f.kernel as i64, cfg);
            cin = f.bands;
            (conv, Film::new(&q / "film", c.film_hidden, f.bands), f.bands as i64)
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
            front,
            convs,
            head: linear(p / "head", cin, MESSAGE_BITS),
        }
    }

    /// Logits `[B, 32]` for `audio` `[B, L]` (L is BLOCK in use) under `key` `[B, KEY_DIM]`.
    pub fn forward(&self, audio: &Tensor, key: &Tensor) -> Tensor {
        let cond = self.film_mlp.forward(key).silu();
        let rms = ((audio * audio).mean_dim(-1, true, Kind::Float) + RMS_FLOOR).sqrt();
        let mut x = (audio / rms).unsqueeze(1);
        if let Some((conv, film, bands)) = &self.front {
            let h = conv.forward(&x);
            let (re, im) = (h.narrow(1, 0, *bands), h.narrow(1, *bands, *bands));
            let energy = ((&re * &re + &im * &im) + ENERGY_FLOOR).log();
            x = film.apply(&energy, &cond, 1);
        }
        for (conv, film) in &self.convs {
            x = film.apply(&conv.forward(&x), &cond, 1).gelu("none");
        }
        self.head.forward(&x.mean_dim(-1, false, Kind::Float))
    }
}
