//! The ONNX model contracts: file names, input/output names and shapes. Export writes models to
//! these contracts and the runtime checks every loaded model against them.

use crate::spec::{BINS, BLOCK, KEY_DIM, MESSAGE_BITS, STEM_NAMES};

/// One axis of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A dynamic axis (batch, frames, length), with the symbolic name the exporter gives it.
    Dynamic(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct TensorSpec {
    pub name: &'static str,
    pub dims: &'static [Dim],
}

#[derive(Debug, Clone, Copy)]
pub struct Contract {
    /// Role, also the key in the manifest.
    pub role: &'static str,
    pub file: &'static str,
    pub inputs: &'static [TensorSpec],
    pub outputs: &'static [TensorSpec],
}

use Dim::{Dynamic as D, Fixed as F};

pub const EMBEDDER: Contract = Contract {
    role: "embedder",
    file: "embedder.onnx",
    inputs: &[
        TensorSpec { name: "magnitude", dims: &[D("batch"), F(BINS), D("frames")] },
        TensorSpec { name: "message", dims: &[D("batch"), F(MESSAGE_BITS)] },
        TensorSpec { name: "key", dims: &[D("batch"), F(KEY_DIM)] },
    ],
    outputs: &[TensorSpec { name: "mask", dims: &[D("batch"), F(BINS), D("frames")] }],
};

pub const DETECTOR: Contract = Contract {
    role: "detector",
    file: "detector.onnx",
    inputs: &[
        TensorSpec { name: "audio", dims: &[D("batch"), F(BLOCK)] },
        TensorSpec { name: "key", dims: &[D("batch"), F(KEY_DIM)] },
    ],
    outputs: &[TensorSpec { name: "logits", dims: &[D("batch"), F(MESSAGE_BITS)] }],
};

pub const SEPARATOR: Contract = Contract {
    role: "separator",
    file: "separator.onnx",
    inputs: &[TensorSpec { name: "mix", dims: &[D("batch"), F(2), D("length")] }],
    outputs: &[TensorSpec { name: "stems", dims: &[D("batch"), F(STEM_NAMES.len()), F(2), D("length")] }],
};

pub const ALL: [Contract; 3] = [EMBEDDER, DETECTOR, SEPARATOR];

/// Why a model's declared shape does not fit the contract, if it doesn't. ONNX Runtime reports a
/// dynamic axis as −1.
pub fn shape_mismatch(spec: &TensorSpec, shape: &[i64]) -> Option<String> {
    let ok = shape.len() == spec.dims.len()
        && spec.dims.iter().zip(shape).all(|(d, &s)| match d {
            Dim::Fixed(n) => s == *n as i64,
            Dim::Dynamic(_) => s < 0,
        });
    (!ok).then(|| format!("`{}` has shape {shape:?}, the contract wants {}", spec.name, describe(spec.dims)))
}

pub fn describe(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Dynamic(name) => name.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let mask = &EMBEDDER.outputs[0];
        assert_eq!(shape_mismatch(mask, &[-1, BINS as i64, -1]), None);
        assert!(shape_mismatch(mask, &[-1, 512, -1]).unwrap().contains("[batch, 513, frames]"));
        assert!(shape_mismatch(mask, &[-1, BINS as i64]).is_some());
        assert!(shape_mismatch(mask, &[1, BINS as i64, -1]).is_some(), "batch must stay dynamic");
    }
}
