//! `stemmark mix`: each stem to −16 LUFS (the paper's mixing), then summed.

use std::path::PathBuf;

use anyhow::{Result, bail};
use stemmark_models::resample;
use stemmark_models::spec::STEM_LUFS;

use crate::audio::{self, Audio};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Mix to write (32-bit float WAV at the first stem's rate)
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Stems to mix (any rate; mono stems are centred)
    #[arg(required = true, num_args = 1..)]
    pub stems: Vec<PathBuf>,
    /// Loudness every stem is brought to before summing
    #[arg(long, default_value_t = STEM_LUFS, allow_negative_numbers = true)]
    pub lufs: f64,
}

pub fn run(args: Args, json: bool) -> Result<()> {
    if !(-70.0..=0.0).contains(&args.lufs) {
        bail!("--lufs {} is outside -70..=0", args.lufs);
    }
    let mut stems = Vec::new();
    for p in &args.stems {
        let a = audio::read(p)?;
        a.check_finite().map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        stems.push(a.to_stereo().map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?);
    }
    let rate = stems[0].rate;
    let len = stems.iter().map(|s| s.len() as u64 * rate as u64 / s.rate as u64).max().unwrap_or(0) as usize;
    let mut mix = Audio::new(rate, vec![vec![0.0; len]; 2]);
    let mut gains = Vec::new();
    for (p, s) in args.stems.iter().zip(&stems) {
        let s = Audio::new(rate, resample::resample_planar(&s.channels, s.rate, rate)?);
        let gain = match audio::gain_to_lufs(&s, args.lufs)? {
            Some(g) => g,
            None => {
                eprintln!("warning: {} is silent; mixed at unity gain", p.display());
                1.0
            }
        };
        for (m, c) in mix.channels.iter_mut().zip(&s.channels) {
            m.iter_mut().zip(c).for_each(|(m, x)| *m += gain * x);
        }
        gains.push(20.0 * gain.log10());
    }
    audio::write_wav(&args.out, &mix)?;
    if json {
        println!("{}", serde_json::json!({"output": args.out, "stems": args.stems, "gain_db": gains, "peak": mix.peak()}));
    } else {
        for (p, g) in args.stems.iter().zip(&gains) {
            println!("{:+6.2} dB  {}", g, p.display());
        }
        println!("wrote {} ({:.1} s)", args.out.display(), mix.seconds());
    }
    if mix.peak() > 1.0 {
        eprintln!("warning: the mix peaks at {:+.2} dBFS (kept in float WAV)", 20.0 * mix.peak().log10());
    }
    Ok(())
}
