//! `stemmark bench`: speed of the DSP front end and (when models are present) the models, as
//! multiples of real time, measured side by side in one run.

use std::time::Instant;

use anyhow::Result;
use stemmark_models::detect_stream::DetectStream;
use stemmark_models::detector::Detector;
use stemmark_models::embedder::Embedder;
use stemmark_models::keys::Key;
use stemmark_models::separator::Separator;
use stemmark_models::spec::{BLOCK, SAMPLE_RATE};

use super::ModelOpts;

/// Seconds of audio the model rows process.
const MODEL_SECONDS: usize = 20;

pub fn run(opts: &ModelOpts, what: Option<&str>) -> Result<()> {
    match what {
        None => {}
        #[cfg(feature = "train")]
        Some("train") => {
            println!("{}", super::train::bench_table()?);
            return Ok(());
        }
        #[cfg(not(feature = "train"))]
        Some("train") => anyhow::bail!("`bench train` needs a build with --features train (it links libtorch)"),
        Some(other) => anyhow::bail!("unknown benchmark {other:?} (nothing, or `train`)"),
    }
    println!("{}", crate::bench::dsp_table()?);
    match opts.prepare() {
        Ok(dir) => println!("{}", model_table(&dir, opts)?),
        Err(e) => println!("(model rows skipped: {e:#})"),
    }
    Ok(())
}

fn model_table(dir: &std::path::Path, opts: &ModelOpts) -> Result<String> {
    let n = MODEL_SECONDS * SAMPLE_RATE as usize;
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
        let mut stream = DetectStream::new(2, ring.clone(), det.calibration(), true, 0)?;
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
        out += &format!("| {name} | {MODEL_SECONDS} | {secs:.3} | {:.1} |\n", MODEL_SECONDS as f64 / secs);
    }
    Ok(out)
}
