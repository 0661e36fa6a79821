//! The plugins, loaded from their built bundles by a real CLAP host (clack-host).
//!
//! Bundles come from `cargo xtask bundle` (release, `target/bundled/`) and
//! `cargo xtask bundle --debug` (debug with `assert_process_allocs`, `target/bundled-debug/`);
//! `cargo xtask test` builds both first. A missing bundle fails the test with the command to run.
//!
//! The host runs in a child process: this test binary re-runs itself with only the ignored test
//! [`host_child`] selected and the bundle path in an environment variable. That way a plugin that
//! crashes or aborts fails one test with a readable report instead of killing the harness, and
//! nice-plug's logger gets `NICE_LOG` pointing at a file from the start (its stderr logger can
//! deadlock when stderr is a closed pipe, and `set_var` in a threaded harness is unsound).

#[path = "../src/clap_host.rs"]
mod clap_host;

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clack_host::prelude::*;

/// Selects the bundle [`host_child`] loads; unset means "not a child", and it does nothing.
const CHILD_BUNDLE_ENV: &str = "STEMMARK_HOST_TEST_BUNDLE";

const EMBED_ID: &str = "org.stemmark.embed";
const DETECT_ID: &str = "org.stemmark.detect";

const SAMPLE_RATE: f64 = 48_000.0;
/// Host buffer sizes, cycled: 1 sample, the maximum, odd and non-power-of-two sizes.
const BLOCK_SIZES: [usize; 8] = [512, 1, 64, 1024, 37, 480, 1000, 256];
const SECONDS: f64 = 3.0;

#[test]
fn release_bundle_lists_both_plugins_and_passes_audio_through() {
    let bundle = require_bundle("bundled", "cargo xtask bundle stemmark-plugin --release");

    // The VST3 bundle carries the same library.
    let vst3 = bundle
        .with_extension("vst3")
        .join("Contents")
        .join(format!("{}-linux", std::env::consts::ARCH))
        .join("Stemmark.so");
    let same = std::fs::read(&vst3).ok() == std::fs::read(&bundle).ok();
    assert!(same, "{} differs from {}", vst3.display(), bundle.display());

    run_host_in_child(&bundle).assert_ok();
}

#[test]
fn debug_bundle_process_never_allocates() {
    // The debug bundle is built with `assert_process_allocs`: nice-plug wraps every `process()`
    // call in `assert_no_alloc`, and an allocation there makes its global allocator call
    // `handle_alloc_error`, which aborts the host: SIGABRT, exit status 134 in a shell. Exit 0
    // after processing seconds of audio in varying buffer sizes means no allocation happened.
    let bundle = require_bundle(
        "bundled-debug",
        "cargo xtask bundle stemmark-plugin --debug",
    );
    let run = run_host_in_child(&bundle);
    run.assert_ok();
    // nice-plug's debug assertions (thread and buffer checks) only log; treat them as failures.
    assert!(
        !run.log.contains("Debug assertion failed"),
        "nice-plug reported a debug assertion:\n{}",
        run.log
    );
}

/// The host side, run by the tests above in a child process (see the module docs).
#[test]
#[ignore = "runs in a child process started by the other tests in this file"]
fn host_child() {
    let Some(bundle) = std::env::var_os(CHILD_BUNDLE_ENV) else {
        return;
    };
    if let Err(err) = host_session(Path::new(&bundle)) {
        panic!("host session failed: {err:#}");
    }
}

/// What a child host run left behind.
struct ChildRun {
    bundle: PathBuf,
    status: std::process::ExitStatus,
    output: String,
    log: String,
}

impl ChildRun {
    fn assert_ok(&self) {
        if self.status.success() {
            return;
        }
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&self.status);
        #[cfg(not(unix))]
        let signal: Option<i32> = None;
        let hint = match signal {
            Some(6) => {
                "\nSIGABRT (exit 134 in a shell): in a debug bundle this is most likely \
                 assert_process_allocs catching an allocation in process(); see the log."
            }
            Some(_) => "\nThe host process was killed by a signal: the plugin crashed.",
            None => "",
        };
        panic!(
            "host run against {} failed: {} (signal {signal:?}){hint}\n--- host output ---\n{}\
             \n--- plugin log (NICE_LOG) ---\n{}",
            self.bundle.display(),
            self.status,
            self.output,
            self.log
        );
    }
}

/// Re-runs this test binary with only [`host_child`] selected, against `bundle`.
fn run_host_in_child(bundle: &Path) -> ChildRun {
    let log_dir = tempfile::tempdir().expect("temp dir");
    let log_path = log_dir.path().join("nice-plug.log");
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new(exe)
        .args([
            "host_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_BUNDLE_ENV, bundle)
        .env("NICE_LOG", &log_path)
        .output()
        .expect("start the host child process");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Guards against the filter silently matching nothing.
    assert!(
        !out.status.success() || output.contains("1 passed"),
        "the child ran no host session:\n{output}"
    );
    ChildRun {
        bundle: bundle.to_path_buf(),
        status: out.status,
        output,
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
    }
}

/// `target/<dir>/Stemmark.clap`, or a failure that names the command that builds it.
fn require_bundle(dir: &str, command: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"));
    let bundle = target.join(dir).join("Stemmark.clap");
    assert!(
        bundle.is_file(),
        "{} is missing: build it with `{command}` (`cargo xtask test` does this first)",
        bundle.display()
    );
    warn_if_stale(&bundle, &root.join("plugin"));
    bundle
}

/// A bundle older than the plugin's sources tests old code; say so rather than fail, since
/// editing a comment should not break the suite.
fn warn_if_stale(bundle: &Path, plugin_dir: &Path) {
    fn newest(path: &Path) -> Option<SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        std::fs::read_dir(path)
            .ok()?
            .flatten()
            .filter_map(|e| newest(&e.path()))
            .max()
    }
    let built = std::fs::metadata(bundle).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(source)) = (built, newest(plugin_dir))
        && source > built
    {
        eprintln!(
            "warning: {} is older than the sources in {}; rebuild it with `cargo xtask bundle`",
            bundle.display(),
            plugin_dir.display()
        );
    }
}

/// Loads the bundle, checks its descriptors, and runs both plugins on a test signal.
fn host_session(bundle: &Path) -> Result<()> {
    let entry = clap_host::load(bundle)?;
    let factory = entry
        .get_plugin_factory()
        .context("the bundle has no CLAP plugin factory")?;

    let mut found = Vec::new();
    for descriptor in factory.plugin_descriptors() {
        let text = |s: Option<&CStr>| s.map(|s| s.to_string_lossy().into_owned());
        let id = text(descriptor.id()).context("a descriptor without id")?;
        let name = text(descriptor.name()).unwrap_or_default();
        let features: Vec<String> = descriptor
            .features()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        println!("descriptor: {id} \"{name}\" {features:?}");
        found.push((id, name, features));
    }
    let ids: Vec<&str> = found.iter().map(|(id, _, _)| id.as_str()).collect();
    ensure!(ids == [EMBED_ID, DETECT_ID], "plugin ids {ids:?}");
    let (_, embed_name, embed_features) = &found[0];
    let (_, detect_name, detect_features) = &found[1];
    ensure!(
        embed_name == "Stemmark Embed",
        "Embed is named {embed_name:?}"
    );
    ensure!(
        detect_name == "Stemmark Detect",
        "Detect is named {detect_name:?}"
    );
    ensure!(
        embed_features.iter().any(|f| f == "audio-effect"),
        "{embed_features:?}"
    );
    ensure!(
        detect_features.iter().any(|f| f == "audio-effect"),
        "{detect_features:?}"
    );
    ensure!(
        detect_features.iter().any(|f| f == "analyzer"),
        "{detect_features:?}"
    );

    let input = test_signal();
    for id in [DETECT_ID, EMBED_ID] {
        // Embed reports a latency (about 2 s) and, without a key, passes audio through delayed
        // by exactly that; Detect reports none.
        let (output, latency) = run_plugin(&entry, id, &input)?;
        let latency = latency as usize;
        ensure!(
            latency < input[0].len(),
            "{id}: latency {latency} leaves nothing to compare"
        );
        for (channel, (inp, out)) in input.iter().zip(&output).enumerate() {
            if let Some(i) = out[..latency].iter().position(|x| x.to_bits() != 0) {
                bail!("{id}: channel {channel} is not silent before its latency, at {i}");
            }
            let delayed = &out[latency..];
            if let Some(i) = inp
                .iter()
                .zip(delayed)
                .position(|(a, b)| a.to_bits() != b.to_bits())
            {
                bail!(
                    "{id}: channel {channel} differs at sample {i}: in {} out {}",
                    inp[i],
                    delayed[i]
                );
            }
        }
        println!(
            "{id}: {} frames passed through bit-identically, delayed by {latency}",
            input[0].len() - latency
        );
    }
    Ok(())
}

/// Instantiates plugin `id`, runs `input` through it at 48 kHz on an audio thread in varying
/// buffer sizes (the shared test host), and destroys it. Returns the output and the latency.
fn run_plugin(entry: &PluginEntry, id: &str, input: &[Vec<f32>; 2]) -> Result<([Vec<f32>; 2], u32)> {
    let mut instance = clap_host::instantiate(entry, id)?;
    let sizes = clap_host::Sizes::Cycle(BLOCK_SIZES.to_vec());
    let run = clap_host::run(&mut instance, SAMPLE_RATE, &sizes, input, None).with_context(|| format!("{id}: host run"))?;
    // Serve anything the plugin queued for the main thread before it is destroyed.
    instance.call_on_main_thread_callback();
    drop(instance);
    let [left, right]: [Vec<f32>; 2] = run.output.try_into().map_err(|_| anyhow!("{id}: output is not stereo"))?;
    Ok(([left, right], run.latency))
}

/// A few seconds of stereo: different tones per channel, deterministic noise, and the sample
/// values a careless copy would change (signed zeros, subnormals, full scale).
fn test_signal() -> [Vec<f32>; 2] {
    let frames = (SAMPLE_RATE * SECONDS) as usize;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let tone =
        |hz: f64, i: usize| (std::f64::consts::TAU * hz * i as f64 / SAMPLE_RATE).sin() as f32;
    let mut left: Vec<f32> = (0..frames)
        .map(|i| 0.5 * tone(440.0, i) + 0.1 * noise())
        .collect();
    let mut right: Vec<f32> = (0..frames)
        .map(|i| 0.3 * tone(97.0, i) + 0.2 * noise())
        .collect();
    let specials = [
        0.0,
        -0.0,
        f32::MIN_POSITIVE / 4.0,
        -f32::MIN_POSITIVE / 8.0,
        1.0,
        -1.0,
    ];
    for (k, &x) in specials.iter().enumerate() {
        left[1000 + k] = x;
        right[frames - 1 - k] = x;
    }
    [left, right]
}
