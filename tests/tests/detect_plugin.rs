//! Stemmark Detect loaded from its bundle by a real CLAP host (clack-host) and by pedalboard's
//! VST3 host.
//!
//! A mix of two stems, each marked with its own key and payload by `Embedder::embed` (what
//! `stemmark embed` runs), is played through the plugin; the results file it writes is compared
//! with what `stemmark detect` reports on the same mix. Models: the shipped ones when
//! `models/manifest.toml` holds trained models (then the payloads must be found on the right
//! stems), else plumbing models (random weights, exact contracts), with which the plugin must
//! still agree with the CLI reading for reading.
//!
//! Each host session runs in a child process (this binary re-run with only `detect_child` and a
//! job file in `STEMMARK_DETECT_CHILD`), so an abort fails one test with a report and nice-plug's
//! log goes to a file from the start.

#[path = "../src/clap_host.rs"]
mod clap_host;
#[path = "../../xtask/src/pytools.rs"]
mod pytools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use stemmark_models::decision;
use stemmark_models::detector::Alignment;
use stemmark_models::embedder::Embedder;
use stemmark_models::keys::Key;
use stemmark_models::manifest::Manifest;
use stemmark_models::runtime::{self, Provider};
use stemmark_models::spec::{BLOCK, SAMPLE_RATE};
use stemmark_models::tile::window;
use stemmark_offline::audio::Audio;
use stemmark_offline::testkit;
use stemmark_tests::fixtures::{bundle, read_raw, tail, wesnoth_44k, workspace_root, write_raw};

const CHILD_ENV: &str = "STEMMARK_DETECT_CHILD";
const DETECT_ID: &str = "org.stemmark.detect";
/// Two stems' keys and payloads, and a key that marks nothing.
const KEYS: [(&str, &str); 3] = [
    ("lead", "00112233445566778899aabbccddeeff"),
    ("band", "f0e1d2c3b4a5968778695a4b3c2d1e0f"),
    ("nobody", "0123456789abcdef0123456789abcdef"),
];
const PAYLOADS: [u32; 2] = [0x5a17e, 0x0b0b1];
const SECONDS: usize = 30;

fn key(i: usize) -> Key {
    Key::from_hex(KEYS[i].1, KEYS[i].0).unwrap()
}

fn ring() -> Value {
    json!(KEYS.iter().map(|(n, h)| json!({"name": n, "hex": h})).collect::<Vec<_>>())
}

struct Child {
    dir: tempfile::TempDir,
    models: PathBuf,
    trained: bool,
    /// The models' measured rate of correct payloads after mixing and separation
    /// (`provenance.payload_rate_separated`), which decides what the tests can demand.
    separated_payload_rate: f64,
}

impl Child {
    /// The shipped models if they are trained, else plumbing models in a temporary folder.
    fn new() -> Child {
        let dir = tempfile::tempdir().unwrap();
        let shipped = workspace_root().join("models");
        if let Ok(m) = Manifest::load(&shipped)
            && m.kind == "trained"
        {
            // A rate, or one per stem (then the smallest).
            let rate = m.provenance.get("payload_rate_separated").and_then(|v| {
                v.as_float().or_else(|| v.as_array().map(|a| a.iter().filter_map(|x| x.as_float()).fold(f64::INFINITY, f64::min)))
            });
            let rate = rate.unwrap_or(0.0);
            let rate = if rate.is_finite() { rate } else { 0.0 };
            return Child { dir, models: shipped, trained: true, separated_payload_rate: rate };
        }
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        testkit::plumbing_model_dir(&models, 5).unwrap();
        Child { dir, models, trained: false, separated_payload_rate: 0.0 }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `job` (see [`detect_child`]) in a child host; returns its result JSON and the log.
    fn run(&self, job: Value) -> (Value, String) {
        let job_path = self.path("job.json");
        let result_path = self.path("result.json");
        let _ = std::fs::remove_file(&result_path);
        let mut job = job;
        job["result"] = json!(result_path);
        std::fs::write(&job_path, serde_json::to_vec_pretty(&job).unwrap()).unwrap();
        let log = self.path("nice-plug.log");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["detect_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &job_path)
            .env("NICE_LOG", &log)
            .env(stemmark_models::modelset::MODELS_ENV, &self.models)
            .env("STEMMARK_DETECT_RESULTS", self.path("detect.json"));
        if let Some(d) = job["display"].as_str() {
            cmd.env("DISPLAY", d);
        }
        let out = cmd.output().expect("start the child host");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child host failed: {}\n--- output ---\n{text}\n--- plugin log ---\n{log}",
            out.status
        );
        println!("--- child ---\n{text}\n--- plugin log (tail) ---\n{}", tail(&log, 2000));
        (serde_json::from_slice(&std::fs::read(&result_path).unwrap()).unwrap(), log)
    }

    /// The results file the plugin wrote.
    fn detect_json(&self) -> Value {
        let p = self.path("detect.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    }
}

/// Two real stems (Wesnoth tracks when installed), each marked with its own key and payload,
/// summed into a mix (44.1 kHz stereo).
fn marked_mix(models: &Path) -> Vec<Vec<f32>> {
    marked_mix_at(models, 0)
}

/// [`marked_mix`] as marked in a session where it starts at grid block `first_block`.
fn marked_mix_at(models: &Path, first_block: i64) -> Vec<Vec<f32>> {
    runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
    let mut emb = Embedder::open(models, Provider::Cpu).unwrap();
    let stems = [wesnoth_44k("elvish-theme.ogg", SECONDS, 7), wesnoth_44k("transience.ogg", SECONDS, 9)];
    let mut mix = vec![vec![0.0f32; SECONDS * SAMPLE_RATE as usize]; 2];
    for (i, stem) in stems.iter().enumerate() {
        let marked = emb.embed_at(stem, &key(i), PAYLOADS[i], 1.0, first_block, &mut |_, _| {}).unwrap();
        for (m, s) in mix.iter_mut().zip(&marked) {
            for (a, b) in m.iter_mut().zip(s) {
                *a += 0.5 * b;
            }
        }
    }
    mix
}

/// `stemmark detect --offset 0` on `mix` (the bounce starts at timeline zero), as JSON.
fn cli_report(models: &Path, mix: &[Vec<f32>]) -> Value {
    runtime::init(None, &[]).unwrap();
    let keys: Vec<Key> = (0..KEYS.len()).map(key).collect();
    let audio = Audio::new(SAMPLE_RATE, mix.to_vec());
    let r = stemmark_offline::cmd::detect::analyse(
        Path::new("mix.wav"),
        &audio,
        &keys,
        models,
        Provider::Cpu,
        Alignment::Fixed(0),
        true,
        &mut |_| {},
        &mut |_, _| {},
    )
    .unwrap();
    serde_json::to_value(&r).unwrap()
}

/// What the plugin and the CLI must agree on: (key, payload, found on the mix?) of every "found"
/// entry, sorted. Which separated stems also carried it may differ: the plugin separates each
/// block with 1 s of context, the CLI the whole file in 8 s segments, so a reading near the
/// threshold on a separated stem can land on either side.
fn agreed_set(found: &Value) -> Vec<(String, u64, bool)> {
    let mut v: Vec<_> = found_set(found).into_iter().map(|(k, p, places)| (k, p, places.iter().any(|x| x == "mix"))).collect();
    v.sort();
    v
}

/// (key, payload, places) of every "found" entry, sorted.
fn found_set(found: &Value) -> Vec<(String, u64, Vec<String>)> {
    let mut v: Vec<_> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let mut places: Vec<String> = f["read_on"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
            places.sort();
            (f["key"].as_str().unwrap().to_string(), f["payload"].as_u64().unwrap(), places)
        })
        .collect();
    v.sort();
    v
}

// --- tests ---

#[test]
fn on_a_marked_mix_results_match_stemmark_detect_and_audio_passes_bit_exact() {
    let child = Child::new();
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let mix = marked_mix(&child.models);
    write_raw(&child.path("in.raw"), &mix);
    let (result, _) = child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true, "keys": ring(),
        "sizes": {"seed": 11, "max": 4096},
        "input": child.path("in.raw"), "output": child.path("out.raw"), "state_round_trip": true,
    }));
    // Pass-through: bit for bit, no latency.
    assert_eq!(result["latency"], json!(0));
    let out = read_raw(&child.path("out.raw"), 2);
    for c in 0..2 {
        assert!(out[c] == mix[c], "channel {c}: output differs from input");
    }
    // The key ring survives a state round trip; no passphrase is ever stored.
    assert_eq!(result["restored_equal"], json!(true));
    let ring_back: Value = serde_json::from_str(result["state"]["fields"]["keys"].as_str().unwrap()).unwrap();
    assert_eq!(ring_back, ring());

    let det = child.detect_json();
    assert_eq!(det["complete"], json!(true), "{det:#}");
    assert_eq!(det["blocks_analysed"], json!(SECONDS * SAMPLE_RATE as usize / BLOCK));
    assert_eq!(det["blocks_skipped"], json!(0));
    let cli = cli_report(&child.models, &mix);
    println!("plugin found {}\nCLI found {}", det["found"], cli["found"]);
    // The mix path is the same computation on the same grid: the same statistic per key.
    for (i, (name, _)) in KEYS.iter().enumerate() {
        let p = det["readings"].as_array().unwrap().iter().find(|r| r["path"] == "mix" && r["key"] == *name).unwrap();
        let c = cli["readings"].as_array().unwrap().iter().find(|r| r["path"] == "mix" && r["key"] == *name).unwrap();
        let (zp, zc) = (p["z"].as_f64().unwrap(), c["z"].as_f64().unwrap());
        println!("key {i} {name}: mix z plugin {zp:.4}, CLI {zc:.4}");
        assert!((zp - zc).abs() <= 1e-3 * (1.0 + zc.abs()), "key {name}: z {zp} vs {zc}");
        assert_eq!(p["verdict"], c["verdict"]);
        assert_eq!(p["payload"], c["payload"]);
    }
    assert_eq!(agreed_set(&det["found"]), agreed_set(&cli["found"]), "plugin and CLI disagree on what was found");
    if child.trained {
        let found = found_set(&det["found"]);
        assert!(found.iter().all(|(k, _, _)| k != KEYS[2].0), "the unused key found something: {found:?}");
        for (k, p, _) in &found {
            let i = KEYS.iter().position(|(n, _)| n == k).unwrap();
            assert_eq!(*p, PAYLOADS[i] as u64, "key {k} reported a wrong payload");
        }
    }
    // Naming both payloads on their own stems is demanded of models that measured it.
    if child.trained && child.separated_payload_rate >= 0.9 {
        let found = found_set(&det["found"]);
        for (i, stem) in ["foreground", "background"].iter().enumerate() {
            assert!(
                found.iter().any(|(k, p, places)| k == KEYS[i].0 && *p == PAYLOADS[i] as u64 && places.iter().any(|x| x == stem)),
                "payload {} of key {} not found on {stem}: {found:?}",
                PAYLOADS[i],
                KEYS[i].0
            );
        }
    } else {
        println!("payload recovery after separation not demanded: measured rate {}", child.separated_payload_rate);
    }
}

#[test]
fn unmarked_audio_at_48k_yields_nothing_found_for_the_whole_render() {
    let child = Child::new();
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let music = wesnoth_44k("battle.ogg", 20, 4);
    let at48 = stemmark_models::resample::resample_planar(&music, 44_100, 48_000).unwrap();
    write_raw(&child.path("in.raw"), &at48);
    let (result, _) = child.run(json!({
        "bundle": bundle, "rate": 48_000.0, "offline": true, "keys": ring(),
        "sizes": {"seed": 5, "max": 1024},
        "input": child.path("in.raw"), "output": child.path("out.raw"),
    }));
    assert_eq!(result["latency"], json!(0));
    let out = read_raw(&child.path("out.raw"), 2);
    assert!(out[0] == at48[0] && out[1] == at48[1], "output differs from input");
    let det = child.detect_json();
    println!("{det:#}");
    assert_eq!(det["complete"], json!(true));
    // 20 s: ten 2 s blocks on the grid (the resampler's delay is flushed at the end).
    assert_eq!(det["blocks_analysed"], json!(10));
    assert_eq!(det["readings"].as_array().unwrap().len(), 4 * KEYS.len(), "mix + 2 stems + their joint, every key");
    // Whatever the models (even random weights, whose bias repeats in every block), the key's
    // block masks leave nothing consistent to find.
    assert_eq!(det["found"], json!([]), "found a mark in unmarked audio");
}

#[test]
fn a_mix_later_on_the_timeline_is_read_with_its_blocks_timeline_masks() {
    // The stems were marked in a session where the song starts at 14 s, grid block 7, so each
    // block carries the mask of its timeline block; Detect plays the bounce from there. Its mix
    // readings must be those of the file's blocks with indices 7, 8, … — not 0, 1, ….
    let first_block = 7i64;
    let child = Child::new();
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let mix = marked_mix_at(&child.models, first_block);
    write_raw(&child.path("in.raw"), &mix);
    child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true, "keys": ring(),
        "sizes": {"seed": 3, "max": 2048}, "timeline": [[0, first_block * BLOCK as i64]],
        "input": child.path("in.raw"), "output": child.path("out.raw"),
    }));
    let det = child.detect_json();
    assert_eq!(det["complete"], json!(true), "{det:#}");
    runtime::init(None, &[]).unwrap();
    let mut detector = stemmark_models::detector::Detector::open(&child.models, Provider::Cpu).unwrap();
    let cal = detector.calibration();
    let mid: Vec<f32> = (0..mix[0].len()).map(|i| 0.5 * (mix[0][i] + mix[1][i])).collect();
    for (i, (name, _)) in KEYS.iter().enumerate() {
        let blocks = detector.grid_logits(&mid, 0, 0, &key(i), usize::MAX).unwrap();
        let at_zero = window::decide_logits(&blocks, &key(i), &cal, decision::GridIndex::Known);
        let blocks = detector.grid_logits(&mid, 0, first_block, &key(i), usize::MAX).unwrap();
        let on_timeline = window::decide_logits(&blocks, &key(i), &cal, decision::GridIndex::Known);
        let p = det["readings"].as_array().unwrap().iter().find(|r| r["path"] == "mix" && r["key"] == *name).unwrap();
        let zp = p["z"].as_f64().unwrap();
        println!("key {name}: plugin z {zp:.3}; file read from block {first_block} z {:.3}, from block 0 z {:.3}", on_timeline.z, at_zero.z);
        assert!((zp - on_timeline.z).abs() <= 1e-3 * (1.0 + zp.abs()), "key {name}: {zp} vs {}", on_timeline.z);
        assert_eq!(p["payload"], json!(on_timeline.payload));
        assert_eq!(at_zero.verdict, decision::Verdict::NotFound, "key {name}: read at the wrong place the mark must vanish");
    }
}

#[test]
fn debug_bundle_processes_10000_random_calls_without_allocating() {
    // Real time at 48 kHz with a debug-speed worker: analysis falls behind, so the ring-full and
    // skip paths run too. assert_process_allocs aborts the child on any allocation in process().
    let bundle = bundle("bundled-debug", "cargo xtask bundle stemmark-plugin --debug");
    let child = Child::new();
    let frames = 2 * 48_000;
    let noise: Vec<Vec<f32>> = (0..2)
        .map(|c| (0..frames).map(|i| (((i * 7919 + c * 104_729) % 65_536) as f32 / 65_536.0 - 0.5) * 0.2).collect())
        .collect();
    write_raw(&child.path("in.raw"), &noise);
    let (result, _) = child.run(json!({
        "bundle": bundle, "rate": 48_000.0, "offline": false, "keys": ring(),
        "sizes": {"seed": 3, "max": 4096}, "calls": 10_000,
        "input": child.path("in.raw"), "output": child.path("out.raw"),
    }));
    assert_eq!(result["calls"], json!(10_000));
}

#[test]
fn cuda_asked_for_without_a_gpu_falls_back_to_the_cpu_and_reads_the_same() {
    // A session saved on a GPU machine (provider "cuda") opened where the ONNX Runtime has no
    // CUDA provider: the worker says so, runs on the CPU and reports what `stemmark detect` does.
    if std::env::var_os("STEMMARK_EXPECT_CUDA").is_some() {
        return; // with a GPU the CUDA session opens; runtime.rs checks that path
    }
    let child = Child::new();
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let mix = marked_mix(&child.models);
    write_raw(&child.path("in.raw"), &mix);
    let (_, log) = child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true, "keys": ring(), "provider": "cuda",
        "sizes": {"seed": 12, "max": 4096},
        "input": child.path("in.raw"), "output": child.path("out.raw"),
    }));
    assert!(log.contains("CUDA unavailable"), "the fallback is not in the log:\n{log}");
    let det = child.detect_json();
    assert_eq!(det["complete"], json!(true), "{det:#}");
    let cli = cli_report(&child.models, &mix);
    assert_eq!(agreed_set(&det["found"]), agreed_set(&cli["found"]), "plugin (CUDA → CPU) and CLI disagree");
}

#[test]
fn without_models_audio_passes_and_the_error_is_reported() {
    let child = Child::new();
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let music = testkit::music_like(44_100, 5.0, 2).channels;
    write_raw(&child.path("in.raw"), &music);
    let mut child = child;
    child.models = child.path("no-such-models");
    let (result, log) = child.run(json!({
        "bundle": bundle, "rate": 44_100.0, "offline": true, "keys": ring(),
        "input": child.path("in.raw"), "output": child.path("out.raw"),
    }));
    assert_eq!(result["latency"], json!(0));
    let out = read_raw(&child.path("out.raw"), 2);
    assert!(out[0] == music[0] && out[1] == music[1]);
    assert!(log.contains("Stemmark Detect") && log.contains("no-such-models"), "the error is not logged:\n{log}");
}

#[test]
fn pedalboard_loads_the_vst3_and_passes_audio_bit_exact_with_zero_latency() {
    let vst3 = bundle("bundled", "cargo xtask bundle stemmark-plugin --release").with_extension("vst3");
    let python = pytools::install_pedalboard().expect("pedalboard in .deps/venv");
    let child = Child::new();
    let music = wesnoth_44k("transience.ogg", 8, 3);
    write_raw(&child.path("in.raw"), &music);
    let script = r#"
import json, sys
import numpy as np
import pedalboard
vst3, raw, out = sys.argv[1:4]
plugin = pedalboard.load_plugin(vst3, plugin_name="Stemmark Detect")
x = np.fromfile(raw, dtype="<f4").reshape(2, -1)
y = plugin.process(x, 44100.0, buffer_size=1024, reset=True)
y.astype("<f4").tofile(out)
print(json.dumps({"latency": int(plugin.reported_latency_samples), "name": plugin.name}))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&vst3)
        .arg(child.path("in.raw"))
        .arg(child.path("out.raw"))
        .env(stemmark_models::modelset::MODELS_ENV, &child.models)
        .env("NICE_LOG", child.path("pedalboard.log"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let info: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!("pedalboard: {info}");
    assert_eq!(info["name"], json!("Stemmark Detect"));
    assert_eq!(info["latency"], json!(0));
    let y = read_raw(&child.path("out.raw"), 2);
    assert!(y[0] == music[0] && y[1] == music[1], "pedalboard output differs from the input");
}

#[test]
fn editor_screenshot_under_xvfb() {
    // Writes target/screenshots/detect.png: the editor after 12 s of a marked mix.
    let bundle = bundle("bundled", "cargo xtask bundle stemmark-plugin --release");
    let Some(xvfb) = stemmark_tests::fixtures::Xvfb::start(800, 700) else {
        println!("Xvfb is not installed: no editor screenshot (apt-get install xvfb)");
        return;
    };
    let display = xvfb.display.clone();
    let child = Child::new();
    let mut mix = marked_mix(&child.models);
    for c in &mut mix {
        c.truncate(12 * 44_100);
    }
    write_raw(&child.path("in.raw"), &mix);
    let shot = child.path("detect.png");
    let result = std::panic::catch_unwind(|| {
        child.run(json!({
            "bundle": bundle, "rate": 44_100.0, "offline": true, "keys": ring(),
            "input": child.path("in.raw"), "screenshot": shot, "display": display,
        }))
    });
    drop(xvfb);
    let (result, _) = result.unwrap();
    println!("editor: {}", result["screenshot"]);
    assert!(result["screenshot"]["lit"].as_u64().unwrap() > 1000, "the editor drew nothing");
    let dir = workspace_root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&shot, dir.join("detect.png")).unwrap();
    println!("wrote {}", dir.join("detect.png").display());
}

// --- the child host ---

#[test]
#[ignore = "runs in a child process started by the other tests in this file"]
fn detect_child() {
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
        // The key ring arrives the way a session restores it: through the state.
        let mut state = clap_host::nice_state_json(&clap_host::save_state(instance)?)?;
        state["fields"]["keys"] = json!(serde_json::to_string(&job["keys"])?);
        if let Some(provider) = job.get("provider") {
            state["fields"]["provider"] = json!(serde_json::to_string(provider)?);
        }
        clap_host::load_state(instance, &clap_host::nice_state_bytes(&state)?)?;
        clap_host::set_render_mode(instance, offline)
    };
    let input = read_raw(Path::new(job["input"].as_str().context("input")?), 2);
    let mut instance = clap_host::instantiate(&entry, DETECT_ID)?;
    configure(&mut instance)?;
    if job["state_round_trip"].as_bool() == Some(true) {
        let saved = clap_host::save_state(&mut instance)?;
        let mut b = clap_host::instantiate(&entry, DETECT_ID)?;
        clap_host::load_state(&mut b, &saved)?;
        let again = clap_host::nice_state_json(&clap_host::save_state(&mut b)?)?;
        let saved = clap_host::nice_state_json(&saved)?;
        result["restored_equal"] = json!(saved == again);
        result["state"] = saved;
    }
    let t0 = std::time::Instant::now();
    let timeline: Vec<(usize, i64)> = job["timeline"]
        .as_array()
        .map(|t| t.iter().map(|p| (p[0].as_u64().unwrap_or(0) as usize, p[1].as_i64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let script = clap_host::Script { timeline, automation: Vec::new() };
    let run = clap_host::run_with_transport(&mut instance, rate, &sizes, &input, calls, &script)?;
    println!("processed {} calls in {:.2} s", run.calls, t0.elapsed().as_secs_f64());
    result["latency"] = json!(run.latency);
    result["calls"] = json!(run.calls);
    if let Some(out) = job["output"].as_str() {
        write_raw(Path::new(out), &run.output);
    }
    if let Some(shot) = job["screenshot"].as_str() {
        // After the render the worker has finished; the editor shows its final results.
        let display = job["display"].as_str().context("display")?;
        let (w, h, rgb) = clap_host::editor_screenshot(&mut instance, display, std::time::Duration::from_secs(3))?;
        clap_host::write_png(Path::new(shot), w, h, &rgb)?;
        let lit = rgb.iter().filter(|&&v| v > 16).count();
        result["screenshot"] = json!({"width": w, "height": h, "lit": lit});
    }
    // Dropping the instance waits for the analysis to finish and write its complete results.
    drop(instance);
    ensure!(run.output.len() == 2, "stereo out");
    std::fs::write(job["result"].as_str().context("result")?, serde_json::to_vec_pretty(&result)?)?;
    Ok(())
}
