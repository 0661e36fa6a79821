//! `cargo xtask test`: everything CI runs, from a fresh clone.

use std::process::Command;

use anyhow::{Result, bail};

use crate::setup;

pub fn main(args: &[String]) -> Result<()> {
    if let Some(bad) = args.first() {
        bail!("unknown test option {bad:?} (usage: cargo xtask test)");
    }
    let lib = setup::install_ort(false)?;
    // pedalboard hosts the VST3 in the plugin tests.
    crate::pytools::install_pedalboard()?;
    // The host tests load the built bundles, so build them first: release for the host test, debug
    // (with nice-plug's assert_process_allocs) for the no-allocation test.
    crate::bundle::run(vec!["stemmark-plugin".into(), "--release".into()])?;
    crate::bundle::run(vec!["stemmark-plugin".into(), "--debug".into()])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    setup::run(
        Command::new(&cargo)
            .current_dir(setup::root())
            .env("STEMMARK_ORT_LIB", &lib)
            .args(["test", "--workspace", "--exclude", "stemmark-tests", "--no-fail-fast"]),
    )?;
    // The end-to-end tests run real plugin hosts with worker threads in child processes; one at a
    // time, so they do not starve each other on a small machine.
    setup::run(
        Command::new(&cargo)
            .current_dir(setup::root())
            .env("STEMMARK_ORT_LIB", &lib)
            .args(["test", "-p", "stemmark-tests", "--no-fail-fast", "--", "--test-threads=1"]),
    )?;
    // The training pipeline links libtorch, so it (and the evaluation's attacks and NMR, which
    // use its code) builds and tests behind its feature.
    let libtorch = crate::torch::install_torch()?;
    setup::run(
        Command::new(&cargo)
            .current_dir(setup::root())
            .env("STEMMARK_ORT_LIB", &lib)
            .env("LIBTORCH", &libtorch)
            .args(["test", "-p", "stemmark-offline", "--features", "train", "--lib", "--no-fail-fast", "--", "train::", "eval::attacks::"]),
    )
}
