//! Python tools the tests use, installed from PyPI into the project's venv `.deps/venv` (shared
//! with the corpus tools, which keep music21 there: never recreated or wiped here).
//!
//! The file is also compiled into the plugin tests (`#[path]`), so it uses only std and anyhow.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root: xtask and tests both live one level below it.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("a workspace member")
        .to_path_buf()
}

/// The venv's Python, creating the venv if it is missing.
pub fn venv_python() -> Result<PathBuf> {
    let venv = root().join(".deps/venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        println!("pytools: creating {}", venv.display());
        let system = ["python3", "python"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .context("python3 is needed for the venv (apt-get install python3-venv)")?;
        let status = Command::new(system)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !status.success() || !python.is_file() {
            bail!("`{system} -m venv {}` failed ({status})", venv.display());
        }
    }
    Ok(python)
}

/// Installs PyPI `pedalboard` (Spotify's VST3/AU host for Python) into the venv if it is not
/// there yet, and returns the venv's Python.
pub fn install_pedalboard() -> Result<PathBuf> {
    let python = venv_python()?;
    let have = Command::new(&python)
        .args(["-c", "import pedalboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        println!(
            "pytools: installing pedalboard from PyPI into {}",
            python.display()
        );
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "pedalboard",
            ])
            .status()
            .context("cannot run pip in the venv")?;
        if !status.success() {
            bail!("pip install pedalboard failed ({status})");
        }
    }
    Ok(python)
}
