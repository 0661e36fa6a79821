//! Small building blocks shared by the networks, written with the same primitive ops the ONNX
//! export spells out, so the exported graph computes the same thing.

use tch::Tensor;
use tch::nn::{self, Module};

/// LayerNorm epsilon (libtorch's default), also written into the ONNX graph.
pub const LN_EPS: f64 = 1e-5;

pub fn linear(p: nn::Path, i: usize, o: usize) -> nn::Linear {
    nn::linear(p, i as i64, o as i64, Default::default())
}

pub fn layer_norm(p: nn::Path, d: usize) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![d as i64],
        nn::LayerNormConfig {
            eps: LN_EPS,
            ..Default::default()
        },
    )
}

/// A FiLM head: the conditioning vector → (γ, β) for `width` features; applied as
/// `x·(1 + γ) + β`, so a zero head is the identity.
#[derive(Debug)]
pub struct Film {
    head: nn::Linear,
    width: i64,
}

impl Film {
    /// Starts near the identity (head weights ~1e-3, zero bias): the condition's influence grows
    /// as training needs it, and every weight behind it still gets a gradient from step one.
    /// Default-initialised heads put a random offset on every feature for every random key,
    /// noise that buried the watermark and kept training at chance.
    pub fn new(p: nn::Path, cond: usize, width: usize) -> Film {
        let mut head = linear(p / "head", cond, 2 * width);
        tch::no_grad(|| {
            let _ = head.ws.normal_(0.0, 1e-3);
            if let Some(b) = &mut head.bs {
                let _ = b.zero_();
            }
        });
        Film {
            head,
            width: width as i64,
        }
    }

    /// Back to the near-identity start of [`new`](Self::new) (draws from libtorch's generator).
    pub fn reset(&mut self) {
        tch::no_grad(|| {
            let _ = self.head.ws.normal_(0.0, 1e-3);
            if let Some(b) = &mut self.head.bs {
                let _ = b.zero_();
            }
        });
    }

    /// `x` has its features on `axis` (1 for `[B, C, T]`, 2 for `[B, T, C]`); `c` is `[B, cond]`.
    pub fn apply(&self, x: &Tensor, c: &Tensor, axis: i64) -> Tensor {
        let gb = self.head.forward(c);
        let gamma = gb.narrow(1, 0, self.width);
        let beta = gb.narrow(1, self.width, self.width);
        let (gamma, beta) = if axis == 1 {
            (gamma.unsqueeze(2), beta.unsqueeze(2))
        } else {
            (gamma.unsqueeze(1), beta.unsqueeze(1))
        };
        x * (gamma + 1.0) + beta
    }
}
