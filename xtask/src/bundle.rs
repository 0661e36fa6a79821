//! `cargo xtask bundle`: builds the plugin, bundles it with nice-plug-xtask, and puts the files the
//! plugins load at run time beside the plugin binary.
//!
//! ```text
//! cargo xtask bundle [<package> | -p <package>] [--debug] [other `cargo build` options]
//! ```
//!
//! - The package defaults to `stemmark-plugin`; the build is `--release` unless `--debug` (or a
//!   `--profile`) is given.
//! - Release bundles go where nice-plug-xtask puts them: `target/bundled/Stemmark.clap` and
//!   `target/bundled/Stemmark.vst3` (the name comes from `bundler.toml`).
//! - Any other profile goes to `target/bundled-<profile>/` instead (e.g. `target/bundled-debug/`),
//!   so a debug bundle never replaces the release bundle that hosts and tests load. Debug builds
//!   have `assert_process_allocs` on (a default feature of the plugin crate), so they abort on any
//!   allocation inside `process()`.
//!
//! Beside the plugin binary in every bundle — on Linux the directory holding `Stemmark.clap`, and
//! `Stemmark.vst3/Contents/<arch>-linux/` — this places:
//!
//! - `libonnxruntime.so*` from `.deps/onnxruntime/lib/` (made by `cargo xtask setup`), symlinks
//!   kept as symlinks;
//! - `models/`: the shipped `models/*.onnx` and `models/manifest.toml`.
//!
//! Both are replaced on every run, so a bundle always matches the checkout; missing sources are
//! reported with a note rather than failing the bundle.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const DEFAULT_PACKAGE: &str = "stemmark-plugin";
/// Where `cargo xtask setup` unpacks ONNX Runtime, relative to the workspace root.
const ORT_LIB_DIR: &str = ".deps/onnxruntime/lib";
/// Prefix of the ONNX Runtime library and its versioned names (`.so.1`, `.so.1.x.y`).
const ORT_LIB_PREFIX: &str = "libonnxruntime.so";
/// The shipped models, relative to the workspace root; also the folder name inside the bundles.
const MODELS_DIR: &str = "models";
const MANIFEST: &str = "manifest.toml";

/// Entry point for `cargo xtask bundle ...`; `args` are the words after `bundle`.
pub fn run(args: Vec<String>) -> Result<()> {
    let options = Options::parse(args)?;
    nice_plug_xtask::chdir_workspace_root()?;
    let root = std::env::current_dir().context("Could not read the workspace root")?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(root.join("Cargo.toml"))
        .no_deps()
        .exec()
        .context("Could not run `cargo metadata`")?;
    let target_dir = metadata.target_directory.into_std_path_buf();

    let packages = [options.package.clone()];
    nice_plug_xtask::build(&packages, &options.cargo_args)?;

    let bundle_home = if options.nice_profile_dir == "release" {
        nice_plug_xtask::bundle(&target_dir, &options.package, &options.cargo_args, false)?;
        target_dir.join("bundled")
    } else {
        bundle_elsewhere(&target_dir, &options)?
    };

    let bundle_name = bundle_name(&root, &options.package)?;
    let binary_dirs = binary_dirs(&bundle_home, &bundle_name);
    if binary_dirs.is_empty() {
        println!(
            "note: no Linux plugin binaries under '{}'; ONNX Runtime and models not placed",
            bundle_home.display()
        );
        return Ok(());
    }
    install_onnxruntime(&root.join(ORT_LIB_DIR), &binary_dirs)?;
    install_models(&root.join(MODELS_DIR), &binary_dirs)?;

    println!();
    let vst3 = bundle_home.join(format!("{bundle_name}.vst3"));
    if vst3.exists() {
        println!("{}: {}", vst3.display(), human_size(tree_size(&vst3)));
    }
    let clap = bundle_home.join(format!("{bundle_name}.clap"));
    if clap.exists() {
        // On Linux the CLAP's runtime files are its siblings, so count them separately.
        let beside: u64 = read_dir(&bundle_home)?
            .iter()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(ORT_LIB_PREFIX) || name == MODELS_DIR
            })
            .map(|e| tree_size(&e.path()))
            .sum();
        println!(
            "{}: {} (+ {} of ONNX Runtime and models beside it)",
            clap.display(),
            human_size(tree_size(&clap)),
            human_size(beside)
        );
    }
    Ok(())
}

/// The parsed command line.
#[derive(Debug, PartialEq)]
struct Options {
    package: String,
    /// Passed to `cargo build` and to nice-plug-xtask's bundler (which reads the profile from it).
    cargo_args: Vec<String>,
    /// The directory nice-plug-xtask looks in: `release`, `debug`, or the `--profile` name.
    nice_profile_dir: String,
    /// The directory cargo writes to (cargo maps the `dev` and `test` profiles to `debug`).
    cargo_profile_dir: String,
}

impl Options {
    fn parse(args: Vec<String>) -> Result<Options> {
        let mut args = args.into_iter().peekable();
        let mut package = None;
        if args.peek().map(String::as_str) == Some("-p") {
            args.next();
            package = Some(args.next().context("Missing package name after -p")?);
        } else if args.peek().is_some_and(|a| !a.starts_with('-')) {
            package = args.next();
        }

        let mut debug = false;
        let mut release = false;
        let mut profile = None;
        let mut cargo_args = Vec::new();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--debug" => {
                    debug = true;
                    continue;
                }
                "--release" => release = true,
                "--profile" => {
                    let name = args
                        .next()
                        .context("Missing profile name after --profile")?;
                    cargo_args.push(arg);
                    profile = Some(name.clone());
                    cargo_args.push(name);
                    continue;
                }
                other => {
                    if let Some(name) = other.strip_prefix("--profile=") {
                        profile = Some(name.to_string());
                    }
                }
            }
            cargo_args.push(arg);
        }
        if [debug, release, profile.is_some()]
            .iter()
            .filter(|&&b| b)
            .count()
            > 1
        {
            bail!("Give at most one of --debug, --release and --profile");
        }
        let nice_profile_dir = match (&profile, debug) {
            (Some(name), _) => name.clone(),
            (None, true) => "debug".to_string(),
            (None, false) => {
                if !release {
                    cargo_args.push("--release".to_string());
                }
                "release".to_string()
            }
        };
        let cargo_profile_dir = match nice_profile_dir.as_str() {
            "dev" | "test" => "debug".to_string(),
            "bench" => "release".to_string(),
            other => other.to_string(),
        };
        Ok(Options {
            package: package.unwrap_or_else(|| DEFAULT_PACKAGE.to_string()),
            cargo_args,
            nice_profile_dir,
            cargo_profile_dir,
        })
    }
}

/// Bundles a non-release build into `target/bundled-<profile>/`.
///
/// nice-plug-xtask always writes to `<target dir>/bundled`, reading the library from
/// `<target dir>/<profile>/`. Pointing it at a staging "target dir" that holds only a copy of the
/// library keeps the release bundle in `target/bundled` untouched.
fn bundle_elsewhere(target_dir: &Path, options: &Options) -> Result<PathBuf> {
    let triple = cross_target(&options.cargo_args);
    let lib_name = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        options.package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let built_dir = match &triple {
        Some(triple) => target_dir.join(triple),
        None => target_dir.to_path_buf(),
    };
    let built = built_dir.join(&options.cargo_profile_dir).join(&lib_name);

    let stage = target_dir.join("xtask-bundle-stage");
    remove_path(&stage)?;
    let staged_dir = match &triple {
        Some(triple) => stage.join(triple),
        None => stage.clone(),
    }
    .join(&options.nice_profile_dir);
    fs::create_dir_all(&staged_dir)
        .with_context(|| format!("Could not create '{}'", staged_dir.display()))?;
    fs::copy(&built, staged_dir.join(&lib_name))
        .with_context(|| format!("Could not stage '{}'", built.display()))?;

    nice_plug_xtask::bundle(&stage, &options.package, &options.cargo_args, false)?;

    let home = target_dir.join(format!("bundled-{}", options.cargo_profile_dir));
    fs::create_dir_all(&home).with_context(|| format!("Could not create '{}'", home.display()))?;
    for entry in read_dir(&stage.join("bundled"))? {
        let dest = home.join(entry.file_name());
        remove_path(&dest)?;
        fs::rename(entry.path(), &dest)
            .with_context(|| format!("Could not move the bundle to '{}'", dest.display()))?;
    }
    remove_path(&stage)?;
    eprintln!(
        "Moved the {} bundles to '{}'",
        options.cargo_profile_dir,
        home.display()
    );
    Ok(home)
}

/// The `--target` triple in the cargo arguments, if cross-compiling.
fn cross_target(cargo_args: &[String]) -> Option<String> {
    let mut args = cargo_args.iter();
    while let Some(arg) = args.next() {
        if arg == "--target" {
            return args.next().cloned();
        }
        if let Some(triple) = arg.strip_prefix("--target=") {
            return Some(triple.to_string());
        }
    }
    None
}

/// The bundle name `bundler.toml` gives the package (nice-plug-xtask's rule), else the package.
fn bundle_name(root: &Path, package: &str) -> Result<String> {
    let path = root.join("bundler.toml");
    if !path.exists() {
        return Ok(package.to_string());
    }
    let text = fs::read_to_string(&path)
        .with_context(|| format!("Could not read '{}'", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("Could not parse '{}'", path.display()))?;
    Ok(table
        .get(package)
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or(package)
        .to_string())
}

/// The directories that hold a plugin binary, for the Linux bundle layouts.
fn binary_dirs(bundle_home: &Path, bundle_name: &str) -> Vec<PathBuf> {
    if !cfg!(target_os = "linux") {
        return Vec::new();
    }
    let mut dirs = Vec::new();
    // On Linux a CLAP "bundle" is the library itself, so its neighbours are its directory's.
    if bundle_home.join(format!("{bundle_name}.clap")).is_file() {
        dirs.push(bundle_home.to_path_buf());
    }
    let vst3_arch = match std::env::consts::ARCH {
        "x86" => "i386",
        arch => arch,
    };
    let vst3_dir = bundle_home
        .join(format!("{bundle_name}.vst3"))
        .join("Contents")
        .join(format!("{vst3_arch}-linux"));
    if vst3_dir.join(format!("{bundle_name}.so")).is_file() {
        dirs.push(vst3_dir);
    }
    dirs
}

/// Replaces `libonnxruntime.so*` beside each plugin binary with the copy from `cargo xtask setup`.
fn install_onnxruntime(source_dir: &Path, binary_dirs: &[PathBuf]) -> Result<()> {
    let mut sources: Vec<PathBuf> = if source_dir.is_dir() {
        read_dir(source_dir)?
            .into_iter()
            .filter(|e| e.file_name().to_string_lossy().starts_with(ORT_LIB_PREFIX))
            .map(|e| e.path())
            .collect()
    } else {
        Vec::new()
    };
    // Most specific (longest) name first, so that is the real file and the plain `.so` can
    // point at it.
    sources.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));

    for dir in binary_dirs {
        for entry in read_dir(dir)? {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(ORT_LIB_PREFIX)
            {
                remove_path(&entry.path())?;
            }
        }
        let mut copied: Vec<&Path> = Vec::new();
        for source in &sources {
            let name = source.file_name().context("file name")?;
            // Some ONNX Runtime archives hold the library twice as regular files (`.so` and
            // `.so.1.x.y`); a symlink saves ~30 MB per bundle.
            #[cfg(unix)]
            if let Some(same) = copied.iter().find(|c| same_contents(c, source)) {
                let target = same.file_name().context("file name")?;
                std::os::unix::fs::symlink(target, dir.join(name))
                    .with_context(|| format!("Could not link '{}'", dir.join(name).display()))?;
                continue;
            }
            copy_entry(source, &dir.join(name))?;
            copied.push(source);
        }
    }
    if sources.is_empty() {
        println!(
            "note: no {ORT_LIB_PREFIX}* in '{}': run `cargo xtask setup` first. The bundles are \
             made without ONNX Runtime, so the plugins cannot run their models.",
            source_dir.display()
        );
    } else {
        println!(
            "Placed ONNX Runtime ({} files) beside {} plugin binaries",
            sources.len(),
            binary_dirs.len()
        );
    }
    Ok(())
}

/// Replaces the `models/` folder beside each plugin binary with the checkout's shipped models.
fn install_models(source_dir: &Path, binary_dirs: &[PathBuf]) -> Result<()> {
    let mut sources: Vec<PathBuf> = if source_dir.is_dir() {
        read_dir(source_dir)?
            .into_iter()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && (p.extension().is_some_and(|x| x == "onnx")
                        || p.file_name().is_some_and(|n| n == MANIFEST))
            })
            .collect()
    } else {
        Vec::new()
    };
    sources.sort();

    for dir in binary_dirs {
        let dest = dir.join(MODELS_DIR);
        remove_path(&dest)?;
        if sources.is_empty() {
            continue;
        }
        fs::create_dir_all(&dest)
            .with_context(|| format!("Could not create '{}'", dest.display()))?;
        for source in &sources {
            copy_entry(source, &dest.join(source.file_name().context("file name")?))?;
        }
    }
    let has_manifest = sources.iter().any(|p| p.ends_with(MANIFEST));
    if sources.is_empty() {
        println!(
            "note: no models (*.onnx, {MANIFEST}) in '{}' yet; the bundles carry none.",
            source_dir.display()
        );
    } else {
        if !has_manifest {
            println!("note: '{}' has no {MANIFEST}", source_dir.display());
        }
        println!(
            "Placed {} model files in '{MODELS_DIR}/' beside {} plugin binaries",
            sources.len(),
            binary_dirs.len()
        );
    }
    Ok(())
}

/// Copies a file, or recreates a symlink as a symlink (ONNX Runtime ships `.so -> .so.1 -> ...`).
fn copy_entry(source: &Path, dest: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(source)
        .with_context(|| format!("Could not read '{}'", source.display()))?;
    remove_path(dest)?;
    #[cfg(unix)]
    if meta.file_type().is_symlink() {
        let link = fs::read_link(source)
            .with_context(|| format!("Could not read link '{}'", source.display()))?;
        std::os::unix::fs::symlink(&link, dest)
            .with_context(|| format!("Could not link '{}'", dest.display()))?;
        return Ok(());
    }
    let _ = meta;
    fs::copy(source, dest).with_context(|| {
        format!(
            "Could not copy '{}' to '{}'",
            source.display(),
            dest.display()
        )
    })?;
    Ok(())
}

/// Whether two regular files hold the same bytes (false for symlinks).
fn same_contents(a: &Path, b: &Path) -> bool {
    let regular_len = |p: &Path| {
        fs::symlink_metadata(p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    };
    match (regular_len(a), regular_len(b)) {
        (Some(x), Some(y)) if x == y => {
            matches!((fs::read(a), fs::read(b)), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)
        .with_context(|| format!("Could not list '{}'", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("Could not list '{}'", dir.display()))
}

/// Removes a file, symlink or directory tree; absent is fine.
fn remove_path(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.with_context(|| format!("Could not remove '{}'", path.display()))
}

/// Bytes in a file or directory tree, not following symlinks.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_size(&e.path()))
            .sum()
    } else if meta.is_file() {
        meta.len()
    } else {
        0
    }
}

fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::parse(args.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    #[test]
    fn defaults_to_release_of_the_plugin() {
        let o = parse(&[]);
        assert_eq!(o.package, "stemmark-plugin");
        assert_eq!(o.cargo_args, ["--release"]);
        assert_eq!(o.nice_profile_dir, "release");
    }

    #[test]
    fn debug_is_not_passed_to_cargo() {
        let o = parse(&["stemmark-plugin", "--debug", "--features", "x"]);
        assert_eq!(o.cargo_args, ["--features", "x"]);
        assert_eq!(o.cargo_profile_dir, "debug");
    }

    #[test]
    fn explicit_package_and_profile() {
        let o = parse(&["-p", "other", "--profile", "dev"]);
        assert_eq!(o.package, "other");
        assert_eq!(o.cargo_args, ["--profile", "dev"]);
        assert_eq!(o.nice_profile_dir, "dev");
        assert_eq!(o.cargo_profile_dir, "debug");
        assert!(Options::parse(vec!["--debug".into(), "--release".into()]).is_err());
    }
}
