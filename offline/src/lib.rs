//! File tools, corpus, evaluation and training for the `stemmark` command line.

pub mod audio;
