//! `stemmark separate`: splits a mix into the separator's stems.

use std::path::PathBuf;

use anyhow::Result;
use stemmark_models::separator::Separator;
use stemmark_models::spec::{SAMPLE_RATE, STEM_NAMES};

use super::{ModelOpts, load_for_models, progress, tick, to_rate};
use crate::audio::{self, Audio};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Mix to separate (any rate, mono or stereo)
    pub input: PathBuf,
    /// Folder for the stems (<stem>.wav at the input's rate)
    pub out_dir: PathBuf,
}

pub fn run(args: Args, opts: &ModelOpts, json: bool) -> Result<()> {
    let (mix, rate) = load_for_models(&args.input)?;
    let dir = opts.prepare()?;
    let mut sep = Separator::open(&dir, opts.provider)?;
    let pb = progress("separate");
    let stems = sep.separate(&mix.channels, &mut tick(&pb))?;
    pb.finish_and_clear();
    let mut written = Vec::new();
    for (name, stem) in STEM_NAMES.iter().zip(stems) {
        let path = args.out_dir.join(format!("{name}.wav"));
        audio::write_wav(&path, &to_rate(&Audio::new(SAMPLE_RATE, stem), rate)?)?;
        written.push(path);
    }
    if json {
        println!("{}", serde_json::json!({"stems": written, "provider": sep.provider().to_string()}));
    } else {
        for p in &written {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
