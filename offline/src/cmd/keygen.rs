//! `stemmark keygen`: writes a new key file.

use std::path::PathBuf;

use anyhow::Result;
use stemmark_models::keys::Key;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key file to write (never overwritten)
    pub out: PathBuf,
    /// Name shown in reports [default: the file name]
    #[arg(long)]
    pub name: Option<String>,
    /// Derive the key from this passphrase (Argon2id) instead of generating a random one
    #[arg(long, conflicts_with = "passphrase_env")]
    pub passphrase: Option<String>,
    /// Derive the key from the passphrase in this environment variable
    #[arg(long)]
    pub passphrase_env: Option<String>,
}

pub fn run(args: Args, json: bool) -> Result<()> {
    let name = args.name.clone().unwrap_or_else(|| {
        args.out.file_stem().map_or("key".into(), |s| s.to_string_lossy().into_owned())
    });
    let pass = match (&args.passphrase, &args.passphrase_env) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| anyhow::anyhow!("environment variable {var} is not set"))?),
        (None, None) => None,
    };
    let key = match pass {
        Some(p) => Key::from_passphrase(&p, name)?,
        None => Key::generate(name),
    };
    key.save(&args.out)?;
    if json {
        println!("{}", serde_json::json!({"file": args.out, "name": key.name(), "fingerprint": key.fingerprint()}));
    } else {
        println!("wrote key {:?} (fingerprint {}) to {}", key.name(), key.fingerprint(), args.out.display());
    }
    Ok(())
}
