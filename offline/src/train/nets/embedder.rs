//! The embedder: STFT magnitude `[B, BINS, T]`, message `[B, 32]` and key `[B, KEY_DIM]` (±1) →
//! mask `[B, BINS, T]` within `1 ± mask_bound`.
//!
//! Log-compressed magnitude → linear to `d_model` → Conformer blocks (½·FFN, MHSA, convolution
//! module, ½·FFN, LayerNorm) with FiLM from an MLP of [message, key] right after the LayerNorm of
//! each of the four modules → linear to BINS (plus, if configured, a direct linear path from the
//! message bits: a per-bin pattern, sign-flipped by the fixed chip sequence) → `1 + b·tanh(·)`. No positional encoding: the
//! convolution module gives the attention its sense of order.

use stemmark_models::spec::{BINS, KEY_DIM, MESSAGE_BITS};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::EmbedderConfig;
use super::layers::{Film, layer_norm, linear};

/// Added to the magnitude before the log, so silence stays finite.
pub const LOG_FLOOR: f64 = 1e-5;

#[derive(Debug)]
struct Ffn {
    ln: nn::LayerNorm,
    film: Film,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Ffn {
    fn new(p: nn::Path, c: &EmbedderConfig) -> Ffn {
        Ffn {
            ln: layer_norm(&p / "ln", c.d_model),
            film: Film::new(&p / "film", c.film_hidden, c.d_model),
            fc1: linear(&p / "fc1", c.d_model, c.ff_dim),
            fc2: linear(&p / "fc2", c.ff_dim, c.d_model),
        }
    }

    fn forward(&self, x: &Tensor, cond: &Tensor) -> Tensor {
        let h = self.film.apply(&self.ln.forward(x), cond, 2);
        self.fc2.forward(&self.fc1.forward(&h).silu())
    }
}

#[derive(Debug)]
struct Mhsa {
    ln: nn::LayerNorm,
    film: Film,
    qkv: nn::Linear,
    out: nn::Linear,
    heads: i64,
    d: i64,
}

impl Mhsa {
    fn forward(&self, x: &Tensor, cond: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("[B, T, d]");
        let dh = self.d / self.heads;
        let h = self.film.apply(&self.ln.forward(x), cond, 2);
        let qkv = self.qkv.forward(&h);
        let split = |i: i64| {
            qkv.narrow(2, i * self.d, self.d)
                .reshape([b, t, self.heads, dh])
                .transpose(1, 2)
        };
        let q = split(0) * (1.0 / (dh as f64).sqrt());
        let att = q.matmul(&split(1).transpose(2, 3)).softmax(-1, Kind::Float);
        let o = att
            .matmul(&split(2))
            .transpose(1, 2)
            .reshape([b, t, self.d]);
        self.out.forward(&o)
    }
}

#[derive(Debug)]
struct ConvModule {
    ln: nn::LayerNorm,
    film: Film,
    pw1: nn::Linear,
    dw: nn::Conv1D,
    ln2: nn::LayerNorm,
    pw2: nn::Linear,
}

impl ConvModule {
    fn forward(&self, x: &Tensor, cond: &Tensor) -> Tensor {
        let h = self.film.apply(&self.ln.forward(x), cond, 2);
        let h = self.pw1.forward(&h).glu(-1);
        let h = self.dw.forward(&h.transpose(1, 2)).transpose(1, 2);
        self.pw2.forward(&self.ln2.forward(&h).silu())
    }
}

#[derive(Debug)]
struct Block {
    ffn1: Ffn,
    mhsa: Mhsa,
    conv: ConvModule,
    ffn2: Ffn,
    ln: nn::LayerNorm,
}

#[derive(Debug)]
pub struct Embedder {
    in_proj: nn::Linear,
    film_mlp: nn::Linear,
    blocks: Vec<Block>,
    out_proj: nn::Linear,
    direct: Option<nn::Linear>,
    /// The key spread matrix ([`super::key_spread`]), when the direct pattern is keyed.
    spread: Option<Vec<f32>>,
    mask_bound: f64,
}

impl Embedder {
    /// Builds the net under `p` (use `vs.root() / "embedder"` for the stable names).
    pub fn new(p: &nn::Path, c: &EmbedderConfig) -> Embedder {
        let d = c.d_model;
        let blocks = (0..c.blocks)
            .map(|i| {
                let b = p / "blocks" / i;
                Block {
                    ffn1: Ffn::new(&b / "ffn1", c),
                    mhsa: Mhsa {
                        ln: layer_norm(&b / "mhsa" / "ln", d),
                        film: Film::new(&b / "mhsa" / "film", c.film_hidden, d),
                        qkv: linear(&b / "mhsa" / "qkv", d, 3 * d),
                        out: linear(&b / "mhsa" / "out", d, d),
                        heads: c.heads as i64,
                        d: d as i64,
                    },
                    conv: ConvModule {
                        ln: layer_norm(&b / "conv" / "ln", d),
                        film: Film::new(&b / "conv" / "film", c.film_hidden, d),
                        pw1: linear(&b / "conv" / "pw1", d, 2 * d),
                        dw: nn::conv1d(
                            &b / "conv" / "dw",
                            d as i64,
                            d as i64,
                            c.conv_kernel as i64,
                            nn::ConvConfig {
                                padding: (c.conv_kernel / 2) as i64,
                                groups: d as i64,
                                ..Default::default()
                            },
                        ),
                        ln2: layer_norm(&b / "conv" / "ln2", d),
                        pw2: linear(&b / "conv" / "pw2", d, d),
                    },
                    ffn2: Ffn::new(&b / "ffn2", c),
                    ln: layer_norm(&b / "ln", d),
                }
            })
            .collect();
        Embedder {
            in_proj: linear(p / "in_proj", BINS, d),
            film_mlp: linear(p / "film_mlp", MESSAGE_BITS + KEY_DIM, c.film_hidden),
            blocks,
            out_proj: linear(p / "out_proj", d, BINS),
            direct: c.direct.then(|| {
                let mut l = linear(p / "direct", MESSAGE_BITS, BINS);
                // Each bit's pattern has spread 1/√32, so the 32 bits together have unit spread.
                tch::no_grad(|| {
                    let _ = l.ws.normal_(0.0, 1.0 / (MESSAGE_BITS as f64).sqrt());
                    if let Some(b) = &mut l.bs {
                        let _ = b.zero_();
                    }
                });
                l
            }),
            spread: (c.direct && c.keyed).then(super::key_spread),
            mask_bound: c.mask_bound as f64,
        }
    }

    /// The mask for `magnitude` `[B, BINS, T]` carrying `message` `[B, 32]` under `key` `[B, KEY_DIM]`.
    pub fn forward(&self, magnitude: &Tensor, message: &Tensor, key: &Tensor) -> Tensor {
        let cond = self
            .film_mlp
            .forward(&Tensor::cat(&[message, key], 1))
            .silu();
        let mut x = self
            .in_proj
            .forward(&(magnitude + LOG_FLOOR).log().transpose(1, 2));
        for b in &self.blocks {
            x = &x + b.ffn1.forward(&x, &cond) * 0.5;
            x = &x + b.mhsa.forward(&x, &cond);
            x = &x + b.conv.forward(&x, &cond);
            x = &x + b.ffn2.forward(&x, &cond) * 0.5;
            x = b.ln.forward(&x);
        }
        let mut y = self.out_proj.forward(&x);
        if let Some(direct) = &self.direct {
            let t = y.size()[1] as usize;
            let chips = Tensor::from_slice(&super::frame_chips(t)).view([1, t as i64, 1]).to_device(y.device());
            let mut pattern = direct.forward(message);
            if let Some(spread) = &self.spread {
                pattern *= key_signs(key, spread, BINS as i64);
            }
            y += pattern.unsqueeze(1) * chips;
        }
        (y.tanh() * self.mask_bound + 1.0).transpose(1, 2)
    }
}

/// `sign(key · spread + ½)`: `[B, n]` ±1 signs of `key` `[B, KEY_DIM]` over `n` bins, from a
/// `[KEY_DIM, n]` row-major spread matrix.
pub fn key_signs(key: &Tensor, spread: &[f32], n: i64) -> Tensor {
    let m = Tensor::from_slice(spread).view([KEY_DIM as i64, n]).to_device(key.device());
    (key.matmul(&m) + 0.5).sign()
}
