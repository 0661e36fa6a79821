//! Project-local Python venvs for the optional tools the CLI runs (plots, ViSQOL, Spleeter):
//! created under `.deps/` in the checkout and filled from PyPI with pinned versions on first use,
//! never anywhere else.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `.deps/` of the checkout this binary was built from.
pub fn deps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).join(".deps")
}

/// A script shipped in `offline/scripts/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

/// Python of `.deps/<venv>`, creating the venv when it is missing.
pub fn venv_python(venv: &str) -> Result<PathBuf> {
    let dir = deps_dir().join(venv);
    let py = dir.join("bin").join("python");
    if !py.is_file() {
        eprintln!("creating the venv {}", dir.display());
        let s = Command::new("python3").args(["-m", "venv"]).arg(&dir).stdout(std::io::stderr()).status().context("cannot run python3")?;
        if !s.success() || !py.is_file() {
            bail!("python3 -m venv {} failed (is python3-venv installed?)", dir.display());
        }
    }
    Ok(py)
}

/// The last `n` lines of a tool's output.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `pip install [extra] specs` with `python`; a failure carries the tail of pip's output.
pub fn pip_install(python: &Path, extra: &[&str], specs: &[&str]) -> Result<()> {
    let out = Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(extra)
        .args(specs)
        .output()
        .context("cannot run pip")?;
    if !out.status.success() {
        let output = tail_lines(&[out.stdout, out.stderr].concat(), 20);
        bail!("pip install {} with {} failed ({}):\n{output}", specs.join(" "), python.display(), out.status);
    }
    Ok(())
}

/// Python of `.deps/<venv>` in which `check` (a Python statement, e.g. `import matplotlib`) runs,
/// creating the venv and `pip install`ing the pinned `specs` first when needed and `install` is
/// true. An error says what is missing and how to get it.
pub fn python_with(venv: &str, check: &str, specs: &[&str], install: bool) -> Result<PathBuf> {
    let py = deps_dir().join(venv).join("bin").join("python");
    let ok = |py: &Path| Command::new(py).args(["-c", check]).output().is_ok_and(|o| o.status.success());
    if py.exists() && ok(&py) {
        return Ok(py);
    }
    if !install {
        bail!("{} is not installed in {} ({})", specs.join(" "), py.display(), check);
    }
    let py = venv_python(venv)?;
    eprintln!("installing {} into {}", specs.join(" "), py.display());
    pip_install(&py, &[], specs)?;
    if !ok(&py) {
        bail!("{} was installed with {} but `{check}` still fails", specs.join(" "), py.display());
    }
    Ok(py)
}
