//! Stemmark Embed and Stemmark Detect: one cdylib exporting both plugins as CLAP and VST3.
//!
//! - [`StemmarkEmbed`] goes on each stem track and writes the stem's watermark.
//! - [`StemmarkDetect`] goes on the master bus and analyses the mix in the background.
//!
//! Both follow DESIGN.md's "Real-time rules": everything an instance needs while processing is
//! allocated in `activate()`, `process()` only moves samples through preallocated rings, and the
//! models run on one worker thread per instance. Debug builds abort on any
//! allocation in `process()` (the `assert_process_allocs` feature, on by default).
//!
//! Bundles are made by `cargo xtask bundle` (CLAP: `target/bundled/Stemmark.clap`, VST3:
//! `target/bundled/Stemmark.vst3`).

use nice_plug::prelude::*;

mod detect;
mod detect_editor;
mod detect_engine;
pub mod detect_worker;
mod editor;
mod embed;
mod engine;
pub mod latency;
mod locate;
mod pace;
mod params;
pub mod status;
mod timeline;
mod worker;

pub use detect::StemmarkDetect;
pub use embed::StemmarkEmbed;
pub use params::{DetectParams, EmbedParams, StoredKey};

/// Vendor metadata shared by both plugins. The project has no public web page or contact address
/// yet; empty strings are valid for both CLAP and VST3 and hosts just show nothing.
const VENDOR: &str = "Stemmark";
const URL: &str = "";
const EMAIL: &str = "";
const VERSION: &str = env!("CARGO_PKG_VERSION");

const STEREO: AudioIOLayout = AudioIOLayout {
    main_input_channels: NonZeroU32::new(2),
    main_output_channels: NonZeroU32::new(2),
    ..AudioIOLayout::const_default()
};

const MONO: AudioIOLayout = AudioIOLayout {
    main_input_channels: NonZeroU32::new(1),
    main_output_channels: NonZeroU32::new(1),
    ..AudioIOLayout::const_default()
};

// Order matters: index i of the CLAP factory is the i-th type here, and the first type's vendor
// data becomes the VST3 factory info.
nice_export_clap!(StemmarkEmbed, StemmarkDetect);
nice_export_vst3!(StemmarkEmbed, StemmarkDetect);
