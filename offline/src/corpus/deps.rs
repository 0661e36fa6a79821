//! Getting the registry packages the corpus is made from: Debian packages through apt, the music21
//! wheel into a project-local venv. Nothing else is downloaded.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// music21 release the exporter is written against.
pub const MUSIC21_VERSION: &str = "9.1.0";

/// Debian packages: the data packages and the tools that decode and render them.
pub const DATA_PACKAGES: &[&str] = &[
    "klettres-data",
    "ktuberling-data",
    "wesnoth-1.16-music",
    "singularity-music",
    "lmms",
    "fluid-soundfont-gm",
    "musescore-general-soundfont",
];
pub const TOOL_PACKAGES: &[&str] = &["ffmpeg", "fluidsynth", "python3-venv"];

pub fn is_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// The corpus's packages; see [`ensure`].
pub fn ensure_packages(install: bool) -> Vec<String> {
    let all: Vec<&str> = DATA_PACKAGES.iter().chain(TOOL_PACKAGES).copied().collect();
    ensure(&all, install)
}

/// Installs missing Debian packages with apt (as root, or through sudo when available). Returns
/// the packages still missing afterwards; callers go on without what needs them.
pub fn ensure(packages: &[&str], install: bool) -> Vec<String> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        return Vec::new();
    }
    if install {
        eprintln!("installing Debian packages: {}", missing.join(" "));
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
        let apt = |args: &[&str]| -> bool {
            let mut c = if root { Command::new("apt-get") } else { Command::new("sudo") };
            if !root {
                c.args(["-n", "apt-get"]);
            }
            // The tool's chatter goes to stderr: stdout is for the command's own result (--json).
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(std::io::stderr()).status().map(|s| s.success()).unwrap_or(false)
        };
        if !apt(&["update"]) {
            eprintln!("warning: apt-get update failed");
        }
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(&missing);
        if !apt(&args) {
            eprintln!("warning: apt-get install failed; trying the packages one by one");
            for p in &missing {
                apt(&["install", "-y", "--no-install-recommends", p]);
            }
        }
    }
    let still: Vec<String> = packages.iter().filter(|p| !is_installed(p)).map(|p| p.to_string()).collect();
    if !still.is_empty() {
        eprintln!(
            "missing Debian packages (sources needing them are skipped): {}\n  install with: apt-get install --no-install-recommends {}",
            still.join(" "),
            still.join(" ")
        );
    }
    still
}

/// Python of the project-local venv with music21 pinned, created on first use.
pub fn music21_python(deps: &Path, install: bool) -> Result<PathBuf> {
    let venv = deps.join("venv");
    let py = venv.join("bin").join("python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import music21,sys; sys.exit(music21.__version__ != '{MUSIC21_VERSION}')")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if py.exists() && ok(&py) {
        return Ok(py);
    }
    if !install {
        bail!("music21 {MUSIC21_VERSION} is not in {} (run without --no-install)", venv.display());
    }
    eprintln!("installing music21=={MUSIC21_VERSION} into {}", venv.display());
    if !py.exists() {
        let s = Command::new("python3").args(["-m", "venv"]).arg(&venv).stdout(std::io::stderr()).status().context("cannot run python3")?;
        if !s.success() {
            bail!("python3 -m venv {} failed (is python3-venv installed?)", venv.display());
        }
    }
    let s = Command::new(&py)
        .args(["-m", "pip", "install", "--quiet", &format!("music21=={MUSIC21_VERSION}")])
        .stdout(std::io::stderr())
        .status()
        .context("cannot run pip")?;
    if !s.success() || !ok(&py) {
        bail!("pip install music21=={MUSIC21_VERSION} into {} failed", venv.display());
    }
    Ok(py)
}

/// Files a Debian package installed, from dpkg's own list.
pub fn package_files(pkg: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("dpkg").args(["-L", pkg]).output().context("cannot run dpkg")?;
    if !out.status.success() {
        bail!("package {pkg} is not installed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).filter(|p| p.is_file()).collect())
}
