//! `stemmark`: per-stem audio watermarks that survive mixing and source separation.
//!
//! Exit codes: 0 success (for `detect`: a mark was found), 1 error, 2 bad usage,
//! 3 `detect` ran but found no mark.

use clap::{Parser, Subcommand};
use stemmark_offline::cmd::{self, ModelOpts};

#[derive(Parser)]
#[command(name = "stemmark", version, about = "Per-stem audio watermarks that survive mixing and source separation")]
struct Cli {
    #[command(flatten)]
    models: ModelOpts,
    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Log level (error, warn, info, debug)
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new 128-bit key file (random, or derived from a passphrase)
    Keygen(cmd::keygen::Args),
    /// Mark a stem with a key and payload in every 2 s block
    Embed(cmd::embed::Args),
    /// Read marks from a mix or stem with every key given
    Detect(cmd::detect::Args),
    /// Bring each stem to -16 LUFS and sum them
    Mix(cmd::mix::Args),
    /// Split a mix into stems with the separator
    Separate(cmd::separate::Args),
    /// Speed of the DSP and models as multiples of real time (`bench train`: training step times)
    Bench {
        /// `train` for the training stages' step times (needs --features train)
        what: Option<String>,
        /// A few seconds of audio, timed once: checks that every row runs (not for quoting)
        #[arg(long)]
        quick: bool,
    },
    /// Write the ONNX models and manifest from trained weights
    Export(cmd::export::Args),
    /// Measure BER, quality, separation, payload recovery and false positives on audio
    Eval(stemmark_offline::eval::Args),
    /// Measure the decision statistic on unmarked audio and write the calibration into the manifest
    Calibrate(cmd::calibrate::Args),
    /// Train the models (built with --features train)
    #[cfg(feature = "train")]
    #[command(subcommand)]
    Train(cmd::train::Stage),
    /// Build and inspect the training corpus
    #[command(subcommand)]
    Corpus(stemmark_offline::corpus::CorpusCommand),
}

fn main() {
    let cli = Cli::parse();
    // Logs go to stderr so --json output stays clean.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .init();
    let json = cli.json;
    let result = match cli.command {
        Command::Keygen(a) => cmd::keygen::run(a, json).map(|_| 0),
        Command::Embed(a) => cmd::embed::run(a, &cli.models, json).map(|_| 0),
        Command::Detect(a) => cmd::detect::run(a, &cli.models, json),
        Command::Mix(a) => cmd::mix::run(a, json).map(|_| 0),
        Command::Separate(a) => cmd::separate::run(a, &cli.models, json).map(|_| 0),
        Command::Bench { what, quick } => cmd::bench::run(&cli.models, what.as_deref(), quick, json).map(|_| 0),
        Command::Export(a) => cmd::export::run(a, json).map(|_| 0),
        Command::Eval(a) => {
            // Without --set, the default model folder; a missing one is reported by eval itself.
            let default = cli.models.prepare().ok();
            stemmark_offline::eval::run(a, cli.models.provider, default, json).map(|_| 0)
        }
        Command::Calibrate(a) => cmd::calibrate::run(a, &cli.models, json).map(|_| 0),
        Command::Corpus(c) => stemmark_offline::corpus::run(c, json).map(|_| 0),
        // Training reports through its run folder (metrics.jsonl, validation.jsonl), not stdout.
        #[cfg(feature = "train")]
        Command::Train(_) if json => Err(anyhow::anyhow!("`train` has no --json output: it writes metrics.jsonl and validation.jsonl in its run folder")),
        #[cfg(feature = "train")]
        Command::Train(s) => cmd::train::run(s).map(|_| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
