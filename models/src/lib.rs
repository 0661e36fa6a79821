//! Everything needed to *run* Stemmark's models (no training code): the signal spec, STFT,
//! resampling, keys and payload codec, the decision rule and the ONNX Runtime sessions.

pub mod spec;
pub mod stft;
pub mod resample;
pub mod keys;
pub mod payload;
pub mod code;
pub mod decision;
pub mod contract;
pub mod manifest;
pub mod runtime;
pub mod modelset;
pub mod embedder;
pub mod embed_stream;
pub mod detector;
pub mod detect_stream;
pub mod separator;
pub mod tile;
