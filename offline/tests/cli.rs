//! The `stemmark` command line on files: the plumbing pipeline, exit codes, and bad input.
//! Models here are random-weight plumbing models (contract-exact); they test wiring, not marks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stemmark_offline::audio::{self, Audio};
use stemmark_offline::testkit;

struct Env {
    dir: tempfile::TempDir,
    models: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    testkit::plumbing_model_dir(&models, 7).unwrap();
    Env { dir, models }
}

impl Env {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_stemmark"))
            .arg("--models")
            .arg(&self.models)
            .args(args)
            .output()
            .expect("stemmark runs")
    }

    fn write(&self, name: &str, a: &Audio) -> String {
        let p = self.p(name);
        audio::write_wav(&p, a).unwrap();
        p.display().to_string()
    }

    fn key(&self, name: &str) -> String {
        let p = self.p(&format!("{name}.key"));
        let o = self.run(&["keygen", p.to_str().unwrap(), "--name", name]);
        assert!(o.status.success(), "{}", text(&o));
        p.display().to_string()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn only_file(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn embed_mix_separate_detect_round_through_the_cli() {
    let e = env();
    let (ka, kb) = (e.key("vocals"), e.key("band"));
    let a = e.write("a.wav", &testkit::music_like(48_000, 6.5, 1));
    // stems at different rates: the mix takes the first stem's rate (44.1 kHz here), so the
    // separated stems can be compared with it without a resampling round trip
    let b = e.write("b.wav", &testkit::music_like(44_100, 6.5, 2));
    let (ma, mb, mix) = (e.p("ma.wav"), e.p("mb.wav"), e.p("mix.wav"));
    for (inp, out, k, pl) in [(&a, &ma, &ka, "1234"), (&b, &mb, &kb, "99")] {
        let o = e.run(&["--json", "embed", inp, out.to_str().unwrap(), "--key", k, "--payload", pl]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(json(&o)["blocks"], 3);
    }
    // the marked stem keeps rate, channels and length, and differs only within the mask bound
    let (orig, marked) = (audio::read(Path::new(&a)).unwrap(), audio::read(&ma).unwrap());
    assert_eq!((marked.rate, marked.channels.len(), marked.len()), (48_000, 2, orig.len()));
    let diff: f64 = orig.channels[0].iter().zip(&marked.channels[0]).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let sig: f64 = orig.channels[0].iter().map(|x| (*x as f64).powi(2)).sum();
    let snr = 10.0 * (sig / diff).log10();
    assert!(snr > 15.0 && snr < 80.0, "SNR {snr} dB: plumbing mask is bounded by ±0.1 and not identity");

    let o = e.run(&["--json", "mix", "-o", mix.to_str().unwrap(), mb.to_str().unwrap(), ma.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let sep = e.p("sep");
    let o = e.run(&["--json", "separate", mix.to_str().unwrap(), sep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut names = only_file(&sep);
    names.sort();
    assert_eq!(names, ["background.wav", "foreground.wav"]);
    // the plumbing separator's stems sum to the mix: overlap-add must preserve that
    let m = audio::read(&mix).unwrap();
    let f = audio::read(&sep.join("foreground.wav")).unwrap();
    let g = audio::read(&sep.join("background.wav")).unwrap();
    let err = (0..m.len()).map(|i| (m.channels[1][i] - f.channels[1][i] - g.channels[1][i]).abs()).fold(0f32, f32::max);
    assert!(err < 1e-3, "stems do not sum to the mix: {err}");

    let o = e.run(&["--json", "detect", mix.to_str().unwrap(), "--key", &ka, "--key", &kb, "--offset", "0"]);
    let code = o.status.code().unwrap();
    assert!(code == 0 || code == 3, "{}", text(&o));
    let r = json(&o);
    // two keys × (mix + two separated stems + the joint reading of all three), each charged
    // for the key's four readings (known grid: 1 shift × 4)
    let readings = r["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 8, "{r}");
    let mut paths: Vec<String> = readings.iter().map(|x| x["stem"].as_str().or(x["path"].as_str()).unwrap().to_string()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths, ["background", "foreground", "joint", "mix"], "{r}");
    for x in readings {
        let (z, rate) = (x["z"].as_f64().unwrap(), x["false_positive_rate"].as_f64().unwrap());
        let charged = stemmark_models::code::false_payload_bound(z, 4);
        assert!((rate - charged).abs() <= 1e-9 * charged.max(1e-300), "{x}: rate {rate}, charged bound {charged}");
    }
    assert_eq!(r["full_blocks"], 3);
    assert_eq!(r["provider"], "CPU");
}

#[test]
fn bad_input_gets_clear_errors_and_no_output() {
    let e = env();
    let k = e.key("k");
    let out = e.p("out.wav");
    let outs = out.to_str().unwrap();
    let check = |args: &[&str], code: i32, needle: &str| {
        let o = e.run(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: expected {needle:?} in {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    };
    let mut nan = testkit::music_like(44_100, 1.0, 3);
    nan.channels[0][500] = f32::NAN;
    let nan = e.write("nan.wav", &nan);
    check(&["embed", &nan, outs, "--key", &k, "--payload", "1"], 1, "non-finite");
    let junk = e.p("junk.wav");
    std::fs::write(&junk, b"RIFF....WAVEjunk").unwrap();
    check(&["embed", junk.to_str().unwrap(), outs, "--key", &k, "--payload", "1"], 1, "not a readable audio file");
    let three = e.write("three.wav", &Audio::new(44_100, vec![vec![0.1; 44_100]; 3]));
    check(&["embed", &three, outs, "--key", &k, "--payload", "1"], 1, "3 channels");
    let low = e.write("low.wav", &Audio::new(4_000, vec![vec![0.1; 4_000]]));
    check(&["embed", &low, outs, "--key", &k, "--payload", "1"], 1, "4000 Hz");
    let ok = e.write("ok.wav", &testkit::music_like(44_100, 2.5, 4));
    check(&["embed", &ok, outs, "--key", &k, "--payload", "16777216"], 1, "does not fit in 24 bits");
    check(&["embed", &ok, outs, "--key", &k, "--payload", "1", "--strength", "9"], 1, "strength");
    check(&["embed", &ok, outs, "--key", "/nonexistent.key", "--payload", "1"], 1, "cannot read key file");
    check(&["embed", &ok, outs, "--payload", "1"], 2, "--key");
    assert!(!out.exists(), "no output may be written on error");
    // nothing half-written either
    assert!(only_file(e.dir.path()).iter().all(|n| !n.ends_with(".tmp")));

    // silence and 1 ms: a clear "nothing found", exit 3
    let silent = e.write("silent.wav", &Audio::new(44_100, vec![vec![0.0; 5 * 44_100]; 2]));
    check(&["detect", &silent, "--key", &k], 3, "digital silence");
    let tiny = e.write("tiny.wav", &Audio::new(44_100, vec![vec![0.1; 44]; 2]));
    check(&["detect", &tiny, "--key", &k], 3, "shorter than one 2 s block");
    // a 1 ms stem can be embedded (nothing readable, and the user is told)
    check(&["embed", &tiny, outs, "--key", &k, "--payload", "1"], 0, "cannot be read back");
    assert_eq!(audio::read(&out).unwrap().len(), 44);
    // missing models are named
    let o = Command::new(env!("CARGO_BIN_EXE_stemmark"))
        .args(["--models", "/nonexistent-models", "embed", &ok, outs, "--key", &k, "--payload", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no model manifest"), "{}", text(&o));
}

#[test]
fn keygen_refuses_to_overwrite_and_passphrases_are_stable() {
    let e = env();
    let k = e.key("a");
    let o = e.run(&["keygen", &k]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let p1 = e.p("p1.key");
    let p2 = e.p("p2.key");
    for p in [&p1, &p2] {
        let o = e.run(&["--json", "keygen", p.to_str().unwrap(), "--passphrase", "open sesame"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let a = stemmark_models::keys::Key::load(&p1).unwrap();
    let b = stemmark_models::keys::Key::load(&p2).unwrap();
    assert_eq!(a.bytes(), b.bytes());
}

#[test]
fn eval_quick_runs_end_to_end_on_a_folder_of_items() {
    let e = env();
    let data = e.p("items");
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        let d = data.join(name);
        std::fs::create_dir_all(&d).unwrap();
        audio::write_wav(&d.join("foreground.wav"), &testkit::music_like(48_000, 4.5, i as u32 * 2 + 1)).unwrap();
        audio::write_wav(&d.join("background.wav"), &testkit::music_like(44_100, 4.5, i as u32 * 2 + 2)).unwrap();
    }
    let unmarked = e.p("unmarked");
    std::fs::create_dir_all(&unmarked).unwrap();
    audio::write_wav(&unmarked.join("a.wav"), &testkit::music_like(44_100, 4.5, 9)).unwrap();
    let out = e.p("report");
    let o = Command::new(env!("CARGO_BIN_EXE_stemmark"))
        .args(["eval", "--json", "--quick", "--data"])
        .arg(&data)
        .arg("--set")
        .arg(&e.models)
        .arg("--unmarked")
        .arg(&unmarked)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json(&o), r, "--json prints the report's JSON document on stdout, and nothing else");
    assert_eq!(r["items"], 2, "--quick takes two items");
    let set = &r["sets"][0];
    assert_eq!(set["blocks"], 4, "two items of two full blocks");
    assert_eq!(set["ber_separated"][0]["bits"], 4 * 32);
    // every wrong-key read and the unmarked file with 4 keys are false-positive trials
    assert_eq!(set["false_positives"]["trials"], 2 * 2 + 4);
    if std::process::Command::new("ffmpeg").arg("-version").output().is_ok() {
        assert_eq!(set["ber_codec"]["MP3 128 kbit/s"][1]["bits"], 4 * 32, "{set}");
    }
    assert_eq!(set["double_mark"][1]["items"], 2);
    // A folder of items is one scenario, named for the folder.
    let per = &set["scenarios"]["items"];
    assert_eq!(per["items"], 2, "{set}");
    assert_eq!(per["payload_mix"][0]["items"], 2);
    assert_eq!(per["snr"][1].as_array().unwrap().len(), 2);
    assert_eq!(per["sdr"][0].as_array().unwrap().len(), 2, "separator SDR per scenario and item");
    // Re-use: each item's separated foreground in the other item's background, read once each.
    assert_eq!(per["payload_reuse"]["items"], 2, "{per}");
    assert_eq!(per["payload_reuse"]["wrong"], 0, "{per}");
    assert_eq!(set["double_mark_ber"][0]["bits"], 4 * 32);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## BER (%) per stem") && md.contains("## Two marks on one stem"), "{md}");
    assert!(md.contains("## Per scenario: payloads per item") && md.contains("| items | foreground |"), "{md}");
    assert!(md.contains("| Origin |"), "Table 1 has at least its no-attack column: {md}");
    assert!(md.contains("## Re-use: a separated marked foreground in another song"), "{md}");
    // ViSQOL and the plots need Python packages from PyPI: measured, or skipped with a note.
    let notes = r["notes"].to_string();
    let visqol = set["quality"][0]["visqol"].as_array().unwrap();
    assert!(visqol.len() == 2 || notes.contains("ViSQOL skipped"), "{notes}");
    assert!(visqol.iter().all(|v| (1.0..=5.0).contains(&v.as_f64().unwrap())), "{visqol:?}");
    let plotted = ["ber-by-attack.png", "confidence.png", "mark-spectrogram.png"].iter().all(|f| out.join(f).is_file());
    assert!(plotted || notes.contains("plots skipped"), "{notes}");
}

#[test]
fn calibrate_reads_unmarked_and_other_marked_items_and_leaves_the_manifest_on_dry_run() {
    let e = env();
    let data = e.p("items");
    for (i, name) in ["one", "two"].iter().enumerate() {
        let d = data.join(name);
        std::fs::create_dir_all(&d).unwrap();
        audio::write_wav(&d.join("foreground.wav"), &testkit::music_like(44_100, 4.5, i as u32 * 2 + 1)).unwrap();
        audio::write_wav(&d.join("background.wav"), &testkit::music_like(44_100, 4.5, i as u32 * 2 + 2)).unwrap();
    }
    let manifest = std::fs::read(e.models.join("manifest.toml")).unwrap();
    let o = e.run(&["--json", "calibrate", "--data", data.to_str().unwrap(), "--items", "2", "--keys", "3", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    // 2 items × 5 paths (2 stems, mix, 2 separated stems) × 3 keys, unmarked and marked alike:
    // null readings, none naming a payload; the presence bound's levels counted.
    assert_eq!(r["readings"], 60, "{r}");
    assert_eq!(r["unmarked"]["readings"], 30, "{r}");
    assert_eq!(r["other_marks"]["readings"], 30, "{r}");
    assert_eq!((r["unmarked"]["found"].as_u64(), r["other_marks"]["found"].as_u64()), (Some(0), Some(0)), "{r}");
    // The key's one reading over the mix and its separated stems: 2 items × 2 kinds × 3 keys.
    assert_eq!((r["key_readings"]["readings"].as_u64(), r["key_readings"]["found"].as_u64()), (Some(12), Some(0)), "{r}");
    assert!(r["unmarked"]["found_upper_95"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["unmarked"]["presence"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["calibration"]["target_fpr"].as_f64(), Some(1e-6), "{r}");
    // 60 readings judge no level (the fit needs p·n ≥ 10 at 1e-1): the theory's scale.
    assert_eq!(r["calibration"]["null_std"].as_f64(), Some(1.0), "{r}");
    assert_eq!(std::fs::read(e.models.join("manifest.toml")).unwrap(), manifest, "--dry-run wrote the manifest");
    // With the search of `stemmark detect`: the same readings, judged at the threshold for 16 shifts.
    let o = e.run(&["--json", "calibrate", "--data", data.to_str().unwrap(), "--items", "2", "--keys", "3", "--dry-run", "--search"]);
    assert!(o.status.success(), "{}", text(&o));
    let searched = json(&o);
    assert_eq!(searched["readings"], 60, "{searched}");
    // τ for 16 shifts: Q(τ) 16× smaller (7.42 → 7.78 at 1e-6).
    assert!(searched["threshold"].as_f64().unwrap() > r["threshold"].as_f64().unwrap() + 0.3, "{searched} vs {r}");
}

#[test]
fn json_is_the_only_thing_on_stdout_for_bench_and_corpus() {
    // (keygen, embed, mix, separate, detect, eval and calibrate are parsed in the tests above,
    // export in the one below.)
    let e = env();
    let o = e.run(&["--json", "bench", "--quick"]);
    assert!(o.status.success(), "{}", text(&o));
    let tables = json(&o)["tables"].as_array().cloned().unwrap();
    assert_eq!(tables.len(), 4, "the DSP table, the tile channel's, the model table and the payload code's");
    for table in &tables[1..3] {
        let rows = table["rows"].as_array().unwrap();
        assert!(!rows.is_empty() && rows.iter().all(|r| r["× real time"].as_f64().is_some_and(|x| x > 0.0)), "{rows:?}");
    }
    let code = tables[3]["rows"].as_array().unwrap();
    assert_eq!(code.len(), 4, "{code:?}");
    assert!(code.iter().all(|r| r["z per block for ≥ 99 % payloads"].as_f64().is_some_and(|z| z > 0.0)), "{code:?}");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/manifest.json");
    for args in [vec!["--json", "corpus", "stats", "--out", manifest], vec!["corpus", "stats", "--json", "--out", manifest]] {
        let o = e.run(&args);
        assert!(o.status.success(), "{}", text(&o));
        let totals = json(&o)["totals"].as_array().cloned().unwrap();
        assert!(totals.iter().any(|t| t["split"] == "validation" && t["clips"].as_u64().unwrap() > 0), "{totals:?}");
    }
}

#[test]
fn export_json_names_what_it_wrote() {
    use stemmark_offline::train::nets::NetConfig;
    // A checkpoint of the tiny nets with small deterministic weights: the export builds graphs
    // from any weights with the config's names and shapes (no libtorch needed to make them).
    let e = env();
    let ckpt = e.p("checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    let cfg = NetConfig::tiny();
    cfg.save(&ckpt.join("nets.toml")).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = cfg
        .weight_shapes()
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let bytes = (0..n).flat_map(|i| (((i * 7 + k) % 13) as f32 * 0.01 - 0.06).to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| (name.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap()));
    safetensors::serialize_to_file(views, None, &ckpt.join("nets.safetensors")).unwrap();
    let out = e.p("exported");
    let o = e.run(&["--json", "export", ckpt.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["out"], out.to_str().unwrap(), "{r}");
    assert_eq!(r["weights"], ckpt.join("nets.safetensors").to_str().unwrap(), "{r}");
    for f in ["embedder.onnx", "detector.onnx", "separator.onnx", "manifest.toml"] {
        assert!(out.join(f).is_file(), "{f} missing from {:?}", only_file(&out));
    }
}
