//! ONNX spellings of the training nets' building blocks that the generic graph builder lacks:
//! FiLM, PyTorch-layout linear layers and the (bidirectional, multi-layer) LSTM.

use anyhow::{Context, Result, ensure};

use crate::onnx::{Attr, GraphBuilder, Value};

/// A weight tensor from a checkpoint: shape and f32 data (row-major).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// The 2-D transpose (PyTorch stores linear weights `[out, in]`; MatMul wants `[in, out]`).
    pub fn transposed(&self) -> Result<Tensor> {
        ensure!(
            self.shape.len() == 2,
            "cannot transpose a tensor of shape {:?}",
            self.shape
        );
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Ok(Tensor {
            shape: vec![c, r],
            data,
        })
    }
}

/// Adds `t` as an initializer named `name`.
pub fn init(g: &mut GraphBuilder, name: &str, t: &Tensor) -> Result<Value> {
    g.init_f32(name, &t.data, &t.shape)
}

/// `x @ Wᵀ + b` with PyTorch's `[out, in]` weight, over the last axis of `x` (any rank).
pub fn linear(
    g: &mut GraphBuilder,
    x: &Value,
    name: &str,
    w: &Tensor,
    b: &Tensor,
) -> Result<Value> {
    let w = init(g, &format!("{name}.weight"), &w.transposed()?)?;
    let b = init(g, &format!("{name}.bias"), b)?;
    Ok(g.linear(x, &w, Some(&b)))
}

/// FiLM `x·(1 + γ) + β` with `[γ, β] = gb` `[B, 2C]`; `axis` is where `x` holds its C features
/// (1 for `[B, C, T]`, 2 for `[B, T, C]`).
pub fn film(g: &mut GraphBuilder, x: &Value, gb: &Value, width: usize, axis: i64) -> Value {
    let parts = g.split(gb, &[width as i64, width as i64], 1);
    let expand = if axis == 1 { 2 } else { 1 };
    let gamma = g.unsqueeze(&parts[0], &[expand]);
    let beta = g.unsqueeze(&parts[1], &[expand]);
    let gamma1 = g.offset(&gamma, 1.0);
    let y = g.mul(x, &gamma1);
    g.add(&y, &beta)
}

/// Reorders PyTorch's LSTM gate blocks (input, forget, cell, output) into ONNX's (input, output,
/// forget, cell) along the first axis of a `[4H, …]` tensor.
fn onnx_gate_order(t: &Tensor, hidden: usize) -> Tensor {
    let row = t.data.len() / (4 * hidden);
    let block = hidden * row;
    let mut data = Vec::with_capacity(t.data.len());
    for gate in [0, 3, 1, 2] {
        data.extend_from_slice(&t.data[gate * block..(gate + 1) * block]);
    }
    Tensor {
        shape: t.shape.clone(),
        data,
    }
}

/// One direction of one PyTorch LSTM layer.
pub struct LstmWeights<'a> {
    pub w_ih: &'a Tensor,
    pub w_hh: &'a Tensor,
    pub b_ih: &'a Tensor,
    pub b_hh: &'a Tensor,
}

/// A bidirectional LSTM layer on `x` `[T, B, I]` → `[T, B, 2H]` (forward and reverse halves
/// concatenated, as PyTorch outputs them), zero initial state.
pub fn bilstm_layer(
    g: &mut GraphBuilder,
    x: &Value,
    name: &str,
    hidden: usize,
    dirs: [LstmWeights; 2],
) -> Result<Value> {
    let mut w = Vec::new();
    let mut r = Vec::new();
    let mut b = Vec::new();
    let mut input = 0;
    for d in &dirs {
        ensure!(
            d.w_ih.shape.len() == 2 && d.w_ih.shape[0] == 4 * hidden,
            "{name}: input weights of shape {:?}",
            d.w_ih.shape
        );
        ensure!(
            d.w_hh.shape == [4 * hidden, hidden],
            "{name}: hidden weights of shape {:?}",
            d.w_hh.shape
        );
        ensure!(
            d.b_ih.data.len() == 4 * hidden && d.b_hh.data.len() == 4 * hidden,
            "{name}: biases of the wrong size"
        );
        input = d.w_ih.shape[1];
        w.extend(onnx_gate_order(d.w_ih, hidden).data);
        r.extend(onnx_gate_order(d.w_hh, hidden).data);
    }
    for d in &dirs {
        let mut both = onnx_gate_order(d.b_ih, hidden).data;
        both.extend(onnx_gate_order(d.b_hh, hidden).data);
        b.extend(both);
    }
    let w = g.init_f32(&format!("{name}.W"), &w, &[2, 4 * hidden, input])?;
    let r = g.init_f32(&format!("{name}.R"), &r, &[2, 4 * hidden, hidden])?;
    let b = g.init_f32(&format!("{name}.B"), &b, &[2, 8 * hidden])?;
    let y = g.op(
        "LSTM",
        &[x, &w, &r, &b],
        [
            ("hidden_size", Attr::Int(hidden as i64)),
            ("direction", Attr::from("bidirectional")),
        ],
    );
    // Y is [T, 2, B, H] → [T, B, 2, H] → [T, B, 2H].
    let y = g.transpose(&y, &[0, 2, 1, 3]);
    Ok(g.reshape(&y, &[0, 0, -1]))
}

/// The checkpoint tensor `name`, with a clear error when it is missing.
pub fn get<'a>(w: &'a std::collections::HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    w.get(name)
        .with_context(|| format!("the weights have no tensor `{name}`"))
}
