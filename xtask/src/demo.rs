//! `cargo xtask demo`: the main job on real audio. A speech stem and a music stem from the
//! registry-built corpus are each marked with their own key and payload, mixed at −16 LUFS per
//! stem, separated, and read back; a per-stem table is printed and every WAV is kept in out/demo/.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;

const PAYLOADS: [(&str, u32); 2] = [("speech", 1001), ("music", 2002)];

pub fn main(args: &[String]) -> Result<()> {
    if let Some(bad) = args.first() {
        bail!("unknown demo option {bad:?} (usage: cargo xtask demo; STEMMARK_MODELS=DIR picks other models)");
    }
    let root = setup::root();
    setup::install_ort(false)?;
    let models = std::env::var_os("STEMMARK_MODELS").map_or_else(|| root.join("models"), PathBuf::from);
    let manifest = models.join("manifest.toml");
    if !manifest.is_file() {
        bail!(
            "no trained models in {}: the demo needs embedder.onnx, detector.onnx, separator.onnx and \
             manifest.toml from the training pipeline (stemmark train, then export). No placeholder is shipped.",
            models.display()
        );
    }
    let kind = std::fs::read_to_string(&manifest)?;
    if !kind.contains("kind = \"trained\"") {
        println!("demo: WARNING: {} is not a trained model set; expect no marks to be found", models.display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    setup::run(Command::new(&cargo).current_dir(&root).args(["build", "--release", "-p", "stemmark-offline"]))?;
    let bin = root.join("target/release/stemmark");
    let stemmark = |args: &[&str]| -> Result<std::process::Output> {
        let out = Command::new(&bin).current_dir(&root).arg("--models").arg(&models).args(args).output()?;
        Ok(out)
    };

    // Real stems: the small corpus (installs its Debian packages on first use).
    let corpus = root.join("data/corpus-small");
    setup::run(Command::new(&bin).current_dir(&root).args(["corpus", "build", "--small", "--out"]).arg(&corpus))?;
    let (speech, music) = pick_stems(&corpus)?;

    let out = root.join("out/demo");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let mut marked = Vec::new();
    let mut keys = Vec::new();
    for ((name, payload), stem) in PAYLOADS.iter().zip([&speech, &music]) {
        let key = out.join(format!("{name}.key"));
        check(stemmark(&["keygen", s(&key), "--name", name])?)?;
        let m = out.join(format!("{name}.marked.wav"));
        std::fs::copy(stem, out.join(format!("{name}.original.wav")))?;
        check(stemmark(&["embed", s(stem), s(&m), "--key", s(&key), "--payload", &payload.to_string()])?)?;
        println!("demo: marked {} ({name}) with payload {payload}", stem.display());
        marked.push(m);
        keys.push(key);
    }
    let mix = out.join("mix.wav");
    check(stemmark(&["mix", "-o", s(&mix), s(&marked[0]), s(&marked[1])])?)?;
    check(stemmark(&["separate", s(&mix), s(&out.join("separated"))])?)?;
    let det = stemmark(&["--json", "detect", s(&mix), "--key", s(&keys[0]), "--key", s(&keys[1]), "--offset", "0"])?;
    if !matches!(det.status.code(), Some(0 | 3)) {
        bail!("detect failed: {}", String::from_utf8_lossy(&det.stderr));
    }
    std::fs::write(out.join("report.json"), &det.stdout)?;
    let report: serde_json::Value = serde_json::from_slice(&det.stdout).context("detect --json output")?;
    print_table(&report);
    println!("demo: WAVs, keys and report.json are in {}", out.display());
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("paths under the checkout are UTF-8")
}

fn check(o: std::process::Output) -> Result<()> {
    if !o.status.success() {
        bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// A speech clip and a music clip, from the validation split when it has both.
fn pick_stems(corpus: &Path) -> Result<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(corpus.join("manifest.json")).context("corpus manifest")?;
    let m: serde_json::Value = serde_json::from_str(&text)?;
    let items = m["items"].as_array().context("manifest has no items")?;
    let find = |role: &str| -> Option<PathBuf> {
        let mut clips = items.iter().flat_map(|it| {
            let split = it["split"].as_str().unwrap_or("");
            it["clips"].as_array().into_iter().flatten().map(move |c| (split, c))
        });
        let mut fallback = None;
        for (split, c) in clips.by_ref() {
            if c["role"] == role {
                let p = corpus.join(c["files"][0].as_str()?);
                if split == "validation" {
                    return Some(p);
                }
                fallback.get_or_insert(p);
            }
        }
        fallback
    };
    match (find("speech"), find("music")) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("the corpus in {} has no speech and music clips", corpus.display()),
    }
}

fn print_table(r: &serde_json::Value) {
    println!("\n{:<12} {:<8} {:<10} {:>9} {:>9} {:>7} {:>10}", "read on", "key", "verdict", "payload", "expected", "T", "FP rate");
    for x in r["readings"].as_array().into_iter().flatten() {
        let key = x["key"].as_str().unwrap_or("?");
        let expected = PAYLOADS.iter().find(|(n, _)| *n == key).map_or("-".into(), |(_, p)| p.to_string());
        println!(
            "{:<12} {:<8} {:<10} {:>9} {:>9} {:>7.2} {:>10}",
            x["stem"].as_str().or(x["path"].as_str()).unwrap_or("?"),
            key,
            x["verdict"].as_str().unwrap_or("?"),
            x["payload"].as_u64().map_or("-".into(), |p| p.to_string()),
            expected,
            x["z"].as_f64().unwrap_or(f64::NAN),
            rate(x["false_positive_rate"].as_f64().unwrap_or(f64::NAN)),
        );
    }
    for f in r["found"].as_array().into_iter().flatten() {
        println!(
            "found payload {} with key {} on {}; carried by the {} reading",
            f["payload"],
            f["key"].as_str().unwrap_or("?"),
            f["read_on"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
            f["carried_by"].as_str().unwrap_or("?")
        );
    }
}

/// A false-positive rate as `stemmark detect` prints it: below f64's range it underflows to 0,
/// which must not read as "exactly zero".
fn rate(r: f64) -> String {
    if r < 1e-300 { "< 1e-300".into() } else { format!("{r:.1e}") }
}
