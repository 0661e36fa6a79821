//! The separator: stereo mix `[B, 2, L]` → stems `[B, S, 2, L]`, Demucs-style.
//!
//! The mix is normalised by the mean and standard deviation of its mono sum, zero-padded at the
//! end to a multiple of `stride^depth` (so every strided layer divides evenly and the decoder
//! gives back exactly the padded length), encoded by `depth` layers of strided Conv1d → ReLU →
//! 1×1 Conv1d → GLU, passed through a bidirectional LSTM with a linear projection, decoded by
//! (skip + x) → 1×1 Conv1d → GLU → ConvTranspose1d (→ ReLU but for the last), cropped back to L
//! and de-normalised.

use stemmark_models::spec::STEM_NAMES;
use tch::nn::{self, Module, RNN};
use tch::{Kind, Tensor};

use super::SeparatorConfig;
use super::layers::linear;

/// Added to the standard deviation, so silence stays finite.
pub const STD_FLOOR: f64 = 1e-5;

#[derive(Debug)]
pub struct Separator {
    enc: Vec<(nn::Conv1D, nn::Conv1D)>,
    dec: Vec<(nn::Conv1D, nn::ConvTranspose1D)>,
    lstm: nn::LSTM,
    lstm_out: nn::Linear,
    multiple: i64,
}

impl Separator {
    /// Builds the net under `p` (use `vs.root() / "separator"` for the stable names).
    pub fn new(p: &nn::Path, c: &SeparatorConfig) -> Separator {
        let (k, s) = (c.kernel as i64, c.stride as i64);
        let pad = (k - s) / 2;
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        let mut cin = 2i64;
        for i in 0..c.depth {
            let ch = c.layer_channels(i) as i64;
            let q = p / "enc" / i;
            let conv = nn::conv1d(
                &q / "conv",
                cin,
                ch,
                k,
                nn::ConvConfig {
                    stride: s,
                    padding: pad,
                    ..Default::default()
                },
            );
            let pw = nn::conv1d(&q / "pw", ch, 2 * ch, 1, Default::default());
            enc.push((conv, pw));
            let q = p / "dec" / i;
            let out = if i == 0 {
                (STEM_NAMES.len() * 2) as i64
            } else {
                cin
            };
            let pw = nn::conv1d(&q / "pw", ch, 2 * ch, 1, Default::default());
            let tr = nn::conv_transpose1d(
                &q / "convtr",
                ch,
                out,
                k,
                nn::ConvTransposeConfig {
                    stride: s,
                    padding: pad,
                    ..Default::default()
                },
            );
            dec.push((pw, tr));
            cin = ch;
        }
        let rnn = nn::RNNConfig {
            num_layers: c.lstm_layers as i64,
            bidirectional: true,
            batch_first: true,
            ..Default::default()
        };
        Separator {
            enc,
            dec,
            lstm: nn::lstm(p / "lstm", cin, cin, rnn),
            lstm_out: linear(p / "lstm_out", 2 * cin as usize, cin as usize),
            multiple: c.length_multiple() as i64,
        }
    }

    /// Stems `[B, S, 2, L]` of `mix` `[B, 2, L]`.
    pub fn forward(&self, mix: &Tensor) -> Tensor {
        let (b, _, len) = mix.size3().expect("[B, 2, L]");
        let mono = mix.mean_dim(1, true, Kind::Float);
        let mean = mono.mean_dim(-1, true, Kind::Float);
        let std = ((&mono - &mean).square().mean_dim(-1, true, Kind::Float)).sqrt() + STD_FLOOR;
        let padded = (-len).rem_euclid(self.multiple);
        let mut x = ((mix - &mean) / &std).constant_pad_nd([0, padded]);
        let mut skips = Vec::new();
        for (conv, pw) in &self.enc {
            x = pw.forward(&conv.forward(&x).relu()).glu(1);
            skips.push(x.shallow_clone());
        }
        // [B, C, T'] → [B, T', C] for the LSTM (batch first: `RNN::seq` sizes its state from
        // dim 0) and back.
        let (y, _) = self.lstm.seq(&x.transpose(1, 2));
        x = self.lstm_out.forward(&y).transpose(1, 2);
        for (i, (pw, tr)) in self.dec.iter().enumerate().rev() {
            x = tr.forward(&pw.forward(&(&x + &skips[i])).glu(1));
            if i > 0 {
                x = x.relu();
            }
        }
        let x = x
            .narrow(2, 0, len)
            .reshape([b, STEM_NAMES.len() as i64, 2, len]);
        x * std.unsqueeze(1) + mean.unsqueeze(1)
    }
}
