//! Plumbing models: `embedder.onnx`, `detector.onnx` and `separator.onnx` with deterministic
//! random weights and exactly the runtime's input/output contracts (names, element types,
//! shapes, dynamic dims), so sessions, batching and the block pipeline can be tested before
//! trained models exist.
//!
//! **These are not watermarking models.** Their weights are random; they are never shipped as
//! `models/*.onnx` and carry `stemmark.plumbing = true` in their metadata. They only promise
//! the contract's invariants: the embedder's mask lies in `[1 − MASK_BOUND, 1 + MASK_BOUND]`,
//! and the separator's stems sum to the mix.
//!
//! To check them with the reference tools (needs Python with `onnx`, `onnxruntime`, `numpy`):
//!
//! ```text
//! STEMMARK_ONNX_OUT=/tmp/plumbing cargo test -p stemmark-offline --lib \
//!     onnx::testmodels::tests::export_for_python_check -- --ignored
//! python3 offline/scripts/check_onnx.py /tmp/plumbing
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stemmark_models::spec::{
    BINS, BLOCK, FRAMES_PER_BLOCK, HOP, KEY_DIM, MESSAGE_BITS, STEM_NAMES,
};

use super::graph::{ConvOpts, Dim, GraphBuilder, Model, Value};
use super::proto::DataType::Float;

/// Half-width of the embedder's mask band: the mask lies in `[1 − b, 1 + b]`.
pub const MASK_BOUND: f32 = 0.1;

/// The separator's construction (gain `g` and remainder `mix − g·mix`) yields exactly two stems.
const _: () = assert!(
    STEM_NAMES.len() == 2,
    "the plumbing separator writes two stems"
);

/// Writes the three plumbing models into `dir` (created if missing).
pub fn write_plumbing_models(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    embedder(seed)?.save(&dir.join("embedder.onnx"))?;
    detector(seed)?.save(&dir.join("detector.onnx"))?;
    separator(seed)?.save(&dir.join("separator.onnx"))?;
    Ok(())
}

/// One independent stream per model, so changing one model's weights leaves the others alone.
fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn batch() -> Dim {
    Dim::sym("batch")
}

fn finish(g: GraphBuilder, what: &str, seed: u64) -> Result<Model> {
    Ok(g.finish()?
        .with_doc(&format!(
            "Stemmark plumbing {what}: random weights, contract only, never shipped."
        ))
        .with_metadata("stemmark.plumbing", "true")
        .with_metadata("stemmark.seed", &seed.to_string()))
}

/// `magnitude` [batch, BINS, frames], `message` [batch, MESSAGE_BITS], `key` [batch, KEY_DIM]
/// → `mask` [batch, BINS, frames] = 1 + b·tanh(f(log magnitude) + g(message, key)).
pub fn embedder(seed: u64) -> Result<Model> {
    let mut rng = rng_for(seed, 1);
    let mut g = GraphBuilder::new("stemmark_plumbing_embedder");
    let spec_dims = [batch(), BINS.into(), Dim::sym("frames")];
    let mag = g.input("magnitude", Float, &spec_dims)?;
    let msg = g.input("message", Float, &[batch(), MESSAGE_BITS.into()])?;
    let key = g.input("key", Float, &[batch(), KEY_DIM.into()])?;

    // f: a 3-tap filter along time per bin (depthwise Conv, group = BINS) of the log-magnitude.
    let floor = g.offset(&mag, 1e-6);
    let logmag = g.log(&floor);
    let fw = g.init_f32(
        "f_weight",
        &uniform(&mut rng, BINS * 3, 0.05),
        &[BINS, 1, 3],
    )?;
    let fb = g.init_f32("f_bias", &uniform(&mut rng, BINS, 0.1), &[BINS])?;
    let f = g.conv(
        &logmag,
        &fw,
        Some(&fb),
        &ConvOpts::d1(1, 1, 1, i64::try_from(BINS)?),
    );

    // g: one offset per bin from (message, key), broadcast over frames.
    let cond_in = g.concat(&[&msg, &key], 1);
    let width = MESSAGE_BITS + KEY_DIM;
    let gw = g.init_f32(
        "g_weight",
        &uniform(&mut rng, width * BINS, 1.0 / (width as f32).sqrt()),
        &[width, BINS],
    )?;
    let gb = g.init_f32("g_bias", &uniform(&mut rng, BINS, 0.1), &[BINS])?;
    let cond = g.gemm(&cond_in, &gw, Some(&gb), false, false);
    let cond = g.unsqueeze(&cond, &[2]);

    let z = g.add(&f, &cond);
    let t = g.tanh(&z);
    let t = g.scale(&t, MASK_BOUND);
    let mask = g.offset(&t, 1.0);
    g.output(&mask, "mask", Float, &spec_dims)?;
    Ok(finish(g, "embedder", seed)?.with_metadata("stemmark.mask_bound", &MASK_BOUND.to_string()))
}

/// `audio` [batch, BLOCK], `key` [batch, KEY_DIM] → `logits` [batch, MESSAGE_BITS]:
/// RMS-normalise, per-frame log energies, LayerNorm, a GELU MLP, plus a key projection.
pub fn detector(seed: u64) -> Result<Model> {
    const HIDDEN: usize = 64;
    let mut rng = rng_for(seed, 2);
    let mut g = GraphBuilder::new("stemmark_plumbing_detector");
    let audio = g.input("audio", Float, &[batch(), BLOCK.into()])?;
    let key = g.input("key", Float, &[batch(), KEY_DIM.into()])?;

    let mean = g.reduce_mean(&audio, &[1], true);
    let centred = g.sub(&audio, &mean);
    let two = g.scalar(2.0);
    let sq = g.pow(&centred, &two);
    let ms = g.reduce_mean(&sq, &[1], true);
    let ms = g.offset(&ms, 1e-8);
    let rms = g.sqrt(&ms);
    let x = g.div(&centred, &rms);

    let frames = g.reshape(
        &x,
        &[-1, i64::try_from(FRAMES_PER_BLOCK)?, i64::try_from(HOP)?],
    );
    let power = g.mul(&frames, &frames);
    let energy = g.reduce_mean(&power, &[2], false);
    let energy = g.offset(&energy, 1e-6);
    let loge = g.log(&energy);
    let ln_scale = g.init_f32(
        "ln_scale",
        &vec![1.0; FRAMES_PER_BLOCK],
        &[FRAMES_PER_BLOCK],
    )?;
    let ln_bias = g.init_f32("ln_bias", &vec![0.0; FRAMES_PER_BLOCK], &[FRAMES_PER_BLOCK])?;
    let h = g.layer_norm(&loge, &ln_scale, Some(&ln_bias), -1, 1e-5);

    let w1 = g.init_f32(
        "w1",
        &uniform(
            &mut rng,
            FRAMES_PER_BLOCK * HIDDEN,
            1.0 / (FRAMES_PER_BLOCK as f32).sqrt(),
        ),
        &[FRAMES_PER_BLOCK, HIDDEN],
    )?;
    let b1 = g.init_f32("b1", &uniform(&mut rng, HIDDEN, 0.1), &[HIDDEN])?;
    let h = g.linear(&h, &w1, Some(&b1));
    let h = g.gelu(&h);
    let w2 = g.init_f32(
        "w2",
        &uniform(
            &mut rng,
            HIDDEN * MESSAGE_BITS,
            1.0 / (HIDDEN as f32).sqrt(),
        ),
        &[HIDDEN, MESSAGE_BITS],
    )?;
    let b2 = g.init_f32("b2", &uniform(&mut rng, MESSAGE_BITS, 0.1), &[MESSAGE_BITS])?;
    let from_audio = g.linear(&h, &w2, Some(&b2));

    let wk = g.init_f32(
        "key_weight",
        &uniform(
            &mut rng,
            KEY_DIM * MESSAGE_BITS,
            1.0 / (KEY_DIM as f32).sqrt(),
        ),
        &[KEY_DIM, MESSAGE_BITS],
    )?;
    let bk = g.init_f32(
        "key_bias",
        &uniform(&mut rng, MESSAGE_BITS, 0.1),
        &[MESSAGE_BITS],
    )?;
    let from_key = g.gemm(&key, &wk, Some(&bk), false, false);

    let logits = g.add(&from_audio, &from_key);
    g.output(&logits, "logits", Float, &[batch(), MESSAGE_BITS.into()])?;
    finish(g, "detector", seed)
}

/// `mix` [batch, 2, length] → `stems` [batch, STEMS, 2, length]. The first stem is
/// `mix·σ(energy gain) + ε·tanh(conv residual)`, the second is `mix` minus the first, so the
/// stems sum to the mix (to rounding).
pub fn separator(seed: u64) -> Result<Model> {
    const CH: usize = 2;
    const HIDDEN: usize = 4;
    const K: usize = 5;
    let mut rng = rng_for(seed, 3);
    let mut g = GraphBuilder::new("stemmark_plumbing_separator");
    let mix = g.input("mix", Float, &[batch(), CH.into(), Dim::sym("length")])?;

    let power = g.mul(&mix, &mix);
    let energy = g.reduce_mean(&power, &[2], true);
    let a = g.init_f32("gain_scale", &uniform(&mut rng, CH, 1.0), &[1, CH, 1])?;
    let c = g.init_f32("gain_bias", &uniform(&mut rng, CH, 1.0), &[1, CH, 1])?;
    let ga = g.mul(&energy, &a);
    let ga = g.add(&ga, &c);
    let gain = g.sigmoid(&ga);
    let first = g.mul(&mix, &gain);

    // A length-preserving Conv → ReLU → ConvTranspose residual (the Demucs ops, stride 1).
    let pad = i64::try_from(K / 2)?;
    let w1 = g.init_f32(
        "enc_weight",
        &uniform(&mut rng, HIDDEN * CH * K, 0.3),
        &[HIDDEN, CH, K],
    )?;
    let b1 = g.init_f32("enc_bias", &uniform(&mut rng, HIDDEN, 0.1), &[HIDDEN])?;
    let h = g.conv(&mix, &w1, Some(&b1), &ConvOpts::d1(1, pad, 1, 1));
    let h = g.relu(&h);
    let w2 = g.init_f32(
        "dec_weight",
        &uniform(&mut rng, HIDDEN * CH * K, 0.3),
        &[HIDDEN, CH, K],
    )?;
    let b2 = g.init_f32("dec_bias", &uniform(&mut rng, CH, 0.1), &[CH])?;
    let r = g.conv_transpose(&h, &w2, Some(&b2), &ConvOpts::d1(1, pad, 1, 1));
    let r = g.tanh(&r);
    let r = g.scale(&r, 0.01);
    let first = g.add(&first, &r);
    let second = g.sub(&mix, &first);

    let stems: Vec<Value> = [first, second]
        .iter()
        .map(|s| g.unsqueeze(s, &[1]))
        .collect();
    let stems = g.concat(&stems.iter().collect::<Vec<_>>(), 1);
    g.output(
        &stems,
        "stems",
        Float,
        &[
            batch(),
            STEM_NAMES.len().into(),
            CH.into(),
            Dim::sym("length"),
        ],
    )?;
    finish(g, "separator", seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::graph::{IR_VERSION, OPSET_VERSION};
    use crate::onnx::reader::{self, Dim as RDim};

    fn sym(s: &str) -> RDim {
        RDim::Param(s.into())
    }

    fn fixed(n: usize) -> RDim {
        RDim::Value(n as i64)
    }

    fn io(vs: &[reader::ValueInfo]) -> Vec<(String, Vec<RDim>)> {
        vs.iter()
            .map(|v| {
                assert_eq!(v.elem_type, 1, "{} must be float", v.name);
                (v.name.clone(), v.dims.clone().expect("shape present"))
            })
            .collect()
    }

    #[test]
    fn plumbing_models_are_written_and_parse_with_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        write_plumbing_models(dir.path(), 7).unwrap();
        let load = |name: &str| {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            reader::model(&bytes).unwrap()
        };
        let (e, d, s) = (
            load("embedder.onnx"),
            load("detector.onnx"),
            load("separator.onnx"),
        );
        for m in [&e, &d, &s] {
            assert_eq!(m.ir_version, IR_VERSION);
            assert_eq!(m.opsets, vec![(String::new(), OPSET_VERSION)]);
            assert_eq!(m.producer_name, "stemmark");
            assert!(
                m.metadata
                    .contains(&("stemmark.plumbing".into(), "true".into()))
            );
        }
        let spec = vec![sym("batch"), fixed(BINS), sym("frames")];
        assert_eq!(
            io(&e.graph.inputs),
            vec![
                ("magnitude".into(), spec.clone()),
                ("message".into(), vec![sym("batch"), fixed(MESSAGE_BITS)]),
                ("key".into(), vec![sym("batch"), fixed(KEY_DIM)]),
            ]
        );
        assert_eq!(io(&e.graph.outputs), vec![("mask".into(), spec)]);
        assert_eq!(
            io(&d.graph.inputs),
            vec![
                ("audio".into(), vec![sym("batch"), fixed(BLOCK)]),
                ("key".into(), vec![sym("batch"), fixed(KEY_DIM)]),
            ]
        );
        assert_eq!(
            io(&d.graph.outputs),
            vec![("logits".into(), vec![sym("batch"), fixed(MESSAGE_BITS)])]
        );
        assert_eq!(
            io(&s.graph.inputs),
            vec![("mix".into(), vec![sym("batch"), fixed(2), sym("length")])]
        );
        assert_eq!(
            io(&s.graph.outputs),
            vec![(
                "stems".into(),
                vec![
                    sym("batch"),
                    fixed(STEM_NAMES.len()),
                    fixed(2),
                    sym("length")
                ]
            )]
        );
        // The depthwise filter really is depthwise over all bins.
        let conv = e.graph.nodes.iter().find(|n| n.op_type == "Conv").unwrap();
        assert_eq!(conv.attr("group"), Some(&reader::AttrVal::Int(BINS as i64)));
        assert_eq!(
            e.graph.initializer(&conv.inputs[1]).unwrap().dims,
            vec![BINS as i64, 1, 3]
        );
        // No temp files are left behind by the atomic save.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn embedder_bytes_are_deterministic_per_seed() {
        let a = embedder(42).unwrap().to_bytes();
        let b = embedder(42).unwrap().to_bytes();
        let c = embedder(43).unwrap().to_bytes();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), c.len(), "a seed changes weights, not structure");
    }

    #[test]
    fn models_draw_from_independent_streams() {
        // Same seed, different models: the first weights must differ (no shared stream).
        let e = reader::model(&embedder(5).unwrap().to_bytes()).unwrap();
        let s = reader::model(&separator(5).unwrap().to_bytes()).unwrap();
        let first = |m: &reader::Model| {
            m.graph
                .initializers
                .iter()
                .find(|t| t.elements() > 1)
                .unwrap()
                .f32s()
                .unwrap()[0]
        };
        assert_ne!(first(&e), first(&s));
    }

    #[test]
    fn embedder_weights_round_trip_and_stay_in_range() {
        let m = reader::model(&embedder(9).unwrap().to_bytes()).unwrap();
        let fw = m.graph.initializer("f_weight").unwrap();
        let vals = fw.f32s().unwrap();
        assert_eq!(vals.len() as i64, fw.elements());
        assert!(vals.iter().all(|v| v.abs() <= 0.05));
        assert!(vals.iter().any(|&v| v != 0.0));
        // The mask bound is the literal the graph scales tanh by.
        let bound = m
            .graph
            .initializers
            .iter()
            .filter(|t| t.dims.is_empty())
            .map(|t| t.f32s().unwrap()[0])
            .any(|v| v == MASK_BOUND);
        assert!(bound);
    }

    /// One of each builder helper, so the Python check can run them all in ONNX Runtime and
    /// compare a few against NumPy. Output names are what `check_onnx.py` looks for.
    fn op_zoo() -> Result<Model> {
        use crate::onnx::graph::TensorData;
        let mut rng = rng_for(11, 9);
        let mut g = GraphBuilder::new("stemmark_op_zoo");
        let x = g.input("x", Float, &[batch(), 8.into(), Dim::sym("time")])?;
        let bct = [batch(), 8.into(), Dim::sym("time")];
        let gelu = g.gelu(&x);
        g.output(&gelu, "gelu", Float, &bct)?;
        let silu = g.silu(&x);
        g.output(&silu, "silu", Float, &bct)?;
        let glu = g.glu(&x, 1);
        g.output(&glu, "glu", Float, &[batch(), 4.into(), Dim::sym("time")])?;
        let sm = g.softmax(&x, -1);
        g.output(&sm, "softmax", Float, &bct)?;
        let xt = g.transpose(&x, &[0, 2, 1]);
        let scale = g.init_f32("ln_scale", &uniform(&mut rng, 8, 1.0), &[8])?;
        let bias = g.init_f32("ln_bias", &uniform(&mut rng, 8, 1.0), &[8])?;
        let ln = g.layer_norm(&xt, &scale, Some(&bias), -1, 1e-5);
        g.output(
            &ln,
            "layer_norm",
            Float,
            &[batch(), Dim::sym("time"), 8.into()],
        )?;
        let sl = g.slice(&x, &[1], &[5], &[1], Some(&[2]));
        g.output(&sl, "slice", Float, &[batch(), 2.into(), Dim::sym("time")])?;
        let parts = g.split(&x, &[3, 5], 1);
        let joined = g.concat(&[&parts[0], &parts[1]], 1);
        let zero = g.sub(&joined, &x);
        g.output(&zero, "split_roundtrip", Float, &bct)?;
        let u = g.unsqueeze(&x, &[0]);
        let sq = g.squeeze(&u, &[0]);
        let rs = g.reduce_sum(&sq, &[2], false);
        g.output(&rs, "reduce_sum", Float, &[batch(), 8.into()])?;
        let gw = g.init_f32("gemm_w", &uniform(&mut rng, 3 * 8, 1.0), &[3, 8])?;
        let gemm = g.gemm(&rs, &gw, None, false, true);
        g.output(&gemm, "gemm", Float, &[batch(), 3.into()])?;
        let flat = g.reshape(&x, &[0, -1]);
        g.output(&flat, "reshape", Float, &[batch(), Dim::sym("flat")])?;
        let w = g.init_f32("conv_w", &uniform(&mut rng, 8 * 8 * 3, 0.3), &[8, 8, 3])?;
        let down = g.conv(&x, &w, None, &ConvOpts::d1(2, 1, 1, 1));
        g.output(
            &down,
            "conv",
            Float,
            &[batch(), 8.into(), Dim::sym("t_down")],
        )?;
        let up_opts = ConvOpts {
            output_padding: vec![1],
            ..ConvOpts::d1(2, 1, 1, 1)
        };
        let up = g.conv_transpose(&down, &w, None, &up_opts);
        g.output(
            &up,
            "conv_transpose",
            Float,
            &[batch(), 8.into(), Dim::sym("t_up")],
        )?;
        let c = g.constant(TensorData::f32(&[0.5; 8], &[8, 1])?);
        let a = g.abs(&x);
        let e = g.neg(&a);
        let e = g.exp(&e);
        let r = g.sqrt(&a);
        let r = g.add(&r, &e);
        let r = g.div(&r, &c);
        // Clip with its `min` omitted: exercises an empty optional input in ONNX Runtime.
        let three = g.scalar(3.0);
        let custom = g.op("Clip", &[&r, &Value::absent(), &three], []);
        g.output(&custom, "misc", Float, &bct)?;
        g.finish()
    }

    /// Writes the plumbing models (and `ops.onnx`, every builder helper once) to
    /// `$STEMMARK_ONNX_OUT` for `offline/scripts/check_onnx.py`.
    #[test]
    #[ignore = "writes files for the Python check; run with --ignored"]
    fn export_for_python_check() {
        let dir =
            std::env::var_os("STEMMARK_ONNX_OUT").expect("set STEMMARK_ONNX_OUT to a directory");
        let dir = Path::new(&dir);
        write_plumbing_models(dir, 7).unwrap();
        op_zoo().unwrap().save(&dir.join("ops.onnx")).unwrap();
    }

    #[test]
    fn op_zoo_builds() {
        let m = reader::model(&op_zoo().unwrap().to_bytes()).unwrap();
        assert_eq!(m.graph.outputs.len(), 13);
    }
}
