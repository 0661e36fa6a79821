//! `stemmark export`: trained weights (safetensors) + [`NetConfig`] → `embedder.onnx`,
//! `detector.onnx`, `separator.onnx` and a `manifest.toml`, in pure Rust (no libtorch). The
//! embedder and detector are the tile channel's (`crate::onnx::tile`); the separator graph spells
//! out the same primitive ops as the net's forward pass in [`super::nets`] (same weight names,
//! same epsilons, same op order), with the contract of `stemmark_models::contract`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use stemmark_models::contract::{self, Contract};
use stemmark_models::decision::Calibration;
use stemmark_models::manifest::Manifest;
use stemmark_models::spec::STEM_NAMES;
use stemmark_models::tile::Params;

use super::nets::{NetConfig, SeparatorConfig};
use super::onnx_ops::{self, LstmWeights, Tensor, get, init, linear};
use crate::onnx::graph::f16_to_f32;
use crate::onnx::{ConvOpts, GraphBuilder, Model, Value};

/// The separator's epsilon (kept equal to the tch code's, checked by the parity test).
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

fn input(g: &mut GraphBuilder, c: &Contract, i: usize) -> Result<Value> {
    g.contract_input(c, i)
}

fn output(g: &mut GraphBuilder, c: &Contract, i: usize, v: &Value) -> Result<()> {
    g.contract_output(c, i, v)?;
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

/// Writes the three ONNX files and their manifest (kind "trained") into `out_dir`: the tile
/// channel's embedder and detector, and the checkpoint's separator.
pub fn export_models(weights: &Path, config: &NetConfig, out_dir: &Path) -> Result<()> {
    config.validate()?;
    let w = load_weights(weights)?;
    check_weights(&w, config)
        .with_context(|| format!("{} does not fit the network config", weights.display()))?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    // The embedder and detector are the tile channel's, built from its constants; the
    // checkpoint's own embedder and detector nets (the learned channel) are not exported.
    let channel = Params::default();
    crate::onnx::tile::write_tile_models(out_dir, &channel)?;
    let c = contract::SEPARATOR;
    separator_graph(&w, &config.separator)?
        .save(&out_dir.join(c.file))
        .with_context(|| format!("cannot write {}", c.file))?;
    let manifest = Manifest::describe(out_dir, "trained", channel, Calibration::default())?;
    manifest
        .save(out_dir)
        .with_context(|| format!("cannot write the manifest in {}", out_dir.display()))?;
    Ok(())
}

/// Rewrites `dir`'s embedder and detector as the tile channel's and its manifest in the current
/// format, keeping `separator.onnx` (checked against the old manifest) and the folder's kind and
/// calibration target; the old provenance moves into `history`.
pub fn export_channel_only(dir: &Path) -> Result<()> {
    let path = dir.join(stemmark_models::manifest::FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let old: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not a model manifest", path.display()))?;
    let separator = dir.join(contract::SEPARATOR.file);
    let want = old.get("models").and_then(|m| m.get("separator")).and_then(|s| s.get("sha256")).and_then(|h| h.as_str());
    let found = stemmark_models::manifest::sha256_file(&separator).with_context(|| format!("cannot read {}", separator.display()))?;
    ensure!(want == Some(found.as_str()), "{} does not match its manifest; not upgrading", separator.display());
    let channel = Params::default();
    crate::onnx::tile::write_tile_models(dir, &channel)?;
    let kind = old.get("kind").and_then(|k| k.as_str()).unwrap_or("trained");
    let mut cal = Calibration::default();
    if let Some(t) = old.get("calibration").and_then(|c| c.get("target_fpr")).and_then(|t| t.as_float()) {
        cal.target_fpr = t;
    }
    let mut m = Manifest::describe(dir, kind, channel, cal)?;
    if let Some(toml::Value::Array(h)) = old.get("history") {
        m.history = h.iter().filter_map(|v| v.as_table().cloned()).collect();
    }
    let previous_provenance = old.get("provenance").and_then(|p| p.as_table().cloned()).unwrap_or_default();
    if old.get("format").and_then(|f| f.as_str()) == Some(stemmark_models::manifest::FORMAT) {
        // Already the tile channel: rewrite the models (their graphs may have changed), keep the record.
        m.provenance = previous_provenance;
        m.save(dir).with_context(|| format!("cannot write the manifest in {}", dir.display()))?;
        return Ok(());
    }
    let mut previous = previous_provenance;
    previous.insert("format".into(), old.get("format").cloned().unwrap_or(toml::Value::from("unknown")));
    previous.insert("replaced_by".into(), "the tile channel's embedder and detector (stemmark export --channel-only); the separator is this run's".into());
    m.history.push(previous);
    m.provenance.insert(
        "channel".into(),
        "tile channel, designed (not trained): stemmark_models::tile::Params defaults, graphs by offline/src/onnx/tile.rs".into(),
    );
    m.provenance.insert("separator".into(), "kept from the previous folder; its run is the last entry of history".into());
    m.save(dir).with_context(|| format!("cannot write the manifest in {}", dir.display()))?;
    Ok(())
}


/// The exported separator against the tch forward pass, run through the project's own runtime
/// (ONNX Runtime from `cargo xtask setup`): max abs difference ≤ 1e-4.
#[cfg(all(test, feature = "train"))]
mod parity {
    use ndarray::Array3;
    use stemmark_models::runtime::Provider;
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
        let opts = (Kind::Float, Device::Cpu);
        // The embedder and detector are the tile channel's: they open against their contracts
        // (their parity with the channel's Rust reference is `onnx::tile`'s test).
        stemmark_models::embedder::Embedder::open(&out, Provider::Cpu).unwrap();
        stemmark_models::detector::Detector::open(&out, Provider::Cpu).unwrap();

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

    use ndarray::Array3;
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
        let patterns = stemmark_models::tile::Patterns::from_key(&key);
        let message = stemmark_models::payload::to_bipolar(0x1234_5678);
        let e = median_ms(|| drop(emb.masks(mag.view(), &patterns, &[message], &[0], 1.0).unwrap()));
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
        let d = median_ms(|| drop(det.block_features(&[&x]).unwrap()));
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
