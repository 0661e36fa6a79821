//! The training pipeline's model side: networks, STFT, checkpoints (libtorch through `tch`, behind
//! the `train` feature) and the pure-Rust ONNX export (always built, for `stemmark export`).
//!
//! Build and test the libtorch part (after `cargo xtask setup-torch`):
//! `LIBTORCH=$PWD/.deps/torch/torch cargo test -p stemmark-offline --features train --lib train`.

pub mod export;
pub mod nets;
pub mod onnx_ops;

#[cfg(feature = "train")]
pub mod checkpoint;
#[cfg(feature = "train")]
pub mod device;
#[cfg(feature = "train")]
pub mod stft;
#[cfg(feature = "train")]
pub mod optim;
#[cfg(feature = "train")]
pub mod pretrain;
#[cfg(feature = "train")]
pub mod prefetch;
#[cfg(feature = "train")]
pub mod stage;
#[cfg(feature = "train")]
pub mod joint;
#[cfg(feature = "train")]
pub mod separation;

#[cfg(feature = "train")]
pub mod attacks;
#[cfg(feature = "train")]
pub mod losses;
#[cfg(feature = "train")]
pub mod nmr;
