//! `stemmark bench`: speed of the DSP front end and (when models are present) the models, as
//! multiples of real time, measured side by side in one run; then the payload code against
//! repetition on a synthetic channel (the weakest mark each still reads).

use std::time::Instant;

use anyhow::Result;
use stemmark_models::detect_stream::DetectStream;
use stemmark_models::detector::Detector;
use stemmark_models::embedder::Embedder;
use stemmark_models::keys::Key;
use stemmark_models::separator::Separator;
use stemmark_models::spec::{BLOCK, SAMPLE_RATE};

use super::ModelOpts;

/// Prints the tables as Markdown, or with `json` as one JSON document: `{"tables": [...]}`, each
/// table a list of rows keyed by its column names (notes under a table become `"notes"`).
pub fn run(opts: &ModelOpts, what: Option<&str>, quick: bool, json: bool) -> Result<()> {
    let mut tables = Vec::new();
    match what {
        None => {}
        #[cfg(feature = "train")]
        Some("train") => {
            anyhow::ensure!(!quick, "--quick shortens the DSP and model tables; `bench train` has no quick form");
            tables.push(super::train::bench_table()?);
            return print(&tables, json);
        }
        #[cfg(not(feature = "train"))]
        Some("train") => anyhow::bail!("`bench train` needs a build with --features train (it links libtorch)"),
        Some(other) => anyhow::bail!("unknown benchmark {other:?} (nothing, or `train`)"),
    }
    let size = if quick { crate::bench::Size::QUICK } else { crate::bench::Size::FULL };
    tables.push(crate::bench::dsp_table(size)?);
    match stemmark_models::runtime::init(opts.ort_lib.as_deref(), &[]) {
        Ok(_) => tables.push(crate::bench::tile_table(size)?),
        Err(e) => tables.push(format!("(tile channel rows skipped: {e})")),
    }
    match opts.prepare() {
        Ok(dir) => tables.push(model_table(&dir, opts, size.model_seconds)?),
        Err(e) => tables.push(format!("(model rows skipped: {e:#})")),
    }
    tables.push(crate::bench::payload_code::table(size));
    if quick {
        tables.iter_mut().for_each(|t| t.push_str("\n(--quick: a few seconds timed once; these timings are not worth quoting)\n"));
    }
    print(&tables, json)
}

fn print(tables: &[String], json: bool) -> Result<()> {
    if json {
        let doc = serde_json::json!({ "tables": tables.iter().map(|t| markdown_table_json(t)).collect::<Vec<_>>() });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        tables.iter().for_each(|t| println!("{t}"));
    }
    Ok(())
}

/// A Markdown table (as the bench functions write them) as JSON: `{"rows": [{column: cell}], "notes":
/// [lines that are not table rows]}`. Cells that parse as numbers become numbers.
pub fn markdown_table_json(md: &str) -> serde_json::Value {
    let cells = |line: &str| line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let mut header: Option<Vec<String>> = None;
    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    for line in md.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !line.starts_with('|') {
            notes.push(serde_json::Value::from(line));
        } else if header.is_none() {
            header = Some(cells(line));
        } else if !line.contains("---") {
            let row: serde_json::Map<String, serde_json::Value> = header
                .iter()
                .flatten()
                .zip(cells(line))
                .map(|(h, c)| {
                    let v = c.parse::<f64>().map_or_else(|_| serde_json::Value::from(c.clone()), serde_json::Value::from);
                    (h.clone(), v)
                })
                .collect();
            rows.push(serde_json::Value::Object(row));
        }
    }
    serde_json::json!({ "rows": rows, "notes": notes })
}

fn model_table(dir: &std::path::Path, opts: &ModelOpts, seconds: usize) -> Result<String> {
    let n = seconds * SAMPLE_RATE as usize;
    // A deterministic broadband test signal: sum of detuned sines plus a little noise.
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / SAMPLE_RATE as f32;
            0.2 * (2.0 * std::f32::consts::PI * 220.0 * t).sin()
                + 0.1 * (2.0 * std::f32::consts::PI * 1333.0 * t).sin()
                + 0.01 * ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
        })
        .collect();
    let stereo = vec![x.clone(), x.clone()];
    let key = Key::from_bytes([1; 16], "bench");
    let mut rows = Vec::new();
    let mut emb = Embedder::open(dir, opts.provider)?;
    let t = Instant::now();
    emb.embed(&stereo, &key, 1, 1.0, &mut |_, _| {})?;
    rows.push(("embed (stereo, blocks + STFT)", t.elapsed().as_secs_f64()));
    let mut det = Detector::open(dir, opts.provider)?;
    let t = Instant::now();
    det.detect(&x, std::slice::from_ref(&key), stemmark_models::detector::Alignment::Fixed(0))?;
    rows.push(("detect, one key, known grid", t.elapsed().as_secs_f64()));
    let mut sep = Separator::open(dir, opts.provider)?;
    let t = Instant::now();
    sep.separate(&stereo, &mut |_, _| {})?;
    rows.push(("separate (stereo)", t.elapsed().as_secs_f64()));
    // Stemmark Detect's analysis: every 2 s block separated with 1 s of context each side, then
    // the mix and both stems read with a 4-key ring, at 1 and 2 ONNX Runtime threads; the
    // separator alone on the same windows shows what dominates.
    let ring: Vec<Key> = (0..4u8).map(|i| Key::from_bytes([i + 1; 16], format!("k{i}"))).collect();
    let chunks: Vec<&[f32]> = vec![&x, &x];
    for threads in [1, 2] {
        let mut det = Detector::open_with_threads(dir, opts.provider, threads)?;
        let mut sep = Separator::open_with_threads(dir, opts.provider, threads)?;
        let mut stream = DetectStream::new(2, ring.clone(), det.calibration(), *det.channel(), true, 0)?;
        let t = Instant::now();
        stream.push(&mut det, Some(&mut sep), &chunks)?;
        stream.finish(&mut det, Some(&mut sep))?;
        rows.push((
            if threads == 1 { "Detect plugin analysis, 2 stems × 4 keys, 1 thread" } else { "Detect plugin analysis, 2 stems × 4 keys, 2 threads" },
            t.elapsed().as_secs_f64(),
        ));
    }
    let mut sep = Separator::open_with_threads(dir, opts.provider, 1)?;
    let window = ndarray::Array3::<f32>::from_shape_fn((1, 2, 2 * BLOCK), |(_, _, i)| x[i]);
    let t = Instant::now();
    for _ in 0..n / BLOCK {
        sep.run(&window)?;
    }
    rows.push(("  of which: separator on 4 s windows, 1 thread", t.elapsed().as_secs_f64()));
    let mut out = format!(
        "| model task ({} provider, models in {}) | audio s | wall s | × real time |\n|---|---:|---:|---:|\n",
        opts.provider,
        dir.display()
    );
    for (name, secs) in rows {
        out += &format!("| {name} | {seconds} | {secs:.3} | {:.1} |\n", seconds as f64 / secs);
    }
    Ok(out)
}
