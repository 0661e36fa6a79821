//! `cargo xtask setup`: installs the ONNX Runtime shared library from its PyPI wheel into
//! `.deps/onnxruntime/lib/`, idempotently (a stamp file records what is installed).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const ORT_VERSION: &str = "1.31.1";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn ort_dir() -> PathBuf {
    root().join(".deps/onnxruntime")
}

/// Runs a command, failing with its name and exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn main(args: &[String]) -> Result<()> {
    let gpu = args.iter().any(|a| a == "--gpu");
    if let Some(bad) = args.iter().find(|a| *a != "--gpu") {
        bail!("unknown setup option {bad:?} (usage: cargo xtask setup [--gpu])");
    }
    install_ort(gpu)?;
    Ok(())
}

/// Installs `onnxruntime` (CPU) or `onnxruntime-gpu` (CUDA 13; also runs on the CPU).
pub fn install_ort(gpu: bool) -> Result<PathBuf> {
    let package = if gpu {
        "onnxruntime-gpu"
    } else {
        "onnxruntime"
    };
    let dir = ort_dir();
    let lib_dir = dir.join("lib");
    let stamp = dir.join("installed.txt");
    let want = format!("{package}=={ORT_VERSION}\n");
    let lib = lib_dir.join("libonnxruntime.so");
    if lib.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        println!(
            "setup: {package} {ORT_VERSION} already installed in {}",
            lib_dir.display()
        );
        return Ok(lib);
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!(
            "setup installs the Linux x86-64 wheel; on this platform set STEMMARK_ORT_LIB to an ONNX Runtime {ORT_VERSION} library"
        );
    }
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    println!("setup: downloading {package}=={ORT_VERSION} from PyPI");
    // The wheel is only unpacked, never imported, so any CPython tag will do; pin one so the
    // download does not depend on the local Python version.
    run(Command::new(python()?)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .args(["--python-version", "3.12", "--implementation", "cp"])
        .args([
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_27_x86_64",
        ])
        .arg("-d")
        .arg(&wheels)
        .arg(format!("{package}=={ORT_VERSION}")))?;
    let prefix = format!("{}-{ORT_VERSION}-", package.replace('-', "_"));
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .with_context(|| format!("pip left no {package} wheel in {}", wheels.display()))?;
    // Unpack into a fresh folder, then swap it in, so an interrupted setup never leaves a mix.
    let staging = dir.join("lib.partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let script = r#"
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            with z.open(n) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
"#;
    run(Command::new(python()?)
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&staging))?;
    let versioned = staging.join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if !versioned.is_file() {
        bail!(
            "{} holds no libonnxruntime.so.{ORT_VERSION}",
            wheel.display()
        );
    }
    std::fs::copy(&versioned, staging.join("libonnxruntime.so"))?;
    let _ = std::fs::remove_dir_all(&lib_dir);
    std::fs::rename(&staging, &lib_dir)?;
    std::fs::write(&stamp, want)?;
    println!(
        "setup: installed {package} {ORT_VERSION} into {}",
        lib_dir.display()
    );
    Ok(lib)
}

pub fn python() -> Result<&'static str> {
    for p in ["python3", "python"] {
        if Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(p);
        }
    }
    bail!(
        "python3 with pip is needed to fetch the ONNX Runtime wheel from PyPI (apt-get install python3-pip)"
    )
}
