//! Stemmark's own ONNX exporter, in pure Rust: no protobuf code generation and no Python at
//! build time.
//!
//! - [`proto`]: a hand-written protobuf wire encoder for the subset of `onnx.proto` we emit.
//! - [`graph`]: [`GraphBuilder`], the ergonomic builder the training export uses for the real
//!   networks, and [`Model`], which serialises (`to_bytes`) and saves atomically (`save`).
//! - [`spleeter`]: `separator.onnx` from Spleeter's pretrained vocals U-Net.
//! - [`testmodels`]: *plumbing* models with random weights that follow the exact runtime
//!   contracts, so the runtime can be tested before trained models exist.
//!
//! Every model imports opset 17 (default domain) with IR version 8, producer `stemmark`.
//!
//! `offline/scripts/check_onnx.py` checks exported files with the reference tools
//! (`onnx.checker` with `full_check` and ONNX Runtime): see [`testmodels`] for how to run it.

pub mod graph;
pub mod proto;
pub mod spleeter;
pub mod testmodels;
pub mod tile;

#[cfg(test)]
mod reader;

pub use graph::{
    Attr, ConvOpts, Dim, GraphBuilder, IR_VERSION, Model, OPSET_VERSION, PRODUCER, TensorData,
    Value,
};
pub use proto::DataType;
