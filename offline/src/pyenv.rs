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

/// Python of `.deps/<venv>` in which `check` (a Python statement, e.g. `import matplotlib`) runs,
/// creating the venv and `pip install`ing the pinned `specs` first when needed and `install` is
/// true. An error says what is missing and how to get it.
pub fn python_with(venv: &str, check: &str, specs: &[&str], install: bool) -> Result<PathBuf> {
    let dir = deps_dir().join(venv);
    let py = dir.join("bin").join("python");
    let ok = |py: &Path| Command::new(py).args(["-c", check]).output().is_ok_and(|o| o.status.success());
    if py.exists() && ok(&py) {
        return Ok(py);
    }
    if !install {
        bail!("{} is not installed in {} ({})", specs.join(" "), dir.display(), check);
    }
    if !py.exists() {
        eprintln!("creating the venv {}", dir.display());
        let s = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().context("cannot run python3")?;
        if !s.success() {
            bail!("python3 -m venv {} failed (is python3-venv installed?)", dir.display());
        }
    }
    eprintln!("installing {} into {}", specs.join(" "), dir.display());
    let out = Command::new(&py)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(specs)
        .output()
        .context("cannot run pip")?;
    if !out.status.success() || !ok(&py) {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("pip install {} into {} failed:\n{}", specs.join(" "), dir.display(), tail.join("\n"));
    }
    Ok(py)
}
