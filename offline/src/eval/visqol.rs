//! ViSQOL (PyPI `visqol-python`, a pure-Python port of Google's ViSQOL v3.3.3) for the
//! evaluation's quality table: audio-mode MOS-LQO of marked against original stems.
//!
//! The package is installed, pinned with its dependencies, into the project's venv
//! `<workspace>/.deps/venv` (the venv `xtask/src/pytools.rs` and the corpus tools use; created
//! when missing, never recreated or wiped here). Scoring runs `offline/scripts/visqol_score.py`
//! (compiled into the binary, written to a temporary folder) once for all pairs.
//!
//! ViSQOL scores mono signals: callers pass the mid channel (mean of the channels) of each stem,
//! which is also what ViSQOL's own WAV loader does with stereo files. Audio mode assumes 48 kHz;
//! the script resamples both signals there (see its docstring).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::audio::{self, Audio};

/// visqol-python release the script is written against.
pub const VISQOL_VERSION: &str = "3.8.0";

/// What `pip install` gets: visqol-python and its whole dependency tree, pinned (the versions
/// PyPI resolved for CPython 3.11 on x86-64 Linux when this was written). numpy is shared with
/// matplotlib and pedalboard in the same venv; the pin is the version already there.
/// libsvm-official is a source distribution: pip compiles it, so a C compiler is needed.
pub const PINS: &[&str] = &[
    "visqol-python==3.8.0",
    "numpy==2.4.6", // keep second: also passed with ACCEL_PINS
    "scipy==1.17.1",
    "soundfile==0.14.0",
    "libsvm-official==3.37.0",
    "cffi==2.1.1",
    "pycparser==3.12",
    "typing_extensions==4.16.0",
];

/// visqol-python's optional `accel` extra: Numba JIT kernels for the gammatone filterbank, NSIM
/// and patch matching. Same scores (checked: identical to 4 decimals on real stems), about 8x
/// faster once compiled (20 s stem pair: 26 s → 3.3 s on 2 cores; the first run compiles for
/// ~10 s and Numba caches that on disk). Best effort: without it scoring is just slower.
pub const ACCEL_PINS: &[&str] = &["numba==0.68.1", "llvmlite==0.50.0"];

const SCRIPT: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/visqol_score.py"));

/// `<workspace>/.deps/venv`, as in `xtask/src/pytools.rs`.
fn venv_dir() -> PathBuf {
    crate::pyenv::deps_dir().join("venv")
}

fn importable(python: &Path) -> bool {
    let check = format!(
        "import sys, scipy.signal, soundfile, visqol; from libsvm import svmutil; \
         sys.exit(visqol.__version__ != '{VISQOL_VERSION}')"
    );
    Command::new(python).args(["-c", &check]).output().is_ok_and(|o| o.status.success())
}

fn numba_importable(python: &Path) -> bool {
    Command::new(python).args(["-c", "import numba"]).output().is_ok_and(|o| o.status.success())
}

/// Python of `.deps/venv` with visqol-python importable, installing it (pinned) on first use when
/// `install` is true; otherwise a clear error. Numba ([`ACCEL_PINS`]) is added when installs are
/// allowed and it is missing; if it cannot be had, scoring goes on without it (slower).
pub fn ensure(install: bool) -> Result<PathBuf> {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let have = python.is_file() && importable(&python);
    if have && (!install || numba_importable(&python)) {
        return Ok(python);
    }
    if !have && !install {
        bail!(
            "visqol-python {VISQOL_VERSION} is not installed in {} (allow installs, or run: {} -m pip install {} {})",
            venv.display(),
            python.display(),
            PINS.join(" "),
            ACCEL_PINS.join(" ")
        );
    }
    let python = crate::pyenv::venv_python("venv")?;
    if !have {
        eprintln!("installing visqol-python=={VISQOL_VERSION} (pinned, with its dependencies) into {}", venv.display());
        crate::pyenv::pip_install(&python, &[], PINS).with_context(|| format!("installing visqol-python {VISQOL_VERSION} into {}", venv.display()))?;
        if !importable(&python) {
            bail!("visqol-python {VISQOL_VERSION} was installed into {} but does not import", venv.display());
        }
    }
    eprintln!("installing Numba for visqol-python (optional, ~8x faster scoring) into {}", venv.display());
    // numpy pinned again so that pip fails rather than moving the venv's shared numpy.
    if let Err(e) = crate::pyenv::pip_install(&python, &[], &[ACCEL_PINS, &PINS[1..2]].concat()) {
        eprintln!("warning: ViSQOL runs without Numba (slower): {e:#}");
    }
    Ok(python)
}

/// Rejects what ViSQOL cannot score before any Python runs.
fn check_pairs(pairs: &[(Vec<f32>, Vec<f32>)], rate: u32) -> Result<()> {
    if rate == 0 {
        bail!("ViSQOL: sample rate 0");
    }
    for (i, (r, d)) in pairs.iter().enumerate() {
        if r.len() != d.len() {
            bail!("ViSQOL pair {i}: reference has {} samples, degraded {}; they must be equal", r.len(), d.len());
        }
        if r.is_empty() {
            bail!("ViSQOL pair {i}: empty signals");
        }
        for (what, x) in [("reference", r), ("degraded", d)] {
            if let Some(k) = x.iter().position(|v| !v.is_finite()) {
                bail!(
                    "ViSQOL pair {i}: the {what} signal has a non-finite sample ({}) at {:.3} s",
                    x[k],
                    k as f64 / rate as f64
                );
            }
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Line {
    index: usize,
    moslqo: f64,
}

/// ViSQOL audio-mode MOS-LQO of each (reference, degraded) pair (mono, `rate` Hz, equal lengths),
/// all pairs in ONE Python process; `progress(done, total)` is called as each pair finishes.
/// ViSQOL needs about a second of audio and a reference that is not silent; the script says so.
pub fn scores(
    python: &Path,
    pairs: &[(Vec<f32>, Vec<f32>)],
    rate: u32,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    check_pairs(pairs, rate)?;
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let dir = tempfile::tempdir().context("cannot create a temporary folder for ViSQOL")?;
    for (i, (r, d)) in pairs.iter().enumerate() {
        audio::write_wav(&dir.path().join(format!("ref_{i}.wav")), &Audio::new(rate, vec![r.clone()]))?;
        audio::write_wav(&dir.path().join(format!("deg_{i}.wav")), &Audio::new(rate, vec![d.clone()]))?;
    }
    let script = dir.path().join("visqol_score.py");
    std::fs::write(&script, SCRIPT)?;
    let err_path = dir.path().join("stderr.txt");
    let err_file = std::fs::File::create(&err_path)?;
    let mut child = Command::new(python)
        .arg(&script)
        .arg(dir.path())
        .arg(pairs.len().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err_file))
        .spawn()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut out = Vec::with_capacity(pairs.len());
    let mut bad_line = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the ViSQOL script's output")?;
        match serde_json::from_str::<Line>(&line) {
            Ok(l) if l.index == out.len() => {
                out.push(l.moslqo);
                progress(out.len(), pairs.len());
            }
            _ => {
                bad_line = Some(line);
                break;
            }
        }
    }
    if bad_line.is_some() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    if let Some(line) = bad_line {
        bail!("ViSQOL script printed an unexpected line: {line:?}\n{}", crate::pyenv::tail_lines(&stderr, 20));
    }
    if !status.success() || out.len() != pairs.len() {
        bail!(
            "ViSQOL scoring failed ({status}) after {} of {} pairs:\n{}",
            out.len(),
            pairs.len(),
            crate::pyenv::tail_lines(&stderr, 20)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const RATE: u32 = 44_100;

    /// A bogus Python: these checks must fail before anything is run.
    fn no_python() -> &'static Path {
        Path::new("/nonexistent/python")
    }

    #[test]
    fn rejects_bad_pairs_before_python() {
        let mut p = |_: usize, _: usize| {};
        let e = scores(no_python(), &[(vec![0.1; 10], vec![0.1; 9])], RATE, &mut p).unwrap_err().to_string();
        assert!(e.contains("pair 0") && e.contains("10 samples, degraded 9"), "{e}");
        let mut d = vec![0.1f32; 44_100 * 2];
        d[44_100] = f32::NAN;
        let pairs = vec![(vec![0.1; 4], vec![0.1; 4]), (vec![0.1f32; 44_100 * 2], d)];
        let e = scores(no_python(), &pairs, RATE, &mut p).unwrap_err().to_string();
        assert!(e.contains("pair 1") && e.contains("degraded signal has a non-finite sample (NaN) at 1.000 s"), "{e}");
        let e = scores(no_python(), &[(vec![f32::INFINITY], vec![0.0])], RATE, &mut p).unwrap_err().to_string();
        assert!(e.contains("reference signal has a non-finite sample (inf)"), "{e}");
        let e = scores(no_python(), &[(vec![], vec![])], RATE, &mut p).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        assert!(scores(no_python(), &[], RATE, &mut p).unwrap().is_empty());
    }

    /// Deterministic uniform white noise in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// 10 s of music-like audio: a slowly gated harmonic tone over a faint noise floor.
    fn music() -> Vec<f32> {
        let n = RATE as usize * 10;
        let floor = noise(n, 7);
        (0..n)
            .map(|i| {
                let t = i as f64 / RATE as f64;
                let tone: f64 = (1..8)
                    .map(|k| {
                        let k = k as f64;
                        0.2 / k * (2.0 * std::f64::consts::PI * 220.0 * k * t).sin()
                            * (0.5 + 0.5 * (std::f64::consts::PI * 0.5 * k * t).sin())
                    })
                    .sum();
                (tone + 0.02 * floor[i] as f64) as f32
            })
            .collect()
    }

    fn with_noise(x: &[f32], snr_db: f64, seed: u64) -> Vec<f32> {
        let n = noise(x.len(), seed);
        let g = rms(x) / rms(&n) / 10f64.powf(snr_db / 20.0);
        x.iter().zip(&n).map(|(&a, &b)| (a as f64 + g * b as f64) as f32).collect()
    }

    /// Needs the venv (installs visqol-python on first use):
    /// `cargo test -p stemmark-offline --release --lib eval::visqol -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn hand_reasoned_cases() {
        let t = Instant::now();
        let python = ensure(true).unwrap();
        eprintln!("ensure: {:.1} s", t.elapsed().as_secs_f64());
        let x = music();
        let pairs = vec![(x.clone(), x.clone()), (x.clone(), with_noise(&x, 40.0, 1)), (x.clone(), with_noise(&x, 10.0, 2))];
        let mut seen = Vec::new();
        let t = Instant::now();
        let s = scores(&python, &pairs, RATE, &mut |d, n| seen.push((d, n))).unwrap();
        let secs = t.elapsed().as_secs_f64();
        eprintln!("identical {:.4}, 40 dB SNR {:.4}, 10 dB SNR {:.4}; {:.1} s per 10 s pair", s[0], s[1], s[2], secs / 3.0);
        assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
        assert!(s.iter().all(|v| (1.0..=5.0).contains(v)), "{s:?}");
        // The audio-mode SVR maps a perfect match to about 4.732 (the package's
        // castanets_identity conformance case; measured 4.7321 here too).
        assert!(s[0] > 4.65, "identical: {}", s[0]);
        assert!(s[1] > s[2] + 0.5, "40 dB {} vs 10 dB {}", s[1], s[2]);
    }

    /// The script's own errors come back with its stderr.
    #[test]
    #[ignore]
    fn too_short_is_a_clear_error() {
        let python = ensure(true).unwrap();
        let x = music()[..RATE as usize / 2].to_vec();
        let e = scores(&python, &[(x.clone(), x)], RATE, &mut |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("pair 0") && e.contains("minimum patch size"), "{e}");
        let z = vec![0.0f32; RATE as usize * 2];
        let e = scores(&python, &[(z.clone(), z)], RATE, &mut |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("reference is silent"), "{e}");
    }

    /// Scores real files, mid channel of each, cut to the shorter of the two (all files at one
    /// rate): `STEMMARK_VISQOL_PAIRS=ref.wav:marked.wav,ref2.wav:marked2.wav cargo test ...
    /// score_files_from_env -- --ignored --nocapture`. Prints one line per pair.
    #[test]
    #[ignore]
    fn score_files_from_env() {
        let Ok(list) = std::env::var("STEMMARK_VISQOL_PAIRS") else {
            eprintln!("STEMMARK_VISQOL_PAIRS is not set; nothing to do");
            return;
        };
        let python = ensure(true).unwrap();
        let mut names = Vec::new();
        let mut pairs = Vec::new();
        let mut rate = 0;
        for item in list.split(',') {
            let (r, d) = item.split_once(':').expect("ref:deg");
            let (ra, da) = (audio::read(Path::new(r)).unwrap(), audio::read(Path::new(d)).unwrap());
            assert_eq!(ra.rate, da.rate, "{item}: rates differ");
            assert!(rate == 0 || rate == ra.rate, "all pairs must share a rate");
            rate = ra.rate;
            let (mut rm, mut dm) = (ra.mid(), da.mid());
            let n = rm.len().min(dm.len());
            rm.truncate(n);
            dm.truncate(n);
            names.push(item.to_string());
            pairs.push((rm, dm));
        }
        let t = Instant::now();
        let s = scores(&python, &pairs, rate, &mut |d, n| eprintln!("{d}/{n} ({:.1} s)", t.elapsed().as_secs_f64()))
            .unwrap();
        for (name, (v, (r, _))) in names.iter().zip(s.iter().zip(&pairs)) {
            println!("MOS-LQO {v:.4}  ({:.1} s)  {name}", r.len() as f64 / rate as f64);
        }
    }
}
