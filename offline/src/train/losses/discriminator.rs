//! A small BigVGAN-style discriminator for the GAN part of L_perc: a multi-period discriminator
//! (the waveform folded into [L/p, p] images, 2-D convolutions along time) and a multi-resolution
//! discriminator (2-D convolutions on log-magnitude spectrograms), trained with LSGAN losses, plus
//! feature matching on every intermediate activation. Its variables live under an `nn::Path`, so
//! it sits in its own VarStore and checkpoints like the other networks.

use crate::train::attacks::dsp;
use anyhow::{Result, ensure};
use tch::nn::{self, ConvConfigND, Module};
use tch::{Kind, Tensor};

/// Sizes of the discriminator.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DiscriminatorConfig {
    /// Periods of the multi-period sub-discriminators (HiFi-GAN/BigVGAN use 2, 3, 5, 7, 11).
    pub periods: Vec<i64>,
    /// FFT sizes of the multi-resolution sub-discriminators (hop n/4).
    pub resolutions: Vec<i64>,
    /// Base channel width (BigVGAN uses 32 and more; small here).
    pub channels: i64,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        Self {
            periods: vec![2, 3, 5, 7, 11],
            resolutions: vec![512, 1024, 2048],
            channels: 16,
        }
    }
}

/// One sub-discriminator's verdict map and its intermediate activations.
pub struct DiscOutput {
    pub score: Tensor,
    pub features: Vec<Tensor>,
}

fn leaky(x: &Tensor) -> Tensor {
    x.maximum(&(x * 0.1))
}

fn conv2d(p: nn::Path, cin: i64, cout: i64, k: [i64; 2], s: [i64; 2]) -> nn::Conv<[i64; 2]> {
    let cfg = ConvConfigND {
        stride: s,
        padding: [k[0] / 2, k[1] / 2],
        dilation: [1, 1],
        ..ConvConfigND::default()
    };
    nn::conv(p, cin, cout, k, cfg)
}

/// A stack of 2-D convolutions with leaky ReLUs and a 1-channel output convolution.
struct ConvStack {
    layers: Vec<nn::Conv<[i64; 2]>>,
    post: nn::Conv<[i64; 2]>,
}

impl ConvStack {
    fn forward(&self, mut x: Tensor) -> DiscOutput {
        let mut features = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            x = leaky(&l.forward(&x));
            features.push(x.shallow_clone());
        }
        let score = self.post.forward(&x);
        features.push(score.shallow_clone());
        DiscOutput { score, features }
    }
}

fn period_stack(p: &nn::Path, c: i64) -> ConvStack {
    let widths = [1, c, 2 * c, 4 * c, 4 * c];
    let layers = (0..4)
        .map(|i| {
            let stride = if i < 3 { 3 } else { 1 };
            conv2d(
                p / format!("conv{i}"),
                widths[i],
                widths[i + 1],
                [5, 1],
                [stride, 1],
            )
        })
        .collect();
    ConvStack {
        layers,
        post: conv2d(p / "post", 4 * c, 1, [3, 1], [1, 1]),
    }
}

fn resolution_stack(p: &nn::Path, c: i64) -> ConvStack {
    let layers = (0..4)
        .map(|i| {
            let (cin, stride) = if i == 0 { (1, [1, 1]) } else { (c, [1, 2]) };
            conv2d(p / format!("conv{i}"), cin, c, [3, 9], stride)
        })
        .collect();
    ConvStack {
        layers,
        post: conv2d(p / "post", c, 1, [3, 3], [1, 1]),
    }
}

/// The multi-period + multi-resolution discriminator.
pub struct Discriminator {
    cfg: DiscriminatorConfig,
    periods: Vec<ConvStack>,
    resolutions: Vec<ConvStack>,
}

impl Discriminator {
    pub fn new(p: &nn::Path, cfg: DiscriminatorConfig) -> Result<Self> {
        ensure!(cfg.channels > 0, "discriminator needs channels");
        ensure!(
            cfg.periods.iter().all(|&q| q > 0) && cfg.resolutions.iter().all(|&n| n >= 16),
            "bad sizes"
        );
        let periods = cfg
            .periods
            .iter()
            .map(|q| period_stack(&(p / format!("mpd{q}")), cfg.channels))
            .collect();
        let resolutions = cfg
            .resolutions
            .iter()
            .map(|n| resolution_stack(&(p / format!("mrd{n}")), cfg.channels))
            .collect();
        Ok(Self {
            cfg,
            periods,
            resolutions,
        })
    }

    /// Scores audio `[B, L]` or `[B, C, L]` (channels as items): one output per sub-discriminator.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<DiscOutput>> {
        let (x, _) = dsp::flatten_batch(&x.to_kind(Kind::Float))?;
        let (b, l) = (x.size()[0], x.size()[1]);
        let mut out = Vec::with_capacity(self.periods.len() + self.resolutions.len());
        for (q, stack) in self.cfg.periods.iter().zip(&self.periods) {
            let pad = (q - l % q) % q;
            let xp = if pad > 0 {
                x.f_constant_pad_nd([0, pad])?
            } else {
                x.shallow_clone()
            };
            out.push(stack.forward(xp.view([b, 1, -1, *q])));
        }
        for (n, stack) in self.cfg.resolutions.iter().zip(&self.resolutions) {
            // [B, F, T] → [B, 1, T, F]: time down the rows, frequency strided along the columns.
            let mag = (dsp::stft(&x, *n, n / 4)?.abs() + 1e-5).log();
            out.push(stack.forward(mag.transpose(1, 2).unsqueeze(1)));
        }
        Ok(out)
    }
}

/// LSGAN discriminator loss: Σ_d mean((1 − D(real))²) + mean(D(fake)²). Pass `fake` computed
/// from detached generator output.
pub fn discriminator_loss(real: &[DiscOutput], fake: &[DiscOutput]) -> Tensor {
    real.iter()
        .zip(fake)
        .map(|(r, f)| {
            (-&r.score + 1.0).square().mean(Kind::Float) + f.score.square().mean(Kind::Float)
        })
        .fold(Tensor::from(0f32), |a, b| a + b)
}

/// LSGAN generator loss: Σ_d mean((1 − D(fake))²).
pub fn generator_loss(fake: &[DiscOutput]) -> Tensor {
    fake.iter()
        .map(|f| (-&f.score + 1.0).square().mean(Kind::Float))
        .fold(Tensor::from(0f32), |a, b| a + b)
}

/// Feature matching: Σ over sub-discriminators and layers of mean |D_l(real) − D_l(fake)|, with the
/// real activations detached.
pub fn feature_matching(real: &[DiscOutput], fake: &[DiscOutput]) -> Tensor {
    let mut total = Tensor::from(0f32);
    for (r, f) in real.iter().zip(fake) {
        for (a, b) in r.features.iter().zip(&f.features) {
            total += (a.detach() - b).abs().mean(Kind::Float);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::OptimizerConfig};

    #[test]
    fn shapes_losses_and_gradients() -> Result<()> {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = DiscriminatorConfig {
            periods: vec![2, 3, 5],
            resolutions: vec![256, 512],
            channels: 4,
        };
        let d = Discriminator::new(&vs.root(), cfg)?;
        let real = dsp::randn(&[1, 2, 4000], 1, Device::Cpu) * 0.1;
        let fake = (dsp::randn(&[1, 2, 4000], 2, Device::Cpu) * 0.1).set_requires_grad(true);
        let (dr, df) = (d.forward(&real)?, d.forward(&fake)?);
        assert_eq!(dr.len(), 5);
        assert!(
            dr.iter()
                .all(|o| o.score.size()[0] == 2 && o.features.len() == 5)
        );
        let g = generator_loss(&df) + feature_matching(&dr, &df);
        g.backward();
        assert!(fake.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);

        // A few discriminator steps separate real from fake.
        let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
        let fake = fake.detach();
        let first = discriminator_loss(&d.forward(&real)?, &d.forward(&fake)?).double_value(&[]);
        for _ in 0..10 {
            let l = discriminator_loss(&d.forward(&real)?, &d.forward(&fake)?);
            opt.zero_grad();
            l.backward();
            opt.step();
        }
        let last = discriminator_loss(&d.forward(&real)?, &d.forward(&fake)?).double_value(&[]);
        assert!(last < first, "{first} → {last}");
        for (name, v) in vs.variables() {
            assert!(v.numel() > 0, "{name}");
        }
        Ok(())
    }
}
