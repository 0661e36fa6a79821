//! Stemmark Embed and Stemmark Detect.
