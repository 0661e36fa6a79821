//! Project tasks: `cargo xtask setup | test | demo | bundle`.

mod bundle;
mod demo;
mod pytools;
mod setup;
mod test;
mod torch;

const USAGE: &str = "usage: cargo xtask <command>
  setup [--gpu]   install the ONNX Runtime library from PyPI into .deps/ (idempotent)
  setup-torch     install torch 2.11.0 (libtorch for the training feature) into .deps/torch
  test            setup, bundle the plugins, run every test (what CI runs)
  demo            setup, then the main job: real stems -> embed with two keys -> mix -> separate -> detect
  bundle [ARGS]   build the VST3/CLAP bundles with ONNX Runtime and the models beside the binary";

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default().to_vec();
    match args.first().map(String::as_str) {
        Some("setup") => setup::main(&rest),
        Some("test") => test::main(&rest),
        Some("setup-torch") => torch::install_torch().map(|dir| println!("LIBTORCH={}", dir.display())),
        Some("demo") => demo::main(&rest),
        Some("bundle") => bundle::run(rest),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        // nice-plug-xtask's own commands (bundle-universal, known-packages, …)
        Some(_) => nice_plug_xtask::main(),
    }
}
