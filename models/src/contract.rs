//! The ONNX model contracts: file names, input/output names and shapes. Export writes models to
//! these contracts and the runtime checks every loaded model against them.

use crate::spec::{
    BINS, FRAMES_PER_BLOCK, STEM_NAMES, TILE_ROWS, TILE_UNITS, TILE_UNIT_COLS,
};

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

/// The tile channel's embedder (`crate::tile`; model format 2): one block's mask from its mid
/// magnitude and the key's pattern for the block, every unit's first-tile sign × its message bit
/// (`Patterns::embed_pattern`, `[TILE_UNIT_COLS, TILE_ROWS]` = unit j·ROWS + r).
pub const EMBEDDER: Contract = Contract {
    role: "embedder",
    file: "embedder.onnx",
    inputs: &[
        TensorSpec { name: "magnitude", dims: &[D("batch"), F(BINS), F(FRAMES_PER_BLOCK)] },
        TensorSpec { name: "pattern", dims: &[D("batch"), F(TILE_UNIT_COLS), F(TILE_ROWS)] },
    ],
    outputs: &[TensorSpec { name: "mask", dims: &[D("batch"), F(BINS), F(FRAMES_PER_BLOCK)] }],
};

/// The tile channel's detector: one block's key-independent feature from its mid magnitude (the
/// block's own STFT): every unit's value and its cell (band group × level class, as a float),
/// `tile::BlockFeature`. The keyed sums per key and grid shift are formed in Rust
/// (`BlockFeature::cell_sums`), so one run serves every key and every shift of a search.
pub const DETECTOR: Contract = Contract {
    role: "detector",
    file: "detector.onnx",
    inputs: &[TensorSpec { name: "magnitude", dims: &[D("batch"), F(BINS), F(FRAMES_PER_BLOCK)] }],
    outputs: &[
        TensorSpec { name: "unit_values", dims: &[D("batch"), F(TILE_UNITS)] },
        TensorSpec { name: "unit_cells", dims: &[D("batch"), F(TILE_UNITS)] },
    ],
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
        let frames = FRAMES_PER_BLOCK as i64;
        assert_eq!(shape_mismatch(mask, &[-1, BINS as i64, frames]), None);
        assert!(shape_mismatch(mask, &[-1, 512, frames]).unwrap().contains("[batch, 513, 360]"));
        assert!(shape_mismatch(mask, &[-1, BINS as i64]).is_some());
        assert!(shape_mismatch(mask, &[-1, BINS as i64, -1]).is_some(), "a block's frames are fixed");
        assert!(shape_mismatch(mask, &[1, BINS as i64, frames]).is_some(), "batch must stay dynamic");
    }
}
