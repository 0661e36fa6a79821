//! Stemmark Embed loaded from its bundle by a real CLAP host (clack-host). The exactness tests
//! run on plumbing models (random weights, exact contracts, independent of what training ships);
//! one test runs the shipped trained models and decodes the plugin's output.
//!
//! Each host session runs in a child process (this test binary re-run with only `embed_child`
//! selected and a job file in `STEMMARK_EMBED_CHILD`), as in plugin_host.rs: a plugin that aborts
//! fails one test with a report, and nice-plug's logger writes to `NICE_LOG` from the start. The
//! child gets the plumbing models through `STEMMARK_MODELS`. Audio goes to and from the child
//! as raw little-endian f32 files; the reference (`Embedder::embed`, what `stemmark embed` runs)
//! is computed in the parent, so the two never share an ONNX Runtime.

#[path = "../src/clap_host.rs"]
mod clap_host;
#[path = "../../xtask/src/pytools.rs"]
mod pytools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use stemmark_models::embedder::Embedder;
use stemmark_models::keys::Key;
use stemmark_models::runtime::{self, Provider};
use stemmark_models::spec::{BLOCK, N_FFT};
use stemmark_offline::testkit;
use stemmark_tests::fixtures::{bundle, music_44k, read_raw, tail, workspace_root, write_raw};

const CHILD_ENV: &str = "STEMMARK_EMBED_CHILD";
const EMBED_ID: &str = "org.stemmark.embed";
const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
const PAYLOAD: u32 = 0x5a17e;

// --- audio fixtures ---

// --- running the child ---

struct Child {
    dir: tempfile::TempDir,
    models: PathBuf,
}

impl Child {
    fn new() -> Child {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        testkit::plumbing_model_dir(&models, 5).unwrap();
        Child { dir, models }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `job` (see [`embed_child`]) in a child host; returns its result JSON.
    fn run(&self, job: Value) -> Value {
        self.run_with_models(job, &self.models).0
    }

    /// [`Child::run`] with `STEMMARK_MODELS` pointing at `models`; also returns the plugin log.
    fn run_with_models(&self, job: Value, models: &Path) -> (Value, String) {
        let job_path = self.path("job.json");
        let result_path = self.path("result.json");
        let _ = std::fs::remove_file(&result_path);
        let mut job = job;
        job["result"] = json!(result_path);
        std::fs::write(&job_path, serde_json::to_vec_pretty(&job).unwrap()).unwrap();
        let log = self.path("nice-plug.log");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "embed_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &job_path)
            .env("NICE_LOG", &log)
            .env(stemmark_models::modelset::MODELS_ENV, models)
            .output()
            .expect("start the child host");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child host failed: {}\n--- output ---\n{text}\n--- plugin log ---\n{log}",
            out.status
        );
        println!(
            "--- child ---\n{text}\n--- plugin log (tail) ---\n{}",
            tail(&log, 2000)
        );
        (
            serde_json::from_slice(&std::fs::read(&result_path).unwrap()).unwrap(),
            log,
        )
    }
}

fn key() -> Key {
    Key::from_hex(KEY_HEX, "vocals").unwrap()
}

/// Plugin output, latency-aligned, against `Embedder::embed` at 44.1 kHz.
fn reference(models: &Path, input: &[Vec<f32>]) -> Vec<Vec<f32>> {
    reference_at(models, input, 0)
}

/// `Embedder::embed_at`: audio whose first sample starts grid block `first_block`.
fn reference_at(models: &Path, input: &[Vec<f32>], first_block: i64) -> Vec<Vec<f32>> {
    runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
    let mut emb = Embedder::open(models, Provider::Cpu).unwrap();
    emb.embed_at(input, &key(), PAYLOAD, 1.0, first_block, &mut |_, _| {})
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    a.iter()
        .zip(b)
        .enumerate()
        .fold((0.0, 0), |(m, at), (i, (x, y))| {
            let d = (x - y).abs();
            if d > m { (d, i) } else { (m, at) }
        })
}

/// The lag in `lo..=hi` at which `out` best matches `input` (normalised cross-correlation).
fn best_lag(input: &[f32], out: &[f32], lo: usize, hi: usize) -> usize {
    (lo..=hi)
        .max_by(|&a, &b| {
            let c = |lag: usize| -> f64 {
                let n = out.len().saturating_sub(lag).min(input.len());
                let (mut xy, mut yy) = (0.0f64, 1e-12f64);
                for i in 0..n {
                    xy += input[i] as f64 * out[i + lag] as f64;
                    yy += (out[i + lag] as f64).powi(2);
                }
                xy / yy.sqrt()
            };
            c(a).total_cmp(&c(b))
        })
        .unwrap()
}

// --- tests ---

#[test]
fn at_44k_latency_is_reported_exactly_and_output_equals_stemmark_embed() {
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let child = Child::new();
    let input = music_44k(30);
    write_raw(&child.path("in.raw"), &input);
    // An impulse in silence measures the delay directly.
    let mut click = vec![vec![0.0f32; 3 * 44_100]; 2];
    click[0][1000] = 0.8;
    click[1][1000] = 0.8;
    write_raw(&child.path("click.raw"), &click);
    let result = child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true,
        "sizes": {"seed": 7, "max": 4096},
        "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
        "jobs": [
            {"input": child.path("in.raw"), "output": child.path("out.raw")},
            {"input": child.path("click.raw"), "output": child.path("click_out.raw")},
        ],
    }));
    let latency = result["latency"].as_u64().unwrap() as usize;
    println!(
        "reported latency at 44.1 kHz: {latency} samples ({:.3} s)",
        latency as f64 / 44_100.0
    );
    assert!(latency > BLOCK && latency < BLOCK + 44_100 / 4, "{latency}");

    let click_out = read_raw(&child.path("click_out.raw"), 2);
    let peak = click_out[0]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap()
        .0;
    assert_eq!(peak - 1000, latency, "impulse came out at {peak}");

    let out = read_raw(&child.path("out.raw"), 2);
    let len = input[0].len();
    assert_eq!(out[0].len(), len + latency);
    assert!(out.iter().flatten().all(|x| x.is_finite()));
    assert!(
        out.iter().all(|c| c[..latency].iter().all(|&x| x == 0.0)),
        "output before the latency is not silent"
    );
    let lag = best_lag(&input[0], &out[0], latency - 3, latency + 3);
    assert_eq!(lag, latency, "cross-correlation peaks at {lag}");

    let reference = reference(&child.models, &input);
    // The last block's tail: `embed` ends the signal there, the plugin sees what follows.
    let check = len - N_FFT;
    for c in 0..2 {
        let (d, at) = max_abs_diff(&out[c][latency..latency + check], &reference[c][..check]);
        let mark = max_abs_diff(&reference[c][..check], &input[c][..check]).0;
        println!(
            "channel {c}: max |plugin − stemmark embed| = {d:.2e} at {at} (the mark itself peaks at {mark:.2e})"
        );
        assert!(
            d < 1e-4,
            "channel {c}: plugin differs from Embedder::embed by {d} at sample {at}"
        );
        assert!(mark > 1e-3, "the plumbing model left no mark ({mark})");
    }
    let blocks = result["jobs"][0]["blocks_marked"].as_u64().unwrap();
    assert!(blocks >= 15, "{blocks} blocks marked");
}

#[test]
fn at_48k_output_is_delayed_and_matches_the_file_path() {
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let child = Child::new();
    let source = music_44k(20);
    let in48 = stemmark_models::resample::resample_planar(&source, 44_100, 48_000).unwrap();
    write_raw(&child.path("in.raw"), &in48);
    let result = child.run(json!({
        "bundle": bundle, "rate": 48_000.0, "offline": true,
        "sizes": {"seed": 11, "max": 4096},
        "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
        "jobs": [{"input": child.path("in.raw"), "output": child.path("out.raw")}],
    }));
    let latency = result["latency"].as_u64().unwrap() as usize;
    println!(
        "reported latency at 48 kHz: {latency} samples ({:.3} s)",
        latency as f64 / 48_000.0
    );
    let out = read_raw(&child.path("out.raw"), 2);
    assert!(out.iter().flatten().all(|x| x.is_finite()));
    let lag = best_lag(&in48[0], &out[0], latency - 3, latency + 3);
    assert_eq!(lag, latency, "cross-correlation peaks at {lag}");

    // What `stemmark embed` does with the same 48 kHz file: the whole file to 44.1 kHz, embed,
    // back to 48 kHz. (Not the 44.1 kHz source marked and resampled once: the plugin marks the
    // source after a 44.1 → 48 → 44.1 kHz round trip, which is different audio to the embedder.)
    let file44 = stemmark_models::resample::resample_planar(&in48, 48_000, 44_100).unwrap();
    let ref48 = stemmark_models::resample::resample_planar(&reference(&child.models, &file44), 44_100, 48_000).unwrap();
    let len = in48[0].len();
    let (a, b) = (4_800, len - 4_800);
    for c in 0..2 {
        let plugin_mark: Vec<f32> = (a..b).map(|i| out[c][i + latency] - in48[c][i]).collect();
        let ref_mark: Vec<f32> = (a..b).map(|i| ref48[c][i] - in48[c][i]).collect();
        let err: f64 = plugin_mark
            .iter()
            .zip(&ref_mark)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum();
        let energy: f64 = ref_mark.iter().map(|y| (*y as f64).powi(2)).sum();
        let rel = (err / energy).sqrt();
        let (d, at) = max_abs_diff(&out[c][a + latency..b + latency], &ref48[c][a..b]);
        // Where they differ, 2 s (96 000 samples at 48 kHz) at a time: a seam or one block stands
        // out, rounding does not.
        let per_block: Vec<String> = plugin_mark
            .chunks(96_000)
            .zip(ref_mark.chunks(96_000))
            .map(|(p, r)| {
                let e: f64 = p.iter().zip(r).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let m: f64 = r.iter().map(|y| (*y as f64).powi(2)).sum();
                format!("{:.1e}", (e / m.max(1e-30)).sqrt())
            })
            .collect();
        println!(
            "channel {c}: 48 kHz plugin vs the file path: max diff {d:.2e} at {at}, mark error {rel:.2e} of the mark (per 2 s: {})",
            per_block.join(" ")
        );
        // Measured on the development machine: mark error 1.2e-5, max diff 1.5e-7 (rounding of the
        // resamplers' FFTs and ONNX Runtime's kernels); the bounds leave ~800× for other CPUs.
        let job = &result["jobs"][0];
        assert!(
            rel < 0.01,
            "channel {c}: the 48 kHz mark differs from the file path by {rel:.3} of its size (per 2 s: {}; job {job})",
            per_block.join(" ")
        );
        assert!(
            d < 1e-4,
            "channel {c}: the 48 kHz output differs from the file path by {d} at {at} (job {job})"
        );
    }
}

/// The shipped (trained) models in the plugin: its latency-compensated output, as a host bounces
/// it, goes through what `stemmark detect` runs (offset search, no separation: one stem).
#[test]
fn with_the_shipped_models_stemmark_detect_reads_the_payload_and_a_wrong_key_finds_nothing() {
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let shipped = workspace_root().join("models");
    let manifest = stemmark_models::manifest::Manifest::load(&shipped).unwrap();
    assert_eq!(manifest.kind, "trained", "models/ must hold the trained models");
    let child = Child::new();
    let input = music_44k(20);
    write_raw(&child.path("in.raw"), &input);
    let (result, _) = child.run_with_models(
        json!({
            "bundle": bundle, "rate": 44_100.0, "offline": true,
            "sizes": {"seed": 13, "max": 4096},
            "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
            "jobs": [{"input": child.path("in.raw"), "output": child.path("out.raw")}],
        }),
        &shipped,
    );
    let latency = result["latency"].as_u64().unwrap() as usize;
    let out = read_raw(&child.path("out.raw"), 2);
    let bounced: Vec<Vec<f32>> = out.iter().map(|c| c[latency..].to_vec()).collect();
    runtime::init(None, &[]).unwrap();
    let wrong = Key::from_hex("ffeeddccbbaa99887766554433221100", "other").unwrap();
    let report = stemmark_offline::cmd::detect::analyse(
        Path::new("bounce.wav"),
        &stemmark_offline::audio::Audio::new(44_100, bounced),
        &[key(), wrong],
        &shipped,
        Provider::Cpu,
        stemmark_models::detector::Alignment::Search,
        false,
        &mut |_| {},
        &mut |_, _| {},
    )
    .unwrap();
    let found: Vec<(String, u32)> = report.found.iter().map(|f| (f.key.clone(), f.payload)).collect();
    println!("found {found:?}");
    assert_eq!(found, [("vocals".to_string(), PAYLOAD)], "the right key and payload, nothing else");
}

#[test]
fn blocks_follow_the_transport_grid_across_a_seek() {
    // The transport starts at 1.3 s and jumps to 30.7 s (+123 samples) after 8 s of audio. Each
    // run must be marked exactly like `stemmark embed` marks a file that starts at the previous
    // block boundary with silence up to the position, with that block's index on the grid (its
    // mask): every stem and the master bus share the timeline grid.
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let child = Child::new();
    let input = music_44k(20);
    let seek = 8 * 44_100;
    let (pos_a, pos_b) = (57_330i64, 1_353_870 + 123);
    write_raw(&child.path("in.raw"), &input);
    let result = child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true,
        "sizes": {"seed": 5, "max": 2048},
        "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
        "timeline": [[0, pos_a], [seek, pos_b]],
        "jobs": [{"input": child.path("in.raw"), "output": child.path("out.raw")}],
    }));
    let latency = result["latency"].as_u64().unwrap() as usize;
    let out = read_raw(&child.path("out.raw"), 2);
    let on_grid = |segment: &[Vec<f32>], pos: i64| -> Vec<Vec<f32>> {
        let z = pos.rem_euclid(BLOCK as i64) as usize;
        let padded: Vec<Vec<f32>> = segment
            .iter()
            .map(|c| [vec![0.0; z], c.clone()].concat())
            .collect();
        reference_at(&child.models, &padded, pos.div_euclid(BLOCK as i64))
            .into_iter()
            .map(|c| c[z..].to_vec())
            .collect()
    };
    let a: Vec<Vec<f32>> = input.iter().map(|c| c[..seek].to_vec()).collect();
    let b: Vec<Vec<f32>> = input.iter().map(|c| c[seek..].to_vec()).collect();
    let (ref_a, ref_b) = (on_grid(&a, pos_a), on_grid(&b, pos_b));
    for c in 0..2 {
        // Before the seek: everything the old run finished.
        let n = seek - latency - N_FFT;
        let (d, at) = max_abs_diff(&out[c][latency..latency + n], &ref_a[c][..n]);
        println!("channel {c}: before the seek, max diff {d:.2e} at {at}");
        assert!(
            d < 1e-4,
            "channel {c}: before the seek the output differs by {d} at {at}"
        );
        // Right after the seek, for one latency: the delayed dry input, seamless.
        let dry = &out[c][seek..seek + latency];
        assert!(
            dry.iter()
                .zip(&input[c][seek - latency..seek])
                .all(|(x, y)| x == y),
            "channel {c}: not dry after the seek"
        );
        // Then the new run, on the grid of its new position.
        let n = b[c].len() - N_FFT;
        let (d, at) = max_abs_diff(&out[c][seek + latency..seek + latency + n], &ref_b[c][..n]);
        println!("channel {c}: after the seek, max diff {d:.2e} at {at}");
        assert!(
            d < 1e-4,
            "channel {c}: after the seek the output differs by {d} at {at}"
        );
    }
}

#[test]
fn strength_automation_takes_effect_without_clicks() {
    // Strength 1 → 0 at 10 s: before it the output is `stemmark embed`'s, from the next block
    // on it is unmarked (mask 1: the STFT round trip), and the switch replays the current block
    // rather than cutting, so nothing in between strays further from the input than a mark.
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let child = Child::new();
    let input = music_44k(20);
    let change = 10 * 44_100;
    write_raw(&child.path("in.raw"), &input);
    let result = child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true,
        "sizes": {"seed": 9, "max": 1024},
        "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
        "automation": [[change, "strength", 0.0]],
        "jobs": [{"input": child.path("in.raw"), "output": child.path("out.raw")}],
    }));
    let latency = result["latency"].as_u64().unwrap() as usize;
    let out = read_raw(&child.path("out.raw"), 2);
    let reference = reference(&child.models, &input);
    for c in 0..2 {
        let max_mark = max_abs_diff(&reference[c], &input[c]).0;
        // Inputs well before the change (its block and the one before may be replayed).
        let before = (change / BLOCK - 2) * BLOCK;
        let (d, at) = max_abs_diff(&out[c][latency..latency + before], &reference[c][..before]);
        println!("channel {c}: before the change, max diff to stemmark embed {d:.2e} at {at}");
        assert!(
            d < 1e-4,
            "channel {c}: before the change the output differs by {d} at {at}"
        );
        // Inputs from one buffer after the change: no mark left.
        let after = change + 1024 + N_FFT;
        let n = input[c].len() - after - N_FFT;
        let (d, at) = max_abs_diff(
            &out[c][after + latency..after + latency + n],
            &input[c][after..after + n],
        );
        println!("channel {c}: after the change, max |out − in| {d:.2e} at {at}");
        assert!(
            d < 1e-5,
            "channel {c}: strength 0 still changes the audio by {d} at {at}"
        );
        // Everywhere: never further from the input than the largest mark.
        let (d, at) = max_abs_diff(
            &out[c][latency..latency + input[c].len() - N_FFT],
            &input[c][..input[c].len() - N_FFT],
        );
        assert!(
            d <= max_mark * 1.01 + 1e-6,
            "channel {c}: a jump of {d} at {at} (marks reach {max_mark})"
        );
    }
}

#[test]
fn cuda_asked_for_without_a_gpu_falls_back_to_the_cpu_logs_why_and_still_marks() {
    // The CPU ONNX Runtime CI installs has no CUDA provider: a session saved on a GPU machine
    // (provider "cuda") must open on the CPU, say so, and mark exactly as before.
    if std::env::var_os("STEMMARK_EXPECT_CUDA").is_some() {
        return; // with a GPU the CUDA session opens; runtime.rs checks that path
    }
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let child = Child::new();
    let input = music_44k(8);
    write_raw(&child.path("in.raw"), &input);
    let (result, log) = child.run_with_models(
        json!({
            "bundle": bundle, "rate": 44_100.0, "offline": true,
            "sizes": {"seed": 5, "max": 2048}, "provider": "cuda",
            "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
            "jobs": [{"input": child.path("in.raw"), "output": child.path("out.raw")}],
        }),
        &child.models,
    );
    assert!(log.contains("CUDA unavailable"), "the fallback is not in the log:\n{log}");
    assert!(log.contains("on CPU") || log.contains("on cpu"), "the provider that runs is not logged:\n{log}");
    let latency = result["latency"].as_u64().unwrap() as usize;
    let out = read_raw(&child.path("out.raw"), 2);
    let reference = reference(&child.models, &input);
    let check = input[0].len() - N_FFT;
    for c in 0..2 {
        let (d, at) = max_abs_diff(&out[c][latency..latency + check], &reference[c][..check]);
        assert!(d < 1e-4, "channel {c}: after the CUDA fallback the output differs from Embedder::embed by {d} at {at}");
    }
}

#[test]
fn without_a_model_audio_passes_through_delayed_and_the_error_is_logged() {
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let child = Child::new();
    let empty = child.path("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let input = music_44k(4);
    write_raw(&child.path("in.raw"), &input);
    let (result, log) = child.run_with_models(
        json!({
            "bundle": bundle, "rate": 44_100.0, "offline": false,
            "sizes": {"seed": 2, "max": 512},
            "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
            "jobs": [{"input": child.path("in.raw"), "output": child.path("out.raw")}],
        }),
        &empty,
    );
    assert!(
        log.contains("cannot open the embedder"),
        "the error is not in the log:\n{log}"
    );
    let latency = result["latency"].as_u64().unwrap() as usize;
    let out = read_raw(&child.path("out.raw"), 2);
    for c in 0..2 {
        assert!(out[c][..latency].iter().all(|&x| x == 0.0));
        assert!(
            out[c][latency..].iter().zip(&input[c]).all(|(x, y)| x == y),
            "channel {c} is not the delayed input"
        );
    }
}

#[test]
fn state_round_trips_key_payload_and_label() {
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let child = Child::new();
    let result = child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true,
        "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD, "label": "Lead vocal",
        "state_round_trip": true, "jobs": [],
    }));
    let state: Value = serde_json::from_str(result["state"].as_str().unwrap()).unwrap();
    let key: Value = serde_json::from_str(state["fields"]["key"].as_str().unwrap()).unwrap();
    assert_eq!(key, json!({"name": "vocals", "hex": KEY_HEX}));
    let label: Value = serde_json::from_str(state["fields"]["label"].as_str().unwrap()).unwrap();
    assert_eq!(label, json!("Lead vocal"));
    assert_eq!(state["params"]["payload"], json!({"i32": PAYLOAD}));
    assert_eq!(result["restored_equal"], json!(true));
    assert!(!result["state"].as_str().unwrap().contains("passphrase"));
}

#[test]
fn debug_bundle_processes_10000_random_calls_without_allocating() {
    // assert_process_allocs aborts the host on any allocation in process(). Real time, so the
    // (debug-speed) worker falls behind: late buffers and the input-overflow path run too.
    let bundle = bundle(
        "bundled-debug",
        "cargo xtask bundle stemmark-plugin --debug",
    );
    let child = Child::new();
    let frames = 2 * 48_000;
    let noise: Vec<Vec<f32>> = (0..2)
        .map(|c| {
            (0..frames)
                .map(|i| (((i * 7919 + c * 104_729) % 65_536) as f32 / 65_536.0 - 0.5) * 0.2)
                .collect()
        })
        .collect();
    write_raw(&child.path("in.raw"), &noise);
    let result = child.run(json!({
        "bundle": bundle, "rate": 48_000.0, "offline": false,
        "sizes": {"seed": 3, "max": 4096}, "calls": 10_000,
        "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD,
        "jobs": [{"input": child.path("in.raw"), "output": child.path("out.raw")}],
    }));
    assert_eq!(result["jobs"][0]["calls"], json!(10_000));
    let out = read_raw(&child.path("out.raw"), 2);
    assert!(
        out.iter().flatten().all(|x| x.is_finite()),
        "non-finite output"
    );
}

#[test]
fn pedalboard_loads_the_vst3_reports_the_same_latency_and_marks_like_stemmark_embed() {
    // PyPI pedalboard (JUCE's VST3 host) in the project venv. First without a key (the output
    // must be the input, bit-exact, delayed by the latency or compensated by pedalboard), then
    // with the key and payload set through the VST3 state: the output must match
    // `Embedder::embed` like the CLAP's does.
    let clap = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let vst3 = clap.with_extension("vst3");
    let python = match pytools::install_pedalboard() {
        Ok(p) => p,
        Err(e) => panic!("cannot install pedalboard into .deps/venv: {e:#}"),
    };
    let child = Child::new();
    let input = music_44k(10);
    write_raw(&child.path("in.raw"), &input);
    // JUCE wraps a VST3's state in XML, the component state in its own base64 (LSB-first bit
    // order, `<size>.` prefix); nice-plug's VST3 component state is its JSON.
    let script = r#"
import json, re, struct, sys
import numpy as np
import pedalboard
vst3, raw, out_dry, out_marked, out_mono, key_json, payload = sys.argv[1:8]
T = ".ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+"
def dec(s):
    size, data = s.split(".", 1)
    acc = 0
    for i, ch in enumerate(data):
        acc |= T.index(ch) << (6 * i)
    return acc.to_bytes((6 * len(data) + 7) // 8, "little")[:int(size)]
def enc(b):
    acc = int.from_bytes(b, "little")
    return str(len(b)) + "." + "".join(T[(acc >> (6 * i)) & 63] for i in range((len(b) * 8 + 5) // 6))
plugin = pedalboard.load_plugin(vst3, plugin_name="Stemmark Embed")
x = np.fromfile(raw, dtype="<f4").reshape(2, -1)
on_load = plugin.reported_latency_samples
y = plugin.process(x, 44100.0, buffer_size=4096, reset=True)
y.astype("<f4").tofile(out_dry)
latency = plugin.reported_latency_samples
state = plugin.raw_state
m = re.search(rb"<IComponent>(.*?)</IComponent>", state)
js = json.loads(dec(m.group(1).decode()))
js["fields"]["key"] = key_json
js["params"]["payload"] = {"i32": int(payload)}
blob = enc(json.dumps(js).encode()).encode()
xml = state[8:].rstrip(b"\0")
xml = xml[:xml.index(b"<IComponent>") + 12] + blob + xml[xml.index(b"</IComponent>"):]
plugin.raw_state = b"VC2!" + struct.pack("<I", len(xml)) + xml + b"\0"
y = plugin.process(x, 44100.0, buffer_size=4096, reset=True)
y.astype("<f4").tofile(out_marked)
after_state = int(plugin.reported_latency_samples)
# A mono track: the same plugin, one channel in and out.
y = plugin.process(x[:1], 44100.0, buffer_size=4096, reset=True)
y.astype("<f4").tofile(out_mono)
print(json.dumps({"on_load": int(on_load), "latency": int(latency), "after_state": after_state, "mono_channels": int(y.shape[0]), "name": plugin.name}))
"#;
    let key_json = serde_json::to_string(&json!({"name": "vocals", "hex": KEY_HEX})).unwrap();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&vst3)
        .arg(child.path("in.raw"))
        .arg(child.path("dry.raw"))
        .arg(child.path("marked.raw"))
        .arg(child.path("mono.raw"))
        .arg(&key_json)
        .arg(PAYLOAD.to_string())
        .env(stemmark_models::modelset::MODELS_ENV, &child.models)
        .env("NICE_LOG", child.path("pedalboard.log"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(child.path("pedalboard.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "pedalboard failed: {}\n{stdout}\n{}\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{}", tail(&log, 1500));
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // The latency includes one host buffer: pedalboard prepares the plugin for 512 frames on
    // load and for the processing buffer size (4096) in process(), so compare after that.
    let latency = report["latency"].as_u64().unwrap() as usize;
    // The CLAP in the same setup: 44.1 kHz, buffers of at most 4096 frames.
    write_raw(
        &child.path("short.raw"),
        &[vec![0.0; 4410], vec![0.0; 4410]],
    );
    let clap_run = child.run(json!({
        "bundle": clap, "rate": 44_100.0, "offline": true, "sizes": {"seed": 1, "max": 4096},
        "jobs": [{"input": child.path("short.raw"), "output": child.path("short_out.raw")}],
    }));
    let expected = clap_run["latency"].as_u64().unwrap() as usize;
    println!("pedalboard: {report}; the CLAP reports {expected}");
    assert_eq!(
        latency, expected,
        "the VST3 reports a different latency than the CLAP"
    );

    let dry = read_raw(&child.path("dry.raw"), 2);
    assert!(dry.iter().flatten().all(|v| v.is_finite()));
    // Either pedalboard compensated the latency (output aligned with the input) or not
    // (output delayed by exactly `latency`); both are a bit-exact copy.
    let aligned = |lag: usize| {
        (0..2).all(|c| {
            (0..dry[c].len().saturating_sub(lag))
                .all(|i| i >= input[c].len() || dry[c][i + lag] == input[c][i])
        })
    };
    let compensated = aligned(0);
    assert!(
        compensated || aligned(latency),
        "the VST3's output is neither the input nor the input delayed by its latency"
    );
    println!(
        "pedalboard {} the latency",
        if compensated {
            "compensated"
        } else {
            "did not compensate"
        }
    );

    let marked = read_raw(&child.path("marked.raw"), 2);
    let lag = if compensated { 0 } else { latency };
    let reference = reference(&child.models, &input);
    let check = input[0].len() - N_FFT;
    for c in 0..2 {
        let (d, at) = max_abs_diff(&marked[c][lag..lag + check], &reference[c][..check]);
        println!("channel {c}: VST3 in pedalboard vs stemmark embed: max diff {d:.2e} at {at}");
        assert!(
            d < 1e-4,
            "channel {c}: the VST3's marked output differs from Embedder::embed by {d} at {at}"
        );
    }

    // Mono: the plugin's mono layout, against `stemmark embed` on the mono signal.
    assert_eq!(report["mono_channels"].as_u64(), Some(1), "{report}");
    let mono = read_raw(&child.path("mono.raw"), 1);
    let mono_ref = self::reference(&child.models, &input[..1]);
    let (d, at) = max_abs_diff(&mono[0][lag..lag + check], &mono_ref[0][..check]);
    let mark = max_abs_diff(&mono_ref[0][..check], &input[0][..check]).0;
    println!("mono: VST3 in pedalboard vs stemmark embed: max diff {d:.2e} at {at} (the mark peaks at {mark:.2e})");
    assert!(d < 1e-4 && mark > 1e-3, "mono: differs from Embedder::embed by {d} at {at}; mark {mark}");
}

#[test]
fn editor_screenshot_under_xvfb() {
    // Writes target/screenshots/embed.png: the editor embedded in a plain X11 window on a
    // private Xvfb display, after 5 s of marked audio. Skipped when Xvfb is not installed.
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let Some(xvfb) = stemmark_tests::fixtures::Xvfb::start(800, 700) else {
        println!("Xvfb is not installed: no editor screenshot (apt-get install xvfb)");
        return;
    };
    let display = xvfb.display.clone();
    let child = Child::new();
    let shot_path = child.path("embed.png");
    let job = json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true,
        "key": {"name": "vocals", "hex": KEY_HEX}, "payload": PAYLOAD, "label": "Lead vocal",
        "screenshot": shot_path, "jobs": [],
    });
    let result = std::panic::catch_unwind(|| {
        let job_path = child.path("job.json");
        let mut job = job.clone();
        job["result"] = json!(child.path("result.json"));
        std::fs::write(&job_path, serde_json::to_vec(&job).unwrap()).unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "embed_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &job_path)
            .env("NICE_LOG", child.path("log.txt"))
            .env("DISPLAY", &display)
            .env(stemmark_models::modelset::MODELS_ENV, &child.models)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::read_to_string(child.path("log.txt")).unwrap_or_default();
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{}\n{text}\n{log}",
            out.status
        );
        serde_json::from_slice::<Value>(&std::fs::read(child.path("result.json")).unwrap()).unwrap()
    });
    drop(xvfb);
    let result = result.unwrap();
    let shot = &result["screenshot"];
    println!("editor: {shot}");
    assert!(
        shot["lit"].as_u64().unwrap() > 1000,
        "the editor drew nothing"
    );
    let dir = workspace_root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("embed.png");
    std::fs::copy(&shot_path, &png).unwrap();
    println!("wrote {}", png.display());
}

/// Worker cost per 2 s block at 44.1 kHz (and 48 kHz), and the CPU share of one instance:
/// `cargo test -p stemmark-tests --release --test embed_plugin -- --ignored --nocapture bench`.
/// The plumbing embedder is a tiny random-weight stand-in, so the model column is NOT what the
/// trained model costs; the DSP rows (STFT/iSTFT, resampling) are the real thing.
#[test]
#[ignore = "benchmark; prints a table"]
fn bench_worker_per_block() {
    use std::time::Instant;
    use stemmark_models::embed_stream::EmbedStream;
    use stemmark_models::resample::StreamResampler;
    use stemmark_models::spec::{BINS, FRAMES_PER_BLOCK};
    use stemmark_models::stft::Stft;

    let child = Child::new();
    runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
    let mut emb = Embedder::open(&child.models, Provider::Cpu).unwrap();
    let input = music_44k(30);
    let blocks = input[0].len() / BLOCK;
    let seconds = input[0].len() as f64 / 44_100.0;
    let mut rows: Vec<(String, f64)> = Vec::new();

    // Whole worker pipeline at 44.1 kHz, in 4096-frame pieces as the worker takes them.
    let run = |emb: &mut Embedder, rate: u32| -> f64 {
        let host: Vec<Vec<f32>> = if rate == 44_100 {
            input.clone()
        } else {
            stemmark_models::resample::resample_planar(&input, 44_100, rate).unwrap()
        };
        let mut to_model = StreamResampler::new(rate, 44_100, 2).unwrap();
        let mut to_host = StreamResampler::new(44_100, rate, 2).unwrap();
        let mut stream = EmbedStream::new(2, &key(), PAYLOAD, 1.0, 0).unwrap();
        let mut x44 = vec![vec![0.0f32; to_model.max_output_len(4096)]; 2];
        let mut y44 = vec![Vec::new(); 2];
        let mut out = vec![vec![0.0f32; 0]; 2];
        let t0 = Instant::now();
        for start in (0..host[0].len()).step_by(4096) {
            let end = (start + 4096).min(host[0].len());
            let chunk: Vec<&[f32]> = host.iter().map(|c| &c[start..end]).collect();
            let n = to_model.push(&chunk, &mut x44).unwrap();
            let x: Vec<&[f32]> = x44.iter().map(|c| &c[..n]).collect();
            stream.push(emb, &x, &mut y44).unwrap();
            let need = to_host.max_output_len(y44[0].len());
            out.iter_mut()
                .for_each(|o| o.resize(need.max(o.len()), 0.0));
            to_host.push(&y44, &mut out).unwrap();
            y44.iter_mut().for_each(Vec::clear);
        }
        t0.elapsed().as_secs_f64()
    };
    let _ = run(&mut emb, 44_100); // warm-up
    let t44 = run(&mut emb, 44_100);
    rows.push((
        "worker, 44.1 kHz (model + STFT/iSTFT)".into(),
        t44 / blocks as f64,
    ));
    let t48 = run(&mut emb, 48_000);
    rows.push((
        "worker, 48 kHz (+ resampling both ways)".into(),
        t48 / blocks as f64,
    ));

    // The model alone, on one block's magnitudes.
    let mag = ndarray::Array3::<f32>::from_elem((1, BINS, FRAMES_PER_BLOCK), 0.1);
    let word = stemmark_models::payload::encode(PAYLOAD, &key()).unwrap();
    let patterns = stemmark_models::tile::Patterns::from_key(&key());
    let message = stemmark_models::payload::to_bipolar(word);
    let reps = 20;
    let t0 = Instant::now();
    for _ in 0..reps {
        emb.masks(mag.view(), &patterns, &[message], &[0], 1.0).unwrap();
    }
    rows.push((
        "  model only (the tile channel's embedder)".into(),
        t0.elapsed().as_secs_f64() / reps as f64,
    ));

    // DSP only: per block, STFT of mid + 2 channels and iSTFT of 2 channels.
    let mut stft = Stft::new();
    let block: Vec<&[f32]> = input.iter().map(|c| &c[..BLOCK]).collect();
    let t0 = Instant::now();
    for _ in 0..reps {
        let _mid = stft.forward(block[0]);
        for c in &block {
            let s = stft.forward(c);
            let _ = stft.inverse(&s, BLOCK);
        }
    }
    rows.push((
        "  DSP only: STFT ×3 + iSTFT ×2".into(),
        t0.elapsed().as_secs_f64() / reps as f64,
    ));
    // Resampling one block's worth (2 s) 48 kHz → 44.1 kHz → 48 kHz, stereo.
    let host48 = stemmark_models::resample::resample_planar(&input, 44_100, 48_000).unwrap();
    let mut a = StreamResampler::new(48_000, 44_100, 2).unwrap();
    let mut b = StreamResampler::new(44_100, 48_000, 2).unwrap();
    let mut mid = vec![vec![0.0f32; a.max_output_len(96_000)]; 2];
    let mut back = vec![vec![0.0f32; b.max_output_len(mid[0].len())]; 2];
    let t0 = Instant::now();
    for r in 0..reps {
        let s = (r % 10) * 96_000;
        let chunk: Vec<&[f32]> = host48.iter().map(|c| &c[s..s + 96_000]).collect();
        let n = a.push(&chunk, &mut mid).unwrap();
        let m: Vec<&[f32]> = mid.iter().map(|c| &c[..n]).collect();
        b.push(&m, &mut back).unwrap();
    }
    rows.push((
        "  DSP only: resampling 48k↔44.1k".into(),
        t0.elapsed().as_secs_f64() / reps as f64,
    ));

    println!("\n| per 2 s block | ms | share of one core |");
    println!("|---|---:|---:|");
    for (name, secs) in &rows {
        println!(
            "| {name} | {:.2} | {:.2} % |",
            secs * 1e3,
            secs / 2.0 * 100.0
        );
    }
    println!(
        "\n{blocks} blocks ({seconds:.0} s); whole worker at 44.1 kHz: {:.0}× real time, {:.2} % of one core",
        seconds / t44,
        t44 / seconds * 100.0
    );
    println!(
        "threads: ONNX Runtime uses {} intra-op threads here (modelset::open)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}

// --- the child ---

/// The host side, run by the tests above in a child process.
#[test]
#[ignore = "runs in a child process started by the other tests in this file"]
fn embed_child() {
    let Some(job) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    if let Err(e) = child_main(Path::new(&job)) {
        panic!("child host failed: {e:#}");
    }
}

fn child_main(job_path: &Path) -> Result<()> {
    let job: Value = serde_json::from_slice(&std::fs::read(job_path)?)?;
    let bundle = PathBuf::from(job["bundle"].as_str().context("bundle")?);
    let rate = job["rate"].as_f64().context("rate")?;
    let offline = job["offline"].as_bool().unwrap_or(true);
    let sizes = clap_host::sizes_from_job(&job["sizes"]);
    let calls = job["calls"].as_u64().map(|c| c as usize);
    let entry = clap_host::load(&bundle)?;
    let mut result = json!({});

    let configure = |instance: &mut clap_host::Instance| -> Result<()> {
        // The key and payload arrive the way a session restores them: through the state.
        let mut state = clap_host::nice_state_json(&clap_host::save_state(instance)?)?;
        if let Some(key) = job.get("key") {
            state["fields"]["key"] = json!(serde_json::to_string(key)?);
        }
        if let Some(label) = job.get("label") {
            state["fields"]["label"] = json!(serde_json::to_string(label)?);
        }
        if let Some(provider) = job.get("provider") {
            state["fields"]["provider"] = json!(serde_json::to_string(provider)?);
        }
        if let Some(p) = job["payload"].as_u64() {
            state["params"]["payload"] = json!({"i32": p});
        }
        clap_host::load_state(instance, &clap_host::nice_state_bytes(&state)?)?;
        clap_host::set_render_mode(instance, offline)
    };

    if job["state_round_trip"].as_bool() == Some(true) {
        let mut a = clap_host::instantiate(&entry, EMBED_ID)?;
        configure(&mut a)?;
        let saved = clap_host::save_state(&mut a)?;
        let mut b = clap_host::instantiate(&entry, EMBED_ID)?;
        clap_host::load_state(&mut b, &saved)?;
        let again = clap_host::save_state(&mut b)?;
        let (x, y) = (
            clap_host::nice_state_json(&saved)?,
            clap_host::nice_state_json(&again)?,
        );
        result["state"] = json!(x.to_string());
        result["restored_equal"] = json!(x == y);
    }

    if let Some(shot) = job["screenshot"].as_str() {
        // Activate and play a little audio first, so the editor has numbers to show.
        let mut instance = clap_host::instantiate(&entry, EMBED_ID)?;
        configure(&mut instance)?;
        let audio = vec![testkit::music_like(44_100, 5.0, 1).channels[0].clone(); 2];
        clap_host::run(
            &mut instance,
            44_100.0,
            &clap_host::Sizes::Cycle(vec![1024]),
            &audio,
            None,
        )?;
        let display = std::env::var("DISPLAY").context("DISPLAY")?;
        let (w, h, rgb) = clap_host::editor_screenshot(
            &mut instance,
            &display,
            std::time::Duration::from_secs(3),
        )?;
        clap_host::write_png(Path::new(shot), w, h, &rgb)?;
        let lit = rgb.iter().filter(|&&v| v > 16).count();
        result["screenshot"] = json!({"width": w, "height": h, "lit": lit});
    }

    let mut jobs = Vec::new();
    for j in job["jobs"].as_array().cloned().unwrap_or_default() {
        let input_path = PathBuf::from(j["input"].as_str().context("input")?);
        let mut input = read_raw(&input_path, 2);
        let mut instance = clap_host::instantiate(&entry, EMBED_ID)?;
        configure(&mut instance)?;
        // Enough trailing silence to flush the latency: the latency is known after
        // activation, and it is at most a few seconds.
        let pad = (rate * 3.0) as usize;
        for c in &mut input {
            c.extend(std::iter::repeat_n(0.0, pad));
        }
        let t0 = std::time::Instant::now();
        let timeline: Vec<(usize, i64)> = job["timeline"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_i64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        let automation: Vec<(usize, u32, f64)> = job["automation"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|p| {
                        (
                            p[0].as_u64().unwrap() as usize,
                            clap_host::nice_param_id(p[1].as_str().unwrap()),
                            p[2].as_f64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let script = clap_host::Script {
            timeline,
            automation,
        };
        let run =
            clap_host::run_with_transport(&mut instance, rate, &sizes, &input, calls, &script)?;
        let secs = t0.elapsed().as_secs_f64();
        let (mut out, latency) = (run.output, run.latency);
        // The worker logs its totals when the instance is deactivated.
        drop(instance);
        let frames = out[0].len();
        let keep = (input[0].len() - pad + latency as usize).min(frames);
        for c in &mut out {
            c.truncate(keep);
        }
        write_raw(Path::new(j["output"].as_str().context("output")?), &out);
        let log = std::env::var_os("NICE_LOG")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        println!(
            "processed {} calls, {frames} frames in {secs:.2} s; latency {latency}",
            run.calls
        );
        ensure!(latency > 0, "no latency reported");
        result["latency"] = json!(latency);
        jobs.push(json!({
            "frames": frames, "seconds": secs, "calls": run.calls,
            "blocks_marked": status_count(&log, "blocks"), "late": status_count(&log, "late"),
        }));
    }
    result["jobs"] = json!(jobs);
    std::fs::write(
        job["result"].as_str().context("result")?,
        serde_json::to_vec_pretty(&result)?,
    )?;
    Ok(())
}

/// The worker logs its totals when it stops ("... N blocks marked, M late buffers"); the number
/// before `word` on the last such line.
fn status_count(log: &str, word: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("blocks marked"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == word)?;
    words.get(i.checked_sub(1)?)?.parse().ok()
}
