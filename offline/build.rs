//! With the `train` feature, bakes run-time library paths for libtorch into every binary and test
//! of this crate, so they run with no `LD_LIBRARY_PATH`: the local install made by
//! `cargo xtask setup-torch` (or whatever `LIBTORCH` names) and the GPU machine's torch venv.
//! libtorch's own `$ORIGIN` run paths then find the CUDA runtime (`nvidia/cu13/lib`) beside it.
//!
//! Build: `LIBTORCH=$PWD/.deps/torch/torch cargo build -p stemmark-offline --features train`.

use std::path::PathBuf;

/// Where the GPU machine has torch 2.11 (CUDA 13.0) installed.
const GPU_MACHINE_TORCH_LIB: &str = "/opt/torch/.venv/lib/python3.12/site-packages/torch/lib";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        dirs.push(PathBuf::from(libtorch).join("lib"));
    }
    if let Some(root) = manifest.parent() {
        dirs.push(root.join(".deps/torch/torch/lib"));
    }
    dirs.push(PathBuf::from(GPU_MACHINE_TORCH_LIB));
    dirs.dedup();
    for d in dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", d.display());
    }
}
