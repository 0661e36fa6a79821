//! `stemmark embed`: marks a stem file.

use std::path::PathBuf;

use anyhow::{Result, bail};
use stemmark_models::embedder::{Embedder, MAX_STRENGTH};
use stemmark_models::keys::Key;
use stemmark_models::payload::MAX_PAYLOAD;
use stemmark_models::spec::BLOCK;

use super::{ModelOpts, load_for_models, progress, tick, to_rate};
use crate::audio::{self, Audio};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stem to mark (WAV, FLAC, MP3, OGG; any rate; mono or stereo)
    pub input: PathBuf,
    /// Marked stem to write (32-bit float WAV at the input's rate and channel count)
    pub output: PathBuf,
    /// Key file of this stem
    #[arg(long, short = 'k', required_unless_present_any = ["passphrase", "passphrase_env"])]
    pub key: Option<PathBuf>,
    /// Passphrase to derive the key from
    #[arg(long)]
    pub passphrase: Option<String>,
    /// Environment variable holding the passphrase
    #[arg(long)]
    pub passphrase_env: Option<String>,
    /// Payload carried in every 2 s block (0..=16777215)
    #[arg(long, short = 'p')]
    pub payload: u64,
    /// Mark strength: scales the trained mask bound (0..=2)
    #[arg(long, default_value_t = 1.0)]
    pub strength: f32,
}

pub fn run(args: Args, opts: &ModelOpts, json: bool) -> Result<()> {
    if args.payload > MAX_PAYLOAD as u64 {
        bail!("payload {} does not fit in 24 bits (0..={MAX_PAYLOAD})", args.payload);
    }
    if !(0.0..=MAX_STRENGTH).contains(&args.strength) {
        bail!("strength {} is outside 0..={MAX_STRENGTH}", args.strength);
    }
    let key = match (&args.key, &args.passphrase, &args.passphrase_env) {
        (Some(p), _, _) => Key::load(p)?,
        (None, Some(p), _) => Key::from_passphrase(p, "passphrase")?,
        (None, None, Some(v)) => Key::from_passphrase(&std::env::var(v).map_err(|_| anyhow::anyhow!("environment variable {v} is not set"))?, v.clone())?,
        _ => bail!("no key given"),
    };
    if args.input.canonicalize().ok().is_some_and(|i| args.output.canonicalize().ok() == Some(i)) {
        bail!("output would overwrite the input; write to another file");
    }
    let (stem, rate) = load_for_models(&args.input)?;
    let dir = opts.prepare()?;
    let mut emb = Embedder::open(&dir, opts.provider)?;
    let pb = progress("embed");
    let marked = emb.embed(&stem.channels, &key, args.payload as u32, args.strength, &mut tick(&pb))?;
    pb.finish_and_clear();
    let out = to_rate(&Audio::new(stem.rate, marked), rate)?;
    out.check_finite()?;
    audio::write_wav(&args.output, &out)?;
    let blocks = stem.len() / BLOCK;
    let peak = out.peak();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "output": args.output, "key": key.name(), "fingerprint": key.fingerprint(),
                "payload": args.payload, "blocks": blocks, "seconds": out.seconds(), "peak": peak,
                "provider": emb.provider().to_string(),
            })
        );
    } else {
        println!(
            "marked {} full 2 s blocks of {} with key {:?} ({}) and payload {} → {}",
            blocks,
            args.input.display(),
            key.name(),
            key.fingerprint(),
            args.payload,
            args.output.display()
        );
    }
    if blocks == 0 {
        eprintln!("warning: the stem is shorter than one 2 s block; the mark cannot be read back");
    }
    if peak > 1.0 {
        eprintln!("warning: the marked stem peaks at {:.2} dBFS (float WAV keeps it; lower the gain before a fixed-point export)", 20.0 * peak.log10());
    }
    Ok(())
}
