//! `cargo xtask test`: everything CI runs, from a fresh clone.
//!
//! Every group runs even when an earlier one fails, so one run shows every red test; the summary at
//! the end names the groups that failed and the command exits non-zero.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;

pub fn main(args: &[String]) -> Result<()> {
    if let Some(bad) = args.first() {
        bail!("unknown test option {bad:?} (usage: cargo xtask test)");
    }
    // Incremental caches (~0.6 GiB under target/debug/incremental) only pay off when one edits and
    // rebuilds; a test run from a fresh clone (CI, a new machine) never does. An explicit
    // CARGO_INCREMENTAL from the caller wins.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        // SAFETY: still single-threaded here; every cargo started below inherits it.
        unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
    }
    let lib = setup::install_ort(false)?;
    // pedalboard hosts the VST3 in the plugin tests.
    crate::pytools::install_pedalboard()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = |args: &[&str]| {
        let mut c = Command::new(&cargo);
        c.current_dir(setup::root()).env("STEMMARK_ORT_LIB", &lib).args(args);
        c
    };
    let mut failed = Vec::new();
    let mut group = |name: &str, result: Result<()>| {
        if let Err(e) = result {
            eprintln!("\nxtask test: group `{name}` failed: {e:#}\n");
            failed.push(name.to_string());
        }
    };
    // The host tests load the built bundles, so build them first: release for the host test, debug
    // (with nice-plug's assert_process_allocs) for the no-allocation test. The debug build is of the
    // whole workspace, so its dependencies are built once, with the features the tests use too.
    group("bundle release", crate::bundle::run(vec!["stemmark-plugin".into(), "--release".into()]));
    group(
        "bundle debug",
        crate::bundle::run(vec!["stemmark-plugin".into(), "--debug".into(), "--workspace".into()]),
    );
    group(
        "workspace",
        setup::run(&mut test(&["test", "--workspace", "--exclude", "stemmark-tests", "--no-fail-fast"])),
    );
    // The end-to-end tests run real plugin hosts with worker threads in child processes; one at a
    // time, so they do not starve each other on a small machine. They are named one by one with
    // `--workspace` rather than selected with `-p stemmark-tests`: cargo resolves dependency
    // features for the packages selected, and `-p` alone would build a second copy of most
    // dependencies (and of our crates) with a narrower feature set.
    let e2e = end_to_end_tests().and_then(|names| {
        let mut args = vec!["test", "--workspace", "--no-fail-fast"];
        names.iter().for_each(|n| args.extend(["--test", n.as_str()]));
        args.extend(["--", "--test-threads=1"]);
        setup::run(&mut test(&args))
    });
    group("end-to-end", e2e);
    // The training pipeline links libtorch, so it (and the evaluation's attacks and NMR, which
    // use its code) builds and tests behind its feature. tch changes the features of shared
    // dependencies, so this group builds its own copy of them whatever it selects; `-p` keeps
    // that copy to what the offline crate needs (with `--workspace` it rebuilt the plugin's GUI
    // stack too). One test at a time: libtorch's thread count and BLAS state are process-wide,
    // and the exact-resume tests compare runs bit for bit (seen once: joint_resumes_exactly red
    // beside the others, green alone and in four other full runs).
    let train = crate::torch::install_torch().and_then(|libtorch| {
        setup::run(test(&[
            "test", "-p", "stemmark-offline", "--features", "train", "--lib", "--no-fail-fast", "--", "train::",
            "eval::attacks::", "--test-threads=1",
        ])
        .env("LIBTORCH", &libtorch))
    });
    group("train", train);
    if failed.is_empty() {
        println!("xtask test: every group passed");
        Ok(())
    } else {
        bail!("{} group(s) failed: {} (their failing tests are listed above each group's summary)", failed.len(), failed.join(", "))
    }
}

/// The integration tests of the `stemmark-tests` package: one per file in `tests/tests/`.
fn end_to_end_tests() -> Result<Vec<String>> {
    let dir = setup::root().join("tests/tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(String::from))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no end-to-end tests in {}", dir.display());
    }
    Ok(names)
}
