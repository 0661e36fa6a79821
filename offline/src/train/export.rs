//! `stemmark export`: trained weights (safetensors) + [`NetConfig`] → `embedder.onnx`,
//! `detector.onnx`, `separator.onnx` and a `manifest.toml`, in pure Rust (no libtorch).
//!
//! Each graph spells out the same primitive ops as the nets' forward passes in [`super::nets`]
//! (same weight names, same epsilons, same op order), with the contracts of
//! `stemmark_models::contract`: fixed names, dynamic batch (and frames / length).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use stemmark_models::contract::{self, Contract};
use stemmark_models::decision::Calibration;
use stemmark_models::manifest::Manifest;
use stemmark_models::spec::{BINS, STEM_NAMES};

use super::nets::{DetectorConfig, EmbedderConfig, NetConfig, SeparatorConfig};
use super::onnx_ops::{self, LstmWeights, Tensor, film, get, init, linear};
use crate::onnx::{ConvOpts, DataType, Dim, GraphBuilder, Model, Value};

/// Epsilons of the nets (kept equal to the constants of the tch code, checked by the parity test).
const LN_EPS: f32 = 1e-5;
const LOG_FLOOR: f32 = 1e-5;
const RMS_FLOOR: f32 = 1e-8;
/// The detector front end's energy floor (`nets::detector::ENERGY_FLOOR`).
const ENERGY_FLOOR: f32 = 1e-6;
const ENERGY_SCALE: f32 = 0.25;
const POOL_GAIN: f32 = 10.0;
/// Longest embedder input (STFT frames) the exported graph's chip constant covers: 60 s.
const MAX_FRAMES: usize = 60 * 180;
const STD_FLOOR: f32 = 1e-5;

pub type Weights = HashMap<String, Tensor>;

/// Reads every tensor of a safetensors file as f32 (f16 and bf16 storage are widened).
pub fn load_weights(path: &Path) -> Result<Weights> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            safetensors::Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}; weights must be f32, f16 or bf16",
                path.display()
            ),
        };
        out.insert(
            name,
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

fn dims(c: &Contract, output: bool, i: usize) -> Vec<Dim> {
    let spec = if output { &c.outputs[i] } else { &c.inputs[i] };
    spec.dims
        .iter()
        .map(|d| match d {
            contract::Dim::Fixed(n) => Dim::Fixed(*n),
            contract::Dim::Dynamic(s) => Dim::sym(s),
        })
        .collect()
}

fn input(g: &mut GraphBuilder, c: &Contract, i: usize) -> Result<Value> {
    g.input(c.inputs[i].name, DataType::Float, &dims(c, false, i))
}

fn output(g: &mut GraphBuilder, c: &Contract, i: usize, v: &Value) -> Result<()> {
    g.output(v, c.outputs[i].name, DataType::Float, &dims(c, true, i))?;
    Ok(())
}

/// Linear layer `name` of the checkpoint (`name.weight`, `name.bias`).
fn lin(g: &mut GraphBuilder, w: &Weights, x: &Value, name: &str) -> Result<Value> {
    linear(
        g,
        x,
        name,
        get(w, &format!("{name}.weight"))?,
        get(w, &format!("{name}.bias"))?,
    )
}

fn layer_norm(g: &mut GraphBuilder, w: &Weights, x: &Value, name: &str) -> Result<Value> {
    let s = init(
        g,
        &format!("{name}.weight"),
        get(w, &format!("{name}.weight"))?,
    )?;
    let b = init(g, &format!("{name}.bias"), get(w, &format!("{name}.bias"))?)?;
    Ok(g.layer_norm(x, &s, Some(&b), -1, LN_EPS))
}

fn conv(
    g: &mut GraphBuilder,
    w: &Weights,
    x: &Value,
    name: &str,
    opts: &ConvOpts,
    transpose: bool,
) -> Result<Value> {
    let k = init(
        g,
        &format!("{name}.weight"),
        get(w, &format!("{name}.weight"))?,
    )?;
    let b = init(g, &format!("{name}.bias"), get(w, &format!("{name}.bias"))?)?;
    Ok(if transpose {
        g.conv_transpose(x, &k, Some(&b), opts)
    } else {
        g.conv(x, &k, Some(&b), opts)
    })
}

/// LayerNorm → FiLM, the start of every Conformer module.
fn ln_film(
    g: &mut GraphBuilder,
    w: &Weights,
    x: &Value,
    cond: &Value,
    p: &str,
    d: usize,
) -> Result<Value> {
    let h = layer_norm(g, w, x, &format!("{p}.ln"))?;
    let gb = lin(g, w, cond, &format!("{p}.film.head"))?;
    Ok(film(g, &h, &gb, d, 2))
}

pub fn embedder_graph(w: &Weights, c: &EmbedderConfig) -> Result<Model> {
    let ct = contract::EMBEDDER;
    let mut g = GraphBuilder::new("stemmark_embedder");
    let mag = input(&mut g, &ct, 0)?;
    let msg = input(&mut g, &ct, 1)?;
    let key = input(&mut g, &ct, 2)?;
    let (d, heads) = (c.d_model, c.heads);
    let dh = d / heads;
    let mk = g.concat(&[&msg, &key], 1);
    let cond = lin(&mut g, w, &mk, "embedder.film_mlp")?;
    let cond = g.silu(&cond);
    let x = g.offset(&mag, LOG_FLOOR);
    let x = g.log(&x);
    let x = g.transpose(&x, &[0, 2, 1]);
    let mut x = lin(&mut g, w, &x, "embedder.in_proj")?;
    for i in 0..c.blocks {
        let p = format!("embedder.blocks.{i}");
        for ffn in ["ffn1", "ffn2"] {
            if ffn == "ffn2" {
                // The MHSA and convolution modules come between the two half FFNs.
                let q = format!("{p}.mhsa");
                let h = ln_film(&mut g, w, &x, &cond, &q, d)?;
                let qkv = lin(&mut g, w, &h, &format!("{q}.qkv"))?;
                let parts = g.split(&qkv, &[d as i64; 3], 2);
                let heads_of = |g: &mut GraphBuilder, v: &Value| {
                    g.reshape(v, &[0, 0, heads as i64, dh as i64])
                };
                let qh = heads_of(&mut g, &parts[0]);
                let qh = g.transpose(&qh, &[0, 2, 1, 3]);
                let qh = g.scale(&qh, 1.0 / (dh as f32).sqrt());
                let kh = heads_of(&mut g, &parts[1]);
                let kh = g.transpose(&kh, &[0, 2, 3, 1]);
                let vh = heads_of(&mut g, &parts[2]);
                let vh = g.transpose(&vh, &[0, 2, 1, 3]);
                let att = g.matmul(&qh, &kh);
                let att = g.softmax(&att, -1);
                let o = g.matmul(&att, &vh);
                let o = g.transpose(&o, &[0, 2, 1, 3]);
                let o = g.reshape(&o, &[0, 0, d as i64]);
                let o = lin(&mut g, w, &o, &format!("{q}.out"))?;
                x = g.add(&x, &o);

                let q = format!("{p}.conv");
                let h = ln_film(&mut g, w, &x, &cond, &q, d)?;
                let h = lin(&mut g, w, &h, &format!("{q}.pw1"))?;
                let h = g.glu(&h, -1);
                let h = g.transpose(&h, &[0, 2, 1]);
                let k = c.conv_kernel as i64;
                let h = conv(
                    &mut g,
                    w,
                    &h,
                    &format!("{q}.dw"),
                    &ConvOpts::d1(1, k / 2, 1, d as i64),
                    false,
                )?;
                let h = g.transpose(&h, &[0, 2, 1]);
                let h = layer_norm(&mut g, w, &h, &format!("{q}.ln2"))?;
                let h = g.silu(&h);
                let h = lin(&mut g, w, &h, &format!("{q}.pw2"))?;
                x = g.add(&x, &h);
            }
            let q = format!("{p}.{ffn}");
            let h = ln_film(&mut g, w, &x, &cond, &q, d)?;
            let h = lin(&mut g, w, &h, &format!("{q}.fc1"))?;
            let h = g.silu(&h);
            let h = lin(&mut g, w, &h, &format!("{q}.fc2"))?;
            let h = g.scale(&h, 0.5);
            x = g.add(&x, &h);
        }
        x = layer_norm(&mut g, w, &x, &format!("{p}.ln"))?;
    }
    let mut y = lin(&mut g, w, &x, "embedder.out_proj")?;
    if c.direct {
        let mut p = lin(&mut g, w, &msg, "embedder.direct")?;
        if c.keyed {
            let s = key_signs(&mut g, &key, "embedder.key_spread", &super::nets::key_spread(), BINS)?;
            p = g.mul(&p, &s);
        }
        let p = g.unsqueeze(&p, &[1]);
        // The chips of the input's frames: a long constant sliced to T = shape(magnitude)[2].
        let long = super::nets::frame_chips(MAX_FRAMES);
        let chips = g.init_f32("embedder.chips", &long, &[1, MAX_FRAMES, 1])?;
        let shape = g.op("Shape", &[&mag], []);
        let t = g.slice(&shape, &[2], &[3], &[0], None);
        let zero = g.ints(&[0]);
        let axis = g.ints(&[1]);
        let chips = g.op("Slice", &[&chips, &zero, &t, &axis], []);
        let p = g.mul(&p, &chips);
        y = g.add(&y, &p);
    }
    let y = g.tanh(&y);
    let y = g.scale(&y, c.mask_bound);
    let y = g.offset(&y, 1.0);
    let mask = g.transpose(&y, &[0, 2, 1]);
    output(&mut g, &ct, 0, &mask)?;
    g.finish()
}

pub fn detector_graph(w: &Weights, c: &DetectorConfig) -> Result<Model> {
    let ct = contract::DETECTOR;
    let mut g = GraphBuilder::new("stemmark_detector");
    let audio = input(&mut g, &ct, 0)?;
    let key = input(&mut g, &ct, 1)?;
    let cond = lin(&mut g, w, &key, "detector.film_mlp")?;
    let cond = g.silu(&cond);
    let sq = g.mul(&audio, &audio);
    let ms = g.reduce_mean(&sq, &[-1], true);
    let ms = g.offset(&ms, RMS_FLOOR);
    let rms = g.sqrt(&ms);
    let x = g.div(&audio, &rms);
    let mut x = g.unsqueeze(&x, &[1]);
    if let Some(f) = &c.front {
        let pad = ((f.kernel - f.stride) / 2) as i64;
        let h = conv(&mut g, w, &x, "detector.front", &ConvOpts::d1(f.stride as i64, pad, 1, 1), false)?;
        let b = f.bands as i64;
        let parts = g.split(&h, &[b, b], 1);
        let re2 = g.mul(&parts[0], &parts[0]);
        let im2 = g.mul(&parts[1], &parts[1]);
        let e = g.add(&re2, &im2);
        let e = g.offset(&e, ENERGY_FLOOR);
        let e = g.log(&e);
        let m = g.reduce_mean(&e, &[1], true);
        let e = g.sub(&e, &m);
        let mut e = g.scale(&e, ENERGY_SCALE);
        if f.demodulate {
            let t = (stemmark_models::spec::BLOCK + 2 * pad as usize - f.kernel) / f.stride + 1;
            let chips = g.init_f32("detector.chips", &super::nets::chips(t), &[1, 1, t])?;
            let d = g.mul(&e, &chips);
            let d = g.reduce_mean(&d, &[2], true);
            e = g.scale(&d, POOL_GAIN);
            if f.keyed {
                let s = key_signs(&mut g, &key, "detector.key_spread", &super::nets::key_spread_bins(&f.bins()), f.bands)?;
                let s = g.unsqueeze(&s, &[2]);
                e = g.mul(&e, &s);
            }
        }
        let gb = lin(&mut g, w, &cond, "detector.front.film.head")?;
        x = film(&mut g, &e, &gb, f.bands, 1);
    }
    let pad = ((c.kernel - c.stride) / 2) as i64;
    for (i, &ch) in c.channels.iter().enumerate() {
        let p = format!("detector.convs.{i}");
        let h = conv(
            &mut g,
            w,
            &x,
            &p,
            &ConvOpts::d1(c.stride as i64, pad, 1, 1),
            false,
        )?;
        let gb = lin(&mut g, w, &cond, &format!("{p}.film.head"))?;
        let h = film(&mut g, &h, &gb, ch, 1);
        x = g.gelu(&h);
    }
    let x = g.reduce_mean(&x, &[-1], false);
    let logits = lin(&mut g, w, &x, "detector.head")?;
    output(&mut g, &ct, 0, &logits)?;
    g.finish()
}

pub fn separator_graph(w: &Weights, c: &SeparatorConfig) -> Result<Model> {
    let ct = contract::SEPARATOR;
    let mut g = GraphBuilder::new("stemmark_separator");
    let mix = input(&mut g, &ct, 0)?;
    // Normalise by the mono sum's mean and standard deviation.
    let mono = g.reduce_mean(&mix, &[1], true);
    let mean = g.reduce_mean(&mono, &[-1], true);
    let centred = g.sub(&mono, &mean);
    let sq = g.mul(&centred, &centred);
    let var = g.reduce_mean(&sq, &[-1], true);
    let std = g.sqrt(&var);
    let std = g.offset(&std, STD_FLOOR);
    let x = g.sub(&mix, &mean);
    let x = g.div(&x, &std);
    // Zero-pad the end to a multiple of stride^depth: pad = (M − len mod M) mod M.
    let m = g.ints(&[c.length_multiple() as i64]);
    let shape = g.op("Shape", &[&mix], []);
    let len = g.slice(&shape, &[2], &[3], &[0], None);
    let r = g.op("Mod", &[&len, &m], []);
    let r = g.sub(&m, &r);
    let pad = g.op("Mod", &[&r, &m], []);
    let zeros = g.ints(&[0, 0, 0, 0, 0]);
    let pads = g.concat(&[&zeros, &pad], 0);
    let mut x = g.op("Pad", &[&x, &pads], []);
    let (k, s) = (c.kernel as i64, c.stride as i64);
    let cpad = (k - s) / 2;
    let mut skips = Vec::new();
    for i in 0..c.depth {
        let p = format!("separator.enc.{i}");
        let h = conv(
            &mut g,
            w,
            &x,
            &format!("{p}.conv"),
            &ConvOpts::d1(s, cpad, 1, 1),
            false,
        )?;
        let h = g.relu(&h);
        let h = conv(
            &mut g,
            w,
            &h,
            &format!("{p}.pw"),
            &ConvOpts::default(),
            false,
        )?;
        x = g.glu(&h, 1);
        skips.push(x.clone());
    }
    // [B, C, T'] → [T', B, C] for ONNX's LSTM (time first) and back.
    let mut y = g.transpose(&x, &[2, 0, 1]);
    let hidden = c.layer_channels(c.depth - 1);
    for l in 0..c.lstm_layers {
        let t = |sfx: &str| format!("separator.lstm.{sfx}_l{l}");
        let names = [
            [t("weight_ih"), t("weight_hh"), t("bias_ih"), t("bias_hh")],
            [
                format!("{}_reverse", t("weight_ih")),
                format!("{}_reverse", t("weight_hh")),
                format!("{}_reverse", t("bias_ih")),
                format!("{}_reverse", t("bias_hh")),
            ],
        ];
        let dir = |n: &[String; 4]| -> Result<LstmWeights> {
            Ok(LstmWeights {
                w_ih: get(w, &n[0])?,
                w_hh: get(w, &n[1])?,
                b_ih: get(w, &n[2])?,
                b_hh: get(w, &n[3])?,
            })
        };
        y = onnx_ops::bilstm_layer(
            &mut g,
            &y,
            &format!("separator.lstm.l{l}"),
            hidden,
            [dir(&names[0])?, dir(&names[1])?],
        )?;
    }
    let y = lin(&mut g, w, &y, "separator.lstm_out")?;
    let mut x = g.transpose(&y, &[1, 2, 0]);
    for i in (0..c.depth).rev() {
        let p = format!("separator.dec.{i}");
        let h = g.add(&x, &skips[i]);
        let h = conv(
            &mut g,
            w,
            &h,
            &format!("{p}.pw"),
            &ConvOpts::default(),
            false,
        )?;
        let h = g.glu(&h, 1);
        let opts = ConvOpts {
            strides: vec![s],
            pads: vec![cpad, cpad],
            ..ConvOpts::default()
        };
        x = conv(&mut g, w, &h, &format!("{p}.convtr"), &opts, true)?;
        if i > 0 {
            x = g.relu(&x);
        }
    }
    let start = g.ints(&[0]);
    let axis = g.ints(&[2]);
    let x = g.op("Slice", &[&x, &start, &len, &axis], []);
    let x = g.reshape(&x, &[0, STEM_NAMES.len() as i64, 2, -1]);
    let std4 = g.unsqueeze(&std, &[1]);
    let mean4 = g.unsqueeze(&mean, &[1]);
    let x = g.mul(&x, &std4);
    let stems = g.add(&x, &mean4);
    output(&mut g, &ct, 0, &stems)?;
    g.finish()
}

/// Every weight the config needs is there with its shape, and nothing else is.
pub fn check_weights(w: &Weights, config: &NetConfig) -> Result<()> {
    let want = config.weight_shapes();
    for (name, shape) in &want {
        let t = get(w, name)?;
        ensure!(
            &t.shape == shape,
            "`{name}` has shape {:?}, the config needs {shape:?}",
            t.shape
        );
        ensure!(
            t.data.iter().all(|v| v.is_finite()),
            "`{name}` holds NaN or infinite values"
        );
    }
    if let Some(extra) = w.keys().find(|k| !want.contains_key(*k)) {
        bail!("unexpected tensor `{extra}`");
    }
    Ok(())
}

/// Writes the three ONNX files and their manifest (kind "trained") into `out_dir`.
pub fn export_models(weights: &Path, config: &NetConfig, out_dir: &Path) -> Result<()> {
    config.validate()?;
    let w = load_weights(weights)?;
    check_weights(&w, config)
        .with_context(|| format!("{} does not fit the network config", weights.display()))?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let models = [
        (contract::EMBEDDER, embedder_graph(&w, &config.embedder)?),
        (contract::DETECTOR, detector_graph(&w, &config.detector)?),
        (contract::SEPARATOR, separator_graph(&w, &config.separator)?),
    ];
    for (c, model) in models {
        model
            .save(&out_dir.join(c.file))
            .with_context(|| format!("cannot write {}", c.file))?;
    }
    let manifest = Manifest::describe(
        out_dir,
        "trained",
        config.embedder.mask_bound,
        Calibration::default(),
    )?;
    manifest
        .save(out_dir)
        .with_context(|| format!("cannot write the manifest in {}", out_dir.display()))?;
    Ok(())
}

/// `sign(key · spread + ½)` as graph nodes: `[B, n]` from `key` `[B, KEY_DIM]` (see
/// `nets::key_spread`).
fn key_signs(g: &mut GraphBuilder, key: &Value, name: &str, spread: &[f32], n: usize) -> Result<Value> {
    let m = g.init_f32(name, spread, &[stemmark_models::spec::KEY_DIM, n])?;
    let p = g.matmul(key, &m);
    let p = g.offset(&p, 0.5);
    Ok(g.op("Sign", &[&p], []))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    }
}

/// The exported graphs against the tch forward passes, run through the project's own runtime
/// (ONNX Runtime from `cargo xtask setup`): max abs difference ≤ 1e-4.
#[cfg(all(test, feature = "train"))]
mod parity {
    use ndarray::{Array2, Array3};
    use stemmark_models::keys::Key;
    use stemmark_models::payload;
    use stemmark_models::runtime::Provider;
    use stemmark_models::spec::{BLOCK, KEY_DIM};
    use tch::{Device, Kind};

    use super::*;

    const TOL: f32 = 1e-4;

    fn to_vec(t: &tch::Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.contiguous().flatten(0, -1)).unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn exported_models_match_the_training_graph() {
        stemmark_models::runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
        let config = NetConfig::tiny();
        let nets = crate::train::stage::seeded_nets(&config, Device::Cpu, 11).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("weights.safetensors");
        nets.save(&weights).unwrap();
        let out = dir.path().join("models");
        export_models(&weights, &config, &out).unwrap();
        let key = Key::from_bytes([7; 16], "parity");
        let kv = tch::Tensor::from_slice(&key.vector()).view([1, KEY_DIM as i64]);
        let opts = (Kind::Float, Device::Cpu);

        // Embedder, on real STFT magnitudes of noise (2 blocks' worth of frames, batch 2).
        let audio = crate::train::stage::randn([2, 2 * BLOCK as i64 / 20], opts) * 0.3;
        let mag = crate::train::stft::magnitude(&audio);
        let word = 0xA5C3_0F96;
        let msg = tch::Tensor::from_slice(&payload::to_bipolar(word))
            .view([1, -1])
            .repeat([2, 1]);
        let want = tch::no_grad(|| nets.embedder.forward(&mag, &msg, &kv.repeat([2, 1])));
        let shape: Vec<usize> = mag.size().iter().map(|&d| d as usize).collect();
        let mag_nd = Array3::from_shape_vec((shape[0], shape[1], shape[2]), to_vec(&mag)).unwrap();
        let mut emb = stemmark_models::embedder::Embedder::open(&out, Provider::Cpu).unwrap();
        let got = emb.masks(mag_nd.view(), word, &key, 1.0).unwrap();
        let d = max_diff(got.as_slice().unwrap(), &to_vec(&want));
        let scale = to_vec(&want).iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("embedder: max abs diff {d:.2e} (outputs up to {scale:.3})");
        assert!(d <= TOL, "embedder differs by {d}");

        // Detector.
        let blocks = crate::train::stage::randn([2, BLOCK as i64], opts) * 0.2;
        let want = tch::no_grad(|| nets.detector.forward(&blocks, &kv.repeat([2, 1])));
        let blocks_nd = Array2::from_shape_vec((2, BLOCK), to_vec(&blocks)).unwrap();
        let mut det = stemmark_models::detector::Detector::open(&out, Provider::Cpu).unwrap();
        let got: Vec<f32> = det
            .logits(&blocks_nd, &key)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let d = max_diff(&got, &to_vec(&want));
        let scale = to_vec(&want).iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("detector: max abs diff {d:.2e} (outputs up to {scale:.3})");
        assert!(d <= TOL, "detector differs by {d}");

        // Separator, on a length that needs padding inside.
        let len = 3001;
        let mix = crate::train::stage::randn([2, 2, len as i64], opts) * 0.2;
        let want = tch::no_grad(|| nets.separator.forward(&mix));
        let mix_nd = Array3::from_shape_vec((2, 2, len), to_vec(&mix)).unwrap();
        let mut sep = stemmark_models::separator::Separator::open(&out, Provider::Cpu).unwrap();
        let got = sep.run(&mix_nd).unwrap();
        let d = max_diff(got.as_slice().unwrap(), &to_vec(&want));
        let scale = to_vec(&want).iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("separator: max abs diff {d:.2e} (outputs up to {scale:.3})");
        assert!(d <= TOL, "separator differs by {d}");
    }
}

/// Per-block cost of the default-size nets through ONNX Runtime on the CPU (random weights; the
/// cost does not depend on their values). Run pinned to one core so the runtime uses one thread:
/// `taskset -c 0 cargo test --release … --features train --lib default_sizes_cost -- --ignored --nocapture`.
/// `STEMMARK_NET_CONFIG=<toml>` times other sizes; `STEMMARK_COST_MODELS=<dir>` keeps the exported
/// models for `stemmark bench --models <dir>` (the whole embed/detect/separate pipelines).
#[cfg(all(test, feature = "train"))]
mod cost {
    use std::time::Instant;

    use ndarray::{Array2, Array3};
    use stemmark_models::keys::Key;
    use stemmark_models::runtime::Provider;
    use stemmark_models::spec::{
        BINS, BLOCK, FRAMES_PER_BLOCK, SEPARATOR_OVERLAP, SEPARATOR_SEGMENT,
    };
    use tch::Device;

    use super::*;
    use crate::train::checkpoint::Nets;

    fn median_ms(mut f: impl FnMut()) -> f64 {
        f();
        let mut t: Vec<f64> = (0..7)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[3]
    }

    #[test]
    #[ignore = "timing; run by hand in release"]
    fn default_sizes_cost() {
        stemmark_models::runtime::init(None, &[]).unwrap();
        // Candidate sizes can be timed from a TOML file.
        let config = match std::env::var_os("STEMMARK_NET_CONFIG") {
            Some(p) => NetConfig::load(Path::new(&p)).unwrap(),
            None => NetConfig::default(),
        };
        let nets = Nets::new(&config, Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("w.safetensors");
        nets.save(&weights).unwrap();
        export_models(&weights, &config, dir.path()).unwrap();
        // Keep a copy for `stemmark bench --models <dir>` (full embed/detect/separate pipelines).
        if let Some(keep) = std::env::var_os("STEMMARK_COST_MODELS") {
            export_models(&weights, &config, Path::new(&keep)).unwrap();
        }
        let bytes = std::fs::metadata(&weights).unwrap().len();
        let key = Key::from_bytes([1; 16], "cost");
        let mut emb = stemmark_models::embedder::Embedder::open(dir.path(), Provider::Cpu).unwrap();
        let mag = Array3::from_elem((1, BINS, FRAMES_PER_BLOCK), 0.5f32);
        let e = median_ms(|| drop(emb.masks(mag.view(), 0x1234_5678, &key, 1.0).unwrap()));
        // The embedder's own STFT work per stereo block: mid analysis, two channel analyses, two syntheses.
        let x: Vec<f32> = (0..BLOCK).map(|i| (i as f32 * 0.01).sin() * 0.1).collect();
        let mut stft = stemmark_models::stft::Stft::new();
        let st = median_ms(|| {
            let specs: Vec<_> = (0..3).map(|_| stft.forward(&x)).collect();
            for s in &specs[1..] {
                drop(stft.inverse(s, BLOCK));
            }
        });
        let mut det = stemmark_models::detector::Detector::open(dir.path(), Provider::Cpu).unwrap();
        let audio = Array2::from_shape_fn((1, BLOCK), |(_, i)| ((i as f32) * 0.01).sin() * 0.1);
        let d = median_ms(|| drop(det.logits(&audio, &key).unwrap()));
        let mut sep =
            stemmark_models::separator::Separator::open(dir.path(), Provider::Cpu).unwrap();
        let mix = Array3::from_shape_fn((1, 2, SEPARATOR_SEGMENT), |(_, c, i)| {
            ((i + c) as f32 * 0.01).sin() * 0.1
        });
        let s = median_ms(|| drop(sep.run(&mix).unwrap()));
        let per_2s = s * BLOCK as f64 / (SEPARATOR_SEGMENT - SEPARATOR_OVERLAP) as f64;
        println!(
            "default sizes ({} threads available): embedder {e:.2} ms/block (net) + {st:.2} ms (STFT/iSTFT, stereo), detector {d:.2} ms/block/key, \
             separator {s:.1} ms per {} s segment = {per_2s:.1} ms per 2 s; weights {:.2} MB (f32)",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            SEPARATOR_SEGMENT / BLOCK * 2,
            bytes as f64 / 1e6
        );
    }
}
