//! Plumbing models for tests: a model folder that follows the runtime's contracts without a
//! training run. The embedder and detector are the real tile channel models (built from the
//! designed constants, [`super::tile`]); the separator has deterministic random weights and
//! carries `stemmark.plumbing = true` in its metadata: **it does not separate**, it only promises
//! that its stems sum to the mix. Never shipped as `models/*.onnx`.
//!
//! To check them with the reference tools (needs Python with `onnx`, `onnxruntime`, `numpy`):
//!
//! ```text
//! STEMMARK_ONNX_OUT=/tmp/plumbing cargo test -p stemmark-offline --lib \
//!     onnx::testmodels::tests::export_for_python_check -- --ignored
//! python3 offline/scripts/check_onnx.py /tmp/plumbing
//! ```

use std::path::Path;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stemmark_models::spec::STEM_NAMES;
use stemmark_models::tile::Params;

use super::graph::{ConvOpts, Dim, GraphBuilder, Model, Value};
use super::proto::DataType::Float;

/// The separator's construction (gain `g` and remainder `mix − g·mix`) yields exactly two stems.
const _: () = assert!(
    STEM_NAMES.len() == 2,
    "the plumbing separator writes two stems"
);

/// Writes the three plumbing models into `dir` (created if missing).
pub fn write_plumbing_models(dir: &Path, seed: u64) -> Result<()> {
    super::tile::write_tile_models(dir, &Params::default())?;
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
    use stemmark_models::spec::{
        BINS, FRAMES_PER_BLOCK, TILE_ROWS, TILE_UNIT_COLS, TILE_UNITS,
    };
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
        }
        let plumbing = ("stemmark.plumbing".to_string(), "true".to_string());
        assert!(s.metadata.contains(&plumbing) && !e.metadata.contains(&plumbing) && !d.metadata.contains(&plumbing));
        let block = vec![sym("batch"), fixed(BINS), fixed(FRAMES_PER_BLOCK)];
        assert_eq!(
            io(&e.graph.inputs),
            vec![
                ("magnitude".into(), block.clone()),
                ("pattern".into(), vec![sym("batch"), fixed(TILE_UNIT_COLS), fixed(TILE_ROWS)]),
            ]
        );
        assert_eq!(io(&e.graph.outputs), vec![("mask".into(), block.clone())]);
        assert_eq!(io(&d.graph.inputs), vec![("magnitude".into(), block)]);
        let units = vec![sym("batch"), fixed(TILE_UNITS)];
        assert_eq!(io(&d.graph.outputs), vec![("unit_values".into(), units.clone()), ("unit_cells".into(), units)]);
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
        // No temp files are left behind by the atomic save.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

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
