//! The tile channel's models (contract v2): the embedder's mask and the detector's per-cell sums
//! as ONNX graphs computing what the Rust reference `stemmark_models::tile` computes, in f32.
//!
//! The channel's constants ([`Params`]) are named initialisers (`tile.alpha`, …) in their natural
//! units, so a training run can later learn them; the geometry (`spec::TILE_*`, `CELL*`) and the
//! number of power-control steps are the graph's structure. The keyed patterns are inputs: the
//! Rust side expands them from the key (`Patterns::embed_pattern`); the detector's output is
//! key-independent (each unit's value and cell) and Rust forms the keyed sums.
//!
//! Layouts: tiles are `[B, TILE_COLS, TILE_ROWS]` (tile c·ROWS + r when flattened), units
//! `[B, TILE_UNITS]` (unit j·ROWS + r covers tiles (2j, r) and (2j + 1, r)).

use std::path::Path;

use anyhow::{Context, Result};
use stemmark_models::contract::{self, Contract};
use stemmark_models::spec::{
    BINS, CELL_BAND_GROUPS, CELL_LEVEL_EDGES, TILE_BAND, TILE_BINS, TILE_COLS, TILE_FRAMES,
    TILE_ROWS, TILE_UNIT_COLS, TILE_UNITS,
};
use stemmark_models::tile::Params;

use super::graph::{Attr, GraphBuilder, Model, Value};

const TILES: usize = TILE_COLS * TILE_ROWS;

/// Writes the contract-v2 `embedder.onnx` and `detector.onnx` with `params` into `dir`.
pub fn write_tile_models(dir: &Path, params: &Params) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    embedder(params)?.save(&dir.join(contract::EMBEDDER.file))?;
    detector(params)?.save(&dir.join(contract::DETECTOR.file))?;
    Ok(())
}

fn input(g: &mut GraphBuilder, c: &Contract, i: usize) -> Result<Value> {
    g.contract_input(c, i)
}

fn output(g: &mut GraphBuilder, c: &Contract, i: usize, v: &Value) -> Result<()> {
    g.contract_output(c, i, v)?;
    Ok(())
}

/// A learnable constant: a named rank-0 initialiser.
fn constant(g: &mut GraphBuilder, name: &str, v: f64) -> Result<Value> {
    g.init_f32(&format!("tile.{name}"), &[v as f32], &[])
}

fn clip(g: &mut GraphBuilder, x: &Value, lo: &Value, hi: &Value) -> Value {
    g.op("Clip", &[x, lo, hi], [])
}

/// The magnitude's band rows `[B, BAND, FRAMES]`.
fn band(g: &mut GraphBuilder, mag: &Value) -> Value {
    g.slice(
        mag,
        &[TILE_BAND.start as i64],
        &[TILE_BAND.end as i64],
        &[1],
        None,
    )
}

/// Per tile, the sum (or mean) of `x`'s band cells: `[B, BAND, FRAMES]` → `[B, COLS, ROWS]`.
fn per_tile(g: &mut GraphBuilder, x: &Value, mean: bool) -> Value {
    let shape = [
        -1,
        TILE_ROWS as i64,
        TILE_BINS as i64,
        TILE_COLS as i64,
        TILE_FRAMES as i64,
    ];
    let x = g.reshape(x, &shape);
    let t = if mean {
        g.reduce_mean(&x, &[2, 4], false)
    } else {
        g.reduce_sum(&x, &[2, 4], false)
    };
    g.transpose(&t, &[0, 2, 1])
}

/// Tile levels T `[B, COLS, ROWS]` (`tile::feature::tile_levels`).
fn tile_levels(g: &mut GraphBuilder, mag: &Value, floor_db: &Value) -> Value {
    let b = band(g, mag);
    let sq = g.mul(&b, &b);
    let power = g.reduce_mean(&sq, &[1, 2], true);
    let rms = g.sqrt(&power);
    // 10^(dB/20) = e^(dB·ln10/20)
    let ratio = g.scale(floor_db, (std::f64::consts::LN_10 / 20.0) as f32);
    let ratio = g.exp(&ratio);
    let floor = g.mul(&rms, &ratio);
    let floor = g.offset(&floor, 1e-9);
    let floored = g.op("Max", &[&b, &floor], []);
    let l = g.log(&floored);
    per_tile(g, &l, true)
}

/// Median along `axis` (of size `n`) as numpy takes it, kept as a size-1 axis: the last one or
/// two of the `n/2 + 1` largest.
fn median(g: &mut GraphBuilder, x: &Value, axis: i64, n: usize) -> Value {
    // The upper half unsorted (a selection, not a sort: the embedder's 16 020 tiles cost 1 ms
    // sorted), then its one or two smallest, which are the middle of `x`.
    let k = n / 2 + 1;
    let kv = g.ints(&[k as i64]);
    let upper = g.node(
        "TopK",
        &[x, &kv],
        &["", ""],
        [
            ("axis", Attr::Int(axis)),
            ("largest", Attr::Int(1)),
            ("sorted", Attr::Int(0)),
        ],
    );
    let middle_n = if n.is_multiple_of(2) { 2 } else { 1 };
    let mv = g.ints(&[middle_n]);
    let middle = g.node(
        "TopK",
        &[&upper[0], &mv],
        &["", ""],
        [
            ("axis", Attr::Int(axis)),
            ("largest", Attr::Int(0)),
            ("sorted", Attr::Int(0)),
        ],
    );
    g.reduce_mean(&middle[0], &[axis], true)
}

/// `[B, COLS, ROWS]` tiles → the difference (first − second) and the mean of each unit's two
/// tiles, `[B, UNITS]` each.
fn unit_pairs(g: &mut GraphBuilder, t: &Value) -> (Value, Value) {
    let x = g.reshape(t, &[-1, TILE_UNIT_COLS as i64, 2, TILE_ROWS as i64]);
    let parts = g.split(&x, &[1, 1], 2);
    let diff = g.sub(&parts[0], &parts[1]);
    let sum = g.add(&parts[0], &parts[1]);
    let mean = g.scale(&sum, 0.5);
    let units = [-1, TILE_UNITS as i64];
    (g.reshape(&diff, &units), g.reshape(&mean, &units))
}

/// The constants of [`Params`] the embedder uses, as initialisers.
struct EmbedConstants {
    alpha: Value,
    level_exponent: Value,
    shape_lo: Value,
    shape_hi: Value,
    mark_to_host_db: Value,
    ln_scale_lo: Value,
    ln_scale_hi: Value,
    cap: Value,
    neg_cap: Value,
    floor_db: Value,
}

impl EmbedConstants {
    fn new(g: &mut GraphBuilder, p: &Params) -> Result<Self> {
        let cap = constant(g, "cell_cap", p.cell_cap)?;
        let neg_cap = g.neg(&cap);
        Ok(EmbedConstants {
            alpha: constant(g, "alpha", p.alpha)?,
            level_exponent: constant(g, "level_exponent", p.level_exponent)?,
            shape_lo: constant(g, "level_shape_min", p.level_shape_clip.0)?,
            shape_hi: constant(g, "level_shape_max", p.level_shape_clip.1)?,
            mark_to_host_db: constant(g, "mark_to_host_db", p.mark_to_host_db)?,
            ln_scale_lo: constant(g, "ln_scale_min", p.scale_range.0.ln())?,
            ln_scale_hi: constant(g, "ln_scale_max", p.scale_range.1.ln())?,
            cap,
            neg_cap,
            floor_db: constant(g, "floor_db", p.floor_db)?,
        })
    }
}

/// `magnitude` `[B, BINS, FRAMES_PER_BLOCK]`, `pattern` `[B, UNIT_COLS, ROWS]` → `mask`
/// (`tile::embed::tile_gains` and `tile::embed::mask`).
pub fn embedder(params: &Params) -> Result<Model> {
    let ct = contract::EMBEDDER;
    let mut g = GraphBuilder::new("stemmark_tile_embedder");
    let mag = input(&mut g, &ct, 0)?;
    let pattern = input(&mut g, &ct, 1)?;
    let k = EmbedConstants::new(&mut g, params)?;

    // Level shaping around the block's median tile level.
    let t = tile_levels(&mut g, &mag, &k.floor_db);
    let flat = g.reshape(&t, &[-1, TILES as i64]);
    let med = median(&mut g, &flat, 1, TILES);
    let med = g.unsqueeze(&med, &[2]);
    let rel = g.sub(&t, &med);
    let e = g.mul(&rel, &k.level_exponent);
    let e = g.exp(&e);
    let shape = clip(&mut g, &e, &k.shape_lo, &k.shape_hi);

    // The unit's sign on its first tile, the opposite on its second.
    let p = g.unsqueeze(&pattern, &[2]);
    let np = g.neg(&p);
    let p = g.concat(&[&p, &np], 2);
    let p = g.reshape(&p, &[-1, TILE_COLS as i64, TILE_ROWS as i64]);
    let gain = g.mul(&shape, &p);
    let gain = g.mul(&gain, &k.alpha);

    // Power control: bisection on ln a for Σ P (e^{clip(a G)} − 1)² = block energy − dB.
    let b = band(&mut g, &mag);
    let b2 = g.mul(&b, &b);
    let tile_power = per_tile(&mut g, &b2, false);
    let m2 = g.mul(&mag, &mag);
    let energy = g.reduce_sum(&m2, &[1, 2], true);
    let energy = g.offset(&energy, 1e-20);
    let ratio = g.scale(&k.mark_to_host_db, -(std::f64::consts::LN_10 / 10.0) as f32);
    let ratio = g.exp(&ratio);
    let goal = g.mul(&energy, &ratio);
    let (mut lo, mut hi) = (k.ln_scale_lo.clone(), k.ln_scale_hi.clone());
    for _ in 0..params.scale_steps {
        let sum = g.add(&lo, &hi);
        let mid = g.scale(&sum, 0.5);
        let a = g.exp(&mid);
        let x = g.mul(&gain, &a);
        let x = clip(&mut g, &x, &k.neg_cap, &k.cap);
        let x = g.exp(&x);
        let x = g.offset(&x, -1.0);
        let x2 = g.mul(&x, &x);
        let w = g.mul(&tile_power, &x2);
        let mark = g.reduce_sum(&w, &[1, 2], true);
        let over = g.op("Greater", &[&mark, &goal], []);
        hi = g.op("Where", &[&over, &mid, &hi], []);
        lo = g.op("Where", &[&over, &lo, &mid], []);
    }
    let a = g.exp(&lo);
    let gains = g.mul(&gain, &a);
    let gains = clip(&mut g, &gains, &k.neg_cap, &k.cap);
    let tile_mask = g.exp(&gains);

    // Every tile's gain on its cells, 1 outside the band.
    let m = g.transpose(&tile_mask, &[0, 2, 1]);
    let m = g.reshape(&m, &[-1, TILE_ROWS as i64, 1, TILE_COLS as i64, 1]);
    // Expand copies each tile's gain to its cells (a broadcast Mul by ones costs 0.7 ms here).
    let cells = g.ints(&[1, 1, TILE_BINS as i64, 1, TILE_FRAMES as i64]);
    let m = g.op("Expand", &[&m, &cells], []);
    let m = g.reshape(
        &m,
        &[
            -1,
            (TILE_ROWS * TILE_BINS) as i64,
            (TILE_COLS * TILE_FRAMES) as i64,
        ],
    );
    let pads = g.ints(&[
        0,
        TILE_BAND.start as i64,
        0,
        0,
        (BINS - TILE_BAND.end) as i64,
        0,
    ]);
    let one = g.scalar(1.0);
    let mask = g.op(
        "Pad",
        &[&m, &pads, &one],
        [("mode", Attr::from("constant"))],
    );
    output(&mut g, &ct, 0, &mask)?;
    Ok(g.finish()?
        .with_doc("Stemmark tile channel embedder (contract v2): one block's mask."))
}

/// `magnitude` `[B, BINS, FRAMES_PER_BLOCK]` → `unit_values` and `unit_cells` `[B, UNITS]`
/// (`tile::BlockFeature`); the keyed sums are Rust's (`BlockFeature::cell_sums`), so one run serves
/// every key and every grid shift.
pub fn detector(params: &Params) -> Result<Model> {
    let ct = contract::DETECTOR;
    let mut g = GraphBuilder::new("stemmark_tile_detector");
    let mag = input(&mut g, &ct, 0)?;
    let floor_db = constant(&mut g, "floor_db", params.floor_db)?;
    let level_weight = constant(&mut g, "level_weight", params.level_weight)?;
    let weight_lo = constant(&mut g, "level_weight_min", params.level_weight_clip.0)?;
    let weight_hi = constant(&mut g, "level_weight_max", params.level_weight_clip.1)?;
    let limit = constant(&mut g, "detector_clip", params.detector_clip)?;
    let neg_limit = g.neg(&limit);

    // H = T − ½ (left + right), the edge columns replicated.
    let t = tile_levels(&mut g, &mag, &floor_db);
    let cols = TILE_COLS as i64;
    let first = g.slice(&t, &[0], &[1], &[1], None);
    let last = g.slice(&t, &[cols - 1], &[cols], &[1], None);
    let but_last = g.slice(&t, &[0], &[cols - 1], &[1], None);
    let but_first = g.slice(&t, &[1], &[cols], &[1], None);
    let left = g.concat(&[&first, &but_last], 1);
    let right = g.concat(&[&but_first, &last], 1);
    let sides = g.add(&left, &right);
    let sides = g.scale(&sides, 0.5);
    let h = g.sub(&t, &sides);

    // Per row: robust noise scale of H, level relative to the row's median.
    let ah = g.abs(&h);
    let mad = median(&mut g, &ah, 1, TILE_COLS);
    let mad = g.scale(&mad, 1.4826);
    let mad = g.offset(&mad, 1e-6);
    let row_med = median(&mut g, &t, 1, TILE_COLS);
    let rel = g.sub(&t, &row_med);
    let w = g.mul(&rel, &level_weight);
    let w = g.exp(&w);
    let w = clip(&mut g, &w, &weight_lo, &weight_hi);
    let u = g.div(&h, &mad);
    let u = g.mul(&u, &w);
    let u = clip(&mut g, &u, &neg_limit, &limit);
    let (diff, _) = unit_pairs(&mut g, &u);
    let (_, level) = unit_pairs(&mut g, &rel);

    // Cell index: band group (fixed per unit) × level classes + the number of edges the unit's
    // level reaches (small integers: exact in f32).
    let mut cell = g.init_f32(
        "tile.unit_group_base",
        &(0..TILE_UNITS)
            .map(|u| {
                ((u % TILE_ROWS) * CELL_BAND_GROUPS / TILE_ROWS * (CELL_LEVEL_EDGES.len() + 1))
                    as f32
            })
            .collect::<Vec<_>>(),
        &[1, TILE_UNITS],
    )?;
    for edge in CELL_LEVEL_EDGES {
        let e = g.scalar(edge as f32);
        let ge = g.op("GreaterOrEqual", &[&level, &e], []);
        let ge = g.op("Cast", &[&ge], [("to", Attr::Int(1))]);
        cell = g.add(&cell, &ge);
    }
    output(&mut g, &ct, 0, &diff)?;
    output(&mut g, &ct, 1, &cell)?;
    Ok(g.finish()?.with_doc(
        "Stemmark tile channel detector (contract v2): one block's key-independent unit feature.",
    ))
}

#[cfg(test)]
mod tests {
    use ndarray::{Array3, Axis, s};
    use stemmark_models::decision::{Calibration, GridIndex, Verdict};
    use stemmark_models::keys::Key;
    use stemmark_models::payload;
    use stemmark_models::runtime::Provider;
    use stemmark_models::spec::{BLOCK, CELLS, FRAMES_PER_BLOCK, MESSAGE_BITS};
    use stemmark_models::stft::Stft;
    use stemmark_models::tile::{
        BlockFeature, CellSums, Patterns, TileDetectorModel, TileEmbedderModel, block_logits,
        embed, reference, testsignal, window,
    };

    use super::*;

    /// Three blocks: any three consecutive blocks determine the payload code's word.
    const BLOCKS: usize = 3;

    fn hosts() -> Vec<(&'static str, Vec<f32>)> {
        let secs = (BLOCKS * BLOCK) as f64 / 44_100.0;
        vec![
            ("music", testsignal::music(secs, 31)),
            ("speech", testsignal::speech(secs, 32)),
        ]
    }

    /// Blocks `[BLOCKS, BINS, FRAMES]` of `x`'s magnitude: from the whole signal's STFT (what
    /// the embedder sees) or each block's own (what the detector sees).
    fn magnitudes(x: &[f32], own: bool) -> Array3<f32> {
        let mut stft = Stft::new();
        let whole = stft.forward(x);
        let mut out = Array3::zeros((BLOCKS, BINS, FRAMES_PER_BLOCK));
        for b in 0..BLOCKS {
            let m = if own {
                stft.forward(&x[b * BLOCK..(b + 1) * BLOCK])
                    .slice_frames(0..FRAMES_PER_BLOCK)
                    .unwrap()
                    .magnitude()
            } else {
                whole
                    .slice_frames(b * FRAMES_PER_BLOCK..(b + 1) * FRAMES_PER_BLOCK)
                    .unwrap()
                    .magnitude()
            };
            out.index_axis_mut(Axis(0), b).assign(&m);
        }
        out
    }

    /// Per-bit sums over cells on the noise's scale, and how many cells differ by more than 0.02
    /// of it: the f32 graph and the f64 reference may put a unit whose level sits within
    /// rounding of a level edge into neighbouring classes (see the models' prototype parity).
    fn compare(name: &str, ours: &[CellSums], want: &[CellSums]) {
        let (mut s_tot, mut v_tot, mut moved, mut cells) = (0.0f64, 0.0f64, 0, 0);
        for (o, w) in ours.iter().zip(want) {
            for bit in 0..MESSAGE_BITS {
                let vt: f64 = w.v[bit].iter().sum();
                let (so, st): (f64, f64) = (o.s[bit].iter().sum(), w.s[bit].iter().sum());
                s_tot = s_tot.max((so - st).abs() / vt.sqrt());
                v_tot = v_tot.max((o.v[bit].iter().sum::<f64>() / vt - 1.0).abs());
                for e in 0..CELLS {
                    let off = ((o.s[bit][e] - w.s[bit][e]).abs() / w.v[bit][e].sqrt())
                        .max((o.v[bit][e] / w.v[bit][e] - 1.0).abs());
                    moved += usize::from(off > 0.02);
                    cells += 1;
                }
            }
        }
        println!(
            "{name}: S totals {s_tot:.1e}, V totals {v_tot:.1e}, {moved} of {cells} cells differ"
        );
        assert!(
            s_tot < 1e-3,
            "{name}: per-bit S differ by {s_tot} of their noise"
        );
        assert!(v_tot < 1e-2, "{name}: per-bit V differ by {v_tot}");
        assert!(
            moved * 100 <= cells,
            "{name}: {moved} of {cells} cells differ"
        );
    }

    #[test]
    fn tile_models_match_the_rust_reference() {
        stemmark_models::runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
        let params = Params::default();
        let dir = tempfile::tempdir().unwrap();
        write_tile_models(dir.path(), &params).unwrap();
        let mut emb =
            TileEmbedderModel::open(&dir.path().join("embedder.onnx"), Provider::Cpu, 1).unwrap();
        let mut det =
            TileDetectorModel::open(&dir.path().join("detector.onnx"), Provider::Cpu, 1).unwrap();
        let key = Key::from_bytes([0x3c; 16], "onnx parity");
        let patterns = Patterns::from_key(&key);
        let word = payload::encode(0x5a_c3_0f, &key).unwrap();
        // Grid blocks 7–9: other scramble rows than block 0's.
        let blocks = [7i64, 8, 9];
        let messages: Vec<[f32; MESSAGE_BITS]> = blocks
            .iter()
            .map(|&k| payload::to_bipolar(payload::block_word(word, &key, k)))
            .collect();
        for (name, host) in hosts() {
            // Embedder: the same ln gain per cell, up to one bisection step of the power control
            // where f32 and f64 land on either side of the goal (a step is 0.27 % of the scale).
            let mag = magnitudes(&host, false);
            let masks = emb
                .masks(mag.view(), &patterns, &messages, &blocks)
                .unwrap();
            let mut worst = 0.0f64;
            for b in 0..BLOCKS {
                let g = embed::tile_gains(
                    mag.index_axis(Axis(0), b),
                    &messages[b],
                    &patterns,
                    blocks[b],
                    &params,
                )
                .unwrap();
                let want = embed::mask(&g);
                let got = masks.index_axis(Axis(0), b);
                for (x, y) in got.iter().zip(&want) {
                    worst = worst.max(((*x as f64).ln() - (*y as f64).ln()).abs());
                }
                // Exact by design: Pad writes the constant 1.
                let (below, above) = (
                    got.slice(s![..TILE_BAND.start, ..]),
                    got.slice(s![TILE_BAND.end.., ..]),
                );
                assert!(
                    below.iter().chain(&above).all(|&m| m == 1.0),
                    "{name}: the mask is 1 outside the band"
                );
            }
            println!("{name}: ln mask differs by at most {worst:.1e}");
            assert!(worst < 1e-3, "{name}: ln mask differs by {worst}");

            // Detector, on the host marked by the graph.
            let mut spec = Stft::new().forward(&host);
            for b in 0..BLOCKS {
                spec.apply_mask_at(b * FRAMES_PER_BLOCK, masks.index_axis(Axis(0), b))
                    .unwrap();
            }
            let marked = Stft::new().inverse(&spec, host.len());
            let features = det.features(magnitudes(&marked, true).view()).unwrap();
            let ours: Vec<CellSums> = features
                .iter()
                .zip(blocks)
                .map(|(f, k)| f.cell_sums(&patterns, k))
                .collect();
            let want: Vec<CellSums> = reference::block_features(&marked, &params)
                .unwrap()
                .iter()
                .zip(blocks)
                .map(|(f, k)| f.cell_sums(&patterns, k))
                .collect();
            compare(name, &ours, &want);
            // The whole-signal paths: the model's marked audio is the reference's up to the
            // masks' f32 rounding, and its reading finds the payload.
            let by_model = emb
                .embed(std::slice::from_ref(&host), &key, word)
                .unwrap()
                .remove(0);
            let by_reference = reference::embed(std::slice::from_ref(&host), &key, word, &params)
                .unwrap()
                .remove(0);
            let peak = host.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = by_model
                .iter()
                .zip(&by_reference)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff < 1e-5 * peak,
                "{name}: marked audio differs by {diff} (peak {peak})"
            );
            let features = det.features_of(&by_model).unwrap();
            let read: Vec<(i64, &BlockFeature)> = features
                .iter()
                .enumerate()
                .map(|(i, f)| (i as i64, f))
                .collect();
            let d = window::decide(
                &read,
                &patterns,
                &key,
                &Calibration::default(),
                GridIndex::Known,
                &params,
            );
            assert_eq!(
                (d.verdict, d.payload),
                (Verdict::Found, Some(0x5a_c3_0f)),
                "{name}"
            );
            // Every bit reads back through the models.
            for (b, z) in block_logits(&ours, &params).iter().enumerate() {
                let errors = z
                    .iter()
                    .zip(messages[b])
                    .filter(|(z, m)| **z * *m as f64 <= 0.0)
                    .count();
                assert_eq!(errors, 0, "{name} block {b}: {errors} bit errors");
            }
        }
    }

    /// The shipped embedder and detector are exactly what this writer makes from the shipped
    /// manifest's constants, so a change to the graphs cannot leave `models/` behind (rewrite
    /// with `stemmark export --channel-only -o models/`, then the baseline's sha256 lines).
    #[test]
    fn shipped_channel_models_are_this_writers() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("models");
        let manifest = stemmark_models::manifest::Manifest::load(&shipped).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_tile_models(dir.path(), &manifest.channel).unwrap();
        for file in [contract::EMBEDDER.file, contract::DETECTOR.file] {
            let ours = std::fs::read(dir.path().join(file)).unwrap();
            let theirs = std::fs::read(shipped.join(file)).unwrap();
            assert!(ours == theirs, "models/{file} is not what the writer makes now: run `stemmark export --channel-only -o models/`");
        }
    }
}
