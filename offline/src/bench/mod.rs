//! Tables for `stemmark bench`: STFT/iSTFT and resampling on 60 s of stereo audio, the payload
//! code against repetition on a synthetic channel ([`payload_code`]), and the tile channel's
//! reference and models.
//! Meaningful only from a release build.

pub mod payload_code;

use std::time::Instant;

use stemmark_models::resample::{StreamResampler, resample_planar};
use stemmark_models::spec::SAMPLE_RATE;
use stemmark_models::stft::{Complex32, Stft, StreamingIstft, StreamingStft};

/// How much audio every task processes and how often it is timed (the median is reported).
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Seconds of audio per DSP task.
    pub seconds: usize,
    pub repeats: usize,
    /// Seconds of audio the model rows process (timed once).
    pub model_seconds: usize,
}

impl Size {
    /// What `stemmark bench` measures: 60 s of audio, median of 5; 20 s through the models.
    pub const FULL: Size = Size { seconds: 60, repeats: 5, model_seconds: 20 };
    /// `stemmark bench --quick`: checks that every task runs; its timings are not worth quoting.
    pub const QUICK: Size = Size { seconds: 2, repeats: 1, model_seconds: 4 };
}
/// Host buffer sizes cycled through by the streaming tasks (hosts change size between calls).
const HOST_CHUNKS: [usize; 8] = [512, 64, 1024, 333, 1, 0, 700, 128];
/// Host rates whose round trip through the model rate is measured.
const HOST_RATES: [u32; 5] = [48_000, 96_000, 192_000, 22_050, 8_000];

/// Deterministic test signal: a few partials plus white noise, in [-1, 1].
fn signal(len: usize, rate: u32, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            let t = n as f32 / rate as f32;
            let tone = (std::f32::consts::TAU * 440.0 * t).sin()
                + 0.5 * (std::f32::consts::TAU * 3150.0 * t).sin();
            0.4 * tone + 0.1 * noise
        })
        .collect()
}

fn stereo(rate: u32, seconds: usize) -> [Vec<f32>; 2] {
    let len = seconds * rate as usize;
    [signal(len, rate, 1), signal(len, rate, 2)]
}

/// Median wall time of `repeats` runs of `f`.
fn median_secs(repeats: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn stft_whole(x: &[Vec<f32>; 2]) -> anyhow::Result<()> {
    let mut stft = Stft::new();
    for ch in x {
        let s = stft.forward(ch);
        std::hint::black_box(stft.inverse(&s, ch.len()));
    }
    Ok(())
}

fn stft_streaming(x: &[Vec<f32>; 2]) -> anyhow::Result<()> {
    for ch in x {
        let (mut ana, mut syn) = (StreamingStft::new(), StreamingIstft::new());
        let mut out = Vec::with_capacity(ch.len() + 2048);
        let mut result = Ok(());
        let mut feed = |j: usize, bins: &[Complex32]| {
            if result.is_ok() {
                result = syn.push_frame(j, bins, |_, s| out.extend_from_slice(s));
            }
        };
        let mut pos = 0;
        for &n in HOST_CHUNKS.iter().cycle() {
            if pos == ch.len() {
                break;
            }
            let n = n.min(ch.len() - pos);
            ana.push(&ch[pos..pos + n], &mut feed);
            pos += n;
        }
        ana.flush(&mut feed);
        result?;
        syn.flush(|_, s| out.extend_from_slice(s));
        std::hint::black_box(&out);
    }
    Ok(())
}

fn resample_whole(x: &[Vec<f32>; 2], host: u32) -> anyhow::Result<()> {
    let model = resample_planar(&x[..], host, SAMPLE_RATE)?;
    std::hint::black_box(resample_planar(&model, SAMPLE_RATE, host)?);
    Ok(())
}

/// Host → model → host through two streaming resamplers, in host-sized pieces.
fn resample_streaming(x: &[Vec<f32>; 2], host: u32) -> anyhow::Result<()> {
    let max_chunk = *HOST_CHUNKS.iter().max().unwrap_or(&1);
    let mut down = StreamResampler::new(host, SAMPLE_RATE, 2)?;
    let mut up = StreamResampler::new(SAMPLE_RATE, host, 2)?;
    let mid_len = down.max_output_len(max_chunk).max(down.max_flush_len());
    let out_len = up.max_output_len(mid_len).max(up.max_flush_len());
    let mut mid = vec![vec![0.0f32; mid_len]; 2];
    let mut out = vec![vec![0.0f32; out_len]; 2];
    let mut total = 0usize;
    let mut pos = 0;
    for &n in HOST_CHUNKS.iter().cycle() {
        if pos == x[0].len() {
            break;
        }
        let n = n.min(x[0].len() - pos);
        let m = down.push(&[&x[0][pos..pos + n], &x[1][pos..pos + n]], &mut mid)?;
        total += up.push(&[&mid[0][..m], &mid[1][..m]], &mut out)?;
        pos += n;
    }
    let m = down.flush(&mut mid)?;
    total += up.push(&[&mid[0][..m], &mid[1][..m]], &mut out)?;
    total += up.flush(&mut out)?;
    std::hint::black_box((total, &out));
    Ok(())
}

/// Measures the DSP front end and returns a Markdown table:
/// task | audio seconds | wall seconds | × real time.
pub fn dsp_table(size: Size) -> anyhow::Result<String> {
    let mut rows: Vec<(String, f64)> = Vec::new();
    let model = stereo(SAMPLE_RATE, size.seconds);
    rows.push((
        "STFT + iSTFT, whole buffer, stereo 44.1 kHz".into(),
        median_secs(size.repeats, || stft_whole(&model))?,
    ));
    rows.push((
        "STFT → iSTFT, streaming (host-sized pushes), stereo 44.1 kHz".into(),
        median_secs(size.repeats, || stft_streaming(&model))?,
    ));
    drop(model);
    for host in HOST_RATES {
        let x = stereo(host, size.seconds);
        let k = host as f64 / 1000.0;
        rows.push((
            format!("resample {k} k → 44.1 k → {k} k, whole buffer, stereo"),
            median_secs(size.repeats, || resample_whole(&x, host))?,
        ));
        rows.push((
            format!("resample {k} k → 44.1 k → {k} k, streaming (host-sized pushes), stereo"),
            median_secs(size.repeats, || resample_streaming(&x, host))?,
        ));
    }
    let mut table = String::from(
        "| task | audio seconds | wall seconds | × real time |\n|---|---:|---:|---:|\n",
    );
    for (task, wall) in rows {
        let audio = size.seconds as f64;
        table.push_str(&format!(
            "| {task} | {audio:.0} | {wall:.4} | {:.0} |\n",
            audio / wall
        ));
    }
    if cfg!(debug_assertions) {
        table.push_str("\n(debug build: timings are not representative; use --release)\n");
    }
    Ok(table)
}

/// `readings` windows of `blocks` blocks of cell sums: a mark of unequal strength per cell under
/// unit noise (the running decision's cost does not depend on the audio).
fn running_sessions(blocks: usize, readings: usize) -> Vec<Vec<stemmark_models::tile::window::WindowBlock>> {
    use rand::{Rng, SeedableRng};
    use stemmark_models::spec::{CELLS, MESSAGE_BITS};
    use stemmark_models::tile::CellSums;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    (0..readings)
        .map(|_| {
            (0..blocks as i64)
                .map(|index| {
                    let mut sums = CellSums { s: [[0.0; CELLS]; MESSAGE_BITS], v: [[1.0; CELLS]; MESSAGE_BITS] };
                    for row in sums.s.iter_mut() {
                        let bit = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                        row.iter_mut().enumerate().for_each(|(e, x)| *x = bit * 0.05 * (e % 6) as f64 + rng.random_range(-1.7..1.7));
                    }
                    stemmark_models::tile::window::WindowBlock { index, sums }
                })
                .collect()
        })
        .collect()
}

/// The tile channel (contract v2) on `size.model_seconds` of synthetic stereo music, one thread:
/// the Rust reference and the ONNX models built from the designed constants, side by side.
/// Needs ONNX Runtime loaded. Markdown: task | audio seconds | wall seconds | × real time.
pub fn tile_table(size: Size) -> anyhow::Result<String> {
    use stemmark_models::decision::{Calibration, GridIndex};
    use stemmark_models::keys::Key;
    use stemmark_models::runtime::Provider;
    use stemmark_models::tile::window;
    use stemmark_models::tile::{
        BlockFeature, Params, Patterns, TileDetectorModel, TileEmbedderModel, reference, testsignal,
    };

    let params = Params::default();
    let seconds = size.model_seconds;
    let music = testsignal::music(seconds as f64, 7);
    let stereo = vec![music.clone(), music.iter().map(|x| 0.8 * x).collect()];
    let keys: Vec<Key> = (0..4u8).map(|i| Key::from_bytes([i + 1; 16], format!("k{i}"))).collect();
    let word = stemmark_models::payload::encode(1, &keys[0])?;
    let dir = tempfile::tempdir()?;
    crate::onnx::tile::write_tile_models(dir.path(), &params)?;
    let mut emb = TileEmbedderModel::open(&dir.path().join("embedder.onnx"), Provider::Cpu, 1)?;
    let mut det = TileDetectorModel::open(&dir.path().join("detector.onnx"), Provider::Cpu, 1)?;
    let cal = Calibration::default();
    let once = |f: &mut dyn FnMut() -> anyhow::Result<()>| median_secs(size.repeats.min(3), f);

    let mut rows: Vec<(String, f64)> = Vec::new();
    rows.push((
        "tile embed, Rust reference, stereo".into(),
        once(&mut || {
            std::hint::black_box(reference::embed(&stereo, &keys[0], word, &params)?);
            Ok(())
        })?,
    ));
    let mut marked = Vec::new();
    rows.push((
        "tile embed, ONNX models, stereo".into(),
        once(&mut || {
            marked = emb.embed(&stereo, &keys[0], word)?;
            Ok(())
        })?,
    ));
    let mid = reference::mid(&marked);
    // Features once per reading (key-independent), then the keyed sums per key and shift.
    let decide_all = |features: &[BlockFeature], keys: &[Key], grid: GridIndex| {
        let blocks: Vec<(i64, &BlockFeature)> = features.iter().enumerate().map(|(b, f)| (b as i64, f)).collect();
        for key in keys {
            let p = Patterns::from_key(key);
            std::hint::black_box(window::decide(&blocks, &p, key, &cal, grid, &params));
        }
    };
    for (n, label) in [(1, "1 key"), (4, "4 keys")] {
        rows.push((
            format!("tile detect, Rust reference, {label}"),
            once(&mut || {
                decide_all(&reference::block_features(&mid, &params)?, &keys[..n], GridIndex::Known);
                Ok(())
            })?,
        ));
    }
    for (n, grid, label) in [
        (1, GridIndex::Known, "1 key"),
        (4, GridIndex::Known, "4 keys"),
        (1, GridIndex::Search, "1 key, 16 grid shifts searched"),
    ] {
        rows.push((
            format!("tile detect, ONNX models, {label}"),
            once(&mut || {
                decide_all(&det.features_of(&mid)?, &keys[..n], grid);
                Ok(())
            })?,
        ));
    }

    let mut rows: Vec<(String, f64, f64)> = rows.into_iter().map(|(t, w)| (t, seconds as f64, w)).collect();
    // Stemmark Detect's running decision after every block: 12 readings (mix + 2 stems × 4 keys)
    // over a 5 min session, re-weighed from scratch at each look vs kept between looks.
    // (--quick: 40 s and 2 readings, only to see that it runs.)
    let (blocks, readings) = if size.model_seconds >= 20 { (150, 12) } else { (20, 2) };
    let session = running_sessions(blocks, readings);
    let session_seconds = 2.0 * session[0].len() as f64;
    rows.push((
        format!("Detect running decision, {readings} readings, a look at {session_seconds} s, re-weighed from scratch"),
        2.0,
        once(&mut || {
            session.iter().for_each(|blocks| {
                std::hint::black_box(window::window_logits(blocks, &params));
            });
            Ok(())
        })?,
    ));
    rows.push((
        format!("Detect running decision, {readings} readings, a look after every block for {session_seconds} s, kept"),
        session_seconds,
        once(&mut || {
            for blocks in &session {
                let mut w = window::GrowingWindow::default();
                for b in blocks {
                    w.push(b.clone());
                    std::hint::black_box(w.logits(&params));
                }
            }
            Ok(())
        })?,
    ));

    let mut table = String::from(
        "| tile channel task (one thread) | audio seconds | wall seconds | × real time |\n|---|---:|---:|---:|\n",
    );
    for (task, audio, wall) in rows {
        table.push_str(&format!("| {task} | {audio} | {wall:.3} | {:.0} |\n", audio / wall));
    }
    if cfg!(debug_assertions) {
        table.push_str("\n(debug build: timings are not representative; use --release)\n");
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    /// `cargo test -p stemmark-offline --release --lib bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run in release"]
    fn print_dsp_table() {
        println!("{}", super::dsp_table(super::Size::FULL).unwrap());
    }

    #[test]
    fn tile_table_runs() {
        stemmark_models::runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
        let t = super::tile_table(super::Size::QUICK).unwrap();
        let rows = t.lines().filter(|l| l.starts_with("| tile embed") || l.starts_with("| tile detect"));
        assert_eq!(rows.count(), 7, "{t}");
        assert_eq!(t.lines().filter(|l| l.starts_with("| Detect running decision")).count(), 2, "{t}");
    }

    #[test]
    fn streaming_tasks_run_on_short_input() {
        let x = [
            super::signal(5000, 48_000, 1),
            super::signal(5000, 48_000, 2),
        ];
        super::resample_streaming(&x, 48_000).unwrap();
        super::resample_whole(&x, 48_000).unwrap();
        super::stft_streaming(&x).unwrap();
        super::stft_whole(&x).unwrap();
    }
}
