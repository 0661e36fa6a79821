//! `cargo run -p stemmark-offline --release --example corpus -- build [--small] …`: the corpus
//! command before (and besides) its wiring into `stemmark corpus`.

use clap::Parser;
use stemmark_offline::corpus::{CorpusCommand, run};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: CorpusCommand,
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse().cmd)
}
