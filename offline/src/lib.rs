//! File tools, corpus, evaluation and training for the `stemmark` command line.

pub mod audio;
pub mod bench;
pub mod cmd;
pub mod corpus;
pub mod eval;
pub mod onnx;
pub mod pretrained;
pub mod pyenv;
pub mod testkit;
pub mod train;
