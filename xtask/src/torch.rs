//! `cargo xtask setup-torch`: installs libtorch for the training pipeline (`--features train`)
//! from the PyPI wheels, idempotently, into `.deps/torch/` (a `pip install --target` folder laid out
//! like `site-packages`).
//!
//! Only `torch` itself is installed (`--no-deps`: the Python dependencies and the 4 GB of CUDA
//! wheels are not needed to link), plus the two CUDA runtime libraries that `libtorch_cpu.so`
//! links even on a CPU-only machine (`libcudart.so.13`, `libcupti.so.13`). `torch==2.11.0` on PyPI
//! is the CUDA 13.0 build, the same as the GPU machine's `/opt/torch/.venv`, so a binary built
//! here runs there against that machine's own libraries.
//!
//! Build the training code with the returned folder:
//! `LIBTORCH=$PWD/.deps/torch/torch cargo build -p stemmark-offline --features train`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;

pub const TORCH_VERSION: &str = "2.11.0";
/// The CUDA runtime libraries `libtorch_cpu.so` needs at load time (checked with `ldd`).
pub const CUDA_TOOLKIT: &str = "cuda-toolkit[cudart,cupti]==13.0.2";

/// The install folder (`pip --target`), holding `torch/` and `nvidia/`.
pub fn torch_dir() -> PathBuf {
    setup::root().join(".deps/torch")
}

/// Installs torch (if not already there) and returns the `torch` package folder, i.e. `LIBTORCH`.
pub fn install_torch() -> Result<PathBuf> {
    let dir = torch_dir();
    let libtorch = dir.join("torch");
    let stamp = dir.join("installed.txt");
    let want = format!("torch=={TORCH_VERSION}\n{CUDA_TOOLKIT}\n");
    let lib = libtorch.join("lib/libtorch_cpu.so");
    if lib.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        println!(
            "setup-torch: torch {TORCH_VERSION} already installed in {}",
            libtorch.display()
        );
        return Ok(libtorch);
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!(
            "setup-torch installs the Linux x86-64 wheels; elsewhere set LIBTORCH to a libtorch {TORCH_VERSION}"
        );
    }
    // Install into a fresh folder, then swap it in, so an interrupted set-up never leaves a mix.
    let staging = setup::root().join(".deps/torch.partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let pip = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new(setup::python()?);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&staging)
        .args(args);
        // A folder of already downloaded wheels (e.g. on a slow link) is used first when given.
        if let Some(links) = std::env::var_os("STEMMARK_WHEELS") {
            cmd.arg("--find-links").arg(links);
        }
        setup::run(&mut cmd)
    };
    println!("setup-torch: installing torch=={TORCH_VERSION} (a 530 MB wheel) from PyPI");
    pip(&["--no-deps", &format!("torch=={TORCH_VERSION}")])?;
    println!("setup-torch: installing {CUDA_TOOLKIT}");
    pip(&[CUDA_TOOLKIT])?;
    if !staging.join("torch/lib/libtorch_cpu.so").is_file() {
        bail!(
            "pip left no torch/lib/libtorch_cpu.so in {}",
            staging.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir)
        .with_context(|| format!("cannot move {} to {}", staging.display(), dir.display()))?;
    std::fs::write(&stamp, want)?;
    println!(
        "setup-torch: installed torch {TORCH_VERSION} into {}",
        libtorch.display()
    );
    Ok(libtorch)
}
