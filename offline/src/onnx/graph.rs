//! An ergonomic ONNX graph builder (opset 17, IR 8) over [`super::proto`].
//!
//! Values are named handles ([`Value`]); helpers for common ops take handles and return the
//! handle of a freshly named output, so network export code reads like the forward pass.
//! Mistakes that only show in the whole graph (an input used before it is produced, a name
//! defined twice, an output that nothing produces) are reported by [`GraphBuilder::finish`].

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use stemmark_models::contract::{self, Contract, TensorSpec};

use super::proto::{
    AttributeProto, AttributeValue, DataType, Dimension, GraphProto, Message, ModelProto,
    NodeProto, OperatorSetId, StringEntry, TensorProto, ValueInfoProto,
};

/// The default-domain opset every exported model imports. Pinned to 17 so the models run on
/// every ONNX Runtime the plugins may meet (it has LayerNormalization, but not Gelu).
pub const OPSET_VERSION: i64 = 17;
/// ONNX IR version matching opset 17.
pub const IR_VERSION: i64 = 8;
/// `ModelProto.producer_name` of every model we write.
pub const PRODUCER: &str = "stemmark";

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Symbolic (dynamic) dimension such as `"batch"`; equal names mean equal sizes.
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_owned())
    }

    fn to_proto(&self) -> Result<Dimension> {
        Ok(match self {
            Dim::Fixed(n) => Dimension::Value(i64::try_from(*n)?),
            Dim::Sym(s) => Dimension::Param(s.clone()),
        })
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::sym(s)
    }
}

/// A contract tensor's axes as graph dims (dynamic axes keep their symbolic names).
fn contract_dims(spec: &TensorSpec) -> Vec<Dim> {
    spec.dims
        .iter()
        .map(|d| match d {
            contract::Dim::Fixed(n) => Dim::Fixed(*n),
            contract::Dim::Dynamic(s) => Dim::sym(s),
        })
        .collect()
}

/// Handle to a named value of the graph (input, initializer or node output).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The empty name ONNX uses for an omitted optional input.
    pub fn absent() -> Value {
        Value(String::new())
    }
}

impl AsRef<str> for Value {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A dense tensor (initializer or tensor attribute), stored as little-endian raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub dims: Vec<usize>,
    pub elem: DataType,
    pub raw: Vec<u8>,
}

fn check_shape(len: usize, shape: &[usize]) -> Result<()> {
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("tensor shape overflows")?;
    ensure!(
        n == len,
        "tensor shape {shape:?} holds {n} elements but {len} were given"
    );
    Ok(())
}

impl TensorData {
    pub fn f32(data: &[f32], shape: &[usize]) -> Result<TensorData> {
        check_shape(data.len(), shape)?;
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(TensorData {
            dims: shape.to_vec(),
            elem: DataType::Float,
            raw,
        })
    }

    /// `data` rounded to IEEE half precision (to nearest, ties to even).
    pub fn f16(data: &[f32], shape: &[usize]) -> Result<TensorData> {
        check_shape(data.len(), shape)?;
        let raw = data.iter().flat_map(|&v| f32_to_f16(v).to_le_bytes()).collect();
        Ok(TensorData {
            dims: shape.to_vec(),
            elem: DataType::Float16,
            raw,
        })
    }

    pub fn i64(data: &[i64], shape: &[usize]) -> Result<TensorData> {
        check_shape(data.len(), shape)?;
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(TensorData {
            dims: shape.to_vec(),
            elem: DataType::Int64,
            raw,
        })
    }

    /// Rank-0 f32 tensor.
    pub fn scalar_f32(v: f32) -> TensorData {
        TensorData {
            dims: vec![],
            elem: DataType::Float,
            raw: v.to_le_bytes().to_vec(),
        }
    }

    /// Rank-1 i64 tensor (shapes, axes, slice bounds).
    pub fn vec_i64(data: &[i64]) -> TensorData {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData {
            dims: vec![data.len()],
            elem: DataType::Int64,
            raw,
        }
    }

    fn to_proto(&self, name: String) -> Result<TensorProto> {
        let dims = self
            .dims
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<_>, _>>()?;
        ensure!(
            self.raw.len().is_multiple_of(self.elem.size()),
            "raw data is not whole elements"
        );
        check_shape(self.raw.len() / self.elem.size(), &self.dims)?;
        Ok(TensorProto {
            name,
            dims,
            data_type: self.elem,
            raw_data: self.raw.clone(),
        })
    }
}

/// The IEEE half nearest to `v` (ties to even); overflow gives ±∞, NaN stays NaN.
pub fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    // Unbiased exponent, rebased for half (bias 15).
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // The 24-bit significand with its implicit one (zero for f32 subnormals, which round to 0).
    let sig = if exp == 0 { 0 } else { man | 0x80_0000 };
    // Bits to drop: 13 for a normal half, more when the result is subnormal.
    let shift = if e >= 1 { 13 } else { 14 - e } as u32;
    if shift > 24 {
        return sign;
    }
    let kept = sig >> shift;
    let rest = sig & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let round = (rest > half || (rest == half && kept & 1 == 1)) as u32;
    let value = if e >= 1 {
        // Normal: drop the implicit bit, add the exponent; a carry from rounding bumps it correctly.
        (((e as u32) << 10) | (kept & 0x3ff)) + round
    } else {
        kept + round
    };
    sign | value as u16
}

/// The value of IEEE half `h` (exact: every half is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A typed node attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    String(String),
    Tensor(TensorData),
}

impl From<i64> for Attr {
    fn from(v: i64) -> Attr {
        Attr::Int(v)
    }
}

impl From<f32> for Attr {
    fn from(v: f32) -> Attr {
        Attr::Float(v)
    }
}

impl From<&[i64]> for Attr {
    fn from(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }
}

impl From<Vec<i64>> for Attr {
    fn from(v: Vec<i64>) -> Attr {
        Attr::Ints(v)
    }
}

impl From<&[f32]> for Attr {
    fn from(v: &[f32]) -> Attr {
        Attr::Floats(v.to_vec())
    }
}

impl From<&str> for Attr {
    fn from(v: &str) -> Attr {
        Attr::String(v.to_owned())
    }
}

impl From<TensorData> for Attr {
    fn from(v: TensorData) -> Attr {
        Attr::Tensor(v)
    }
}

/// Options shared by `Conv` and `ConvTranspose`. Empty lists are left out so ONNX defaults
/// apply (stride 1, no padding, dilation 1); the kernel shape is taken from the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvOpts {
    pub strides: Vec<i64>,
    /// ONNX order: all begins, then all ends (`[begin_1, …, end_1, …]`).
    pub pads: Vec<i64>,
    pub dilations: Vec<i64>,
    pub group: i64,
    /// `ConvTranspose` only.
    pub output_padding: Vec<i64>,
}

impl Default for ConvOpts {
    fn default() -> Self {
        ConvOpts {
            strides: vec![],
            pads: vec![],
            dilations: vec![],
            group: 1,
            output_padding: vec![],
        }
    }
}

impl ConvOpts {
    /// 1-D convolution options.
    pub fn d1(stride: i64, pad: i64, dilation: i64, group: i64) -> ConvOpts {
        ConvOpts {
            strides: vec![stride],
            pads: vec![pad, pad],
            dilations: vec![dilation],
            group,
            output_padding: vec![],
        }
    }

    fn attrs(&self, transpose: bool) -> Vec<(&'static str, Attr)> {
        let mut a = Vec::new();
        for (name, v) in [
            ("strides", &self.strides),
            ("pads", &self.pads),
            ("dilations", &self.dilations),
        ] {
            if !v.is_empty() {
                a.push((name, Attr::Ints(v.clone())));
            }
        }
        a.push(("group", Attr::Int(self.group)));
        if transpose && !self.output_padding.is_empty() {
            a.push(("output_padding", Attr::Ints(self.output_padding.clone())));
        }
        a
    }
}

/// Builds one ONNX graph. See the module doc.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: GraphProto,
    /// Every name handed out or registered, so generated names never clash with earlier ones.
    used: HashSet<String>,
    counters: HashMap<String, usize>,
    node_count: usize,
    /// Shared constants, so helpers that need `1.0` or `[0]` do not add one initializer per use.
    f32_scalars: HashMap<u32, Value>,
    i64_vectors: HashMap<Vec<i64>, Value>,
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            graph: GraphProto {
                name: name.to_owned(),
                ..GraphProto::default()
            },
            used: HashSet::new(),
            counters: HashMap::new(),
            node_count: 0,
            f32_scalars: HashMap::new(),
            i64_vectors: HashMap::new(),
        }
    }

    pub fn set_doc(&mut self, doc: &str) {
        self.graph.doc_string = doc.to_owned();
    }

    /// A name starting with `hint` that no earlier value uses (`hint`, then `hint_1`, …).
    pub fn fresh_name(&mut self, hint: &str) -> String {
        let hint = if hint.is_empty() { "v" } else { hint };
        let mut name = hint.to_owned();
        while self.used.contains(&name) {
            let n = self.counters.entry(hint.to_owned()).or_insert(0);
            *n += 1;
            name = format!("{hint}_{n}");
        }
        self.used.insert(name.clone());
        name
    }

    /// Declares a graph input. Duplicate names are reported by [`finish`](Self::finish).
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> Result<Value> {
        let shape = dims.iter().map(Dim::to_proto).collect::<Result<Vec<_>>>()?;
        self.used.insert(name.to_owned());
        self.graph.input.push(ValueInfoProto {
            name: name.to_owned(),
            elem_type: elem,
            shape: Some(shape),
            doc_string: String::new(),
        });
        Ok(Value(name.to_owned()))
    }

    /// Declares float input `i` of contract `c`, with the contract's name and shape.
    pub fn contract_input(&mut self, c: &Contract, i: usize) -> Result<Value> {
        self.input(c.inputs[i].name, DataType::Float, &contract_dims(&c.inputs[i]))
    }

    /// Declares `value` as float output `i` of contract `c`.
    pub fn contract_output(&mut self, c: &Contract, i: usize, value: &Value) -> Result<Value> {
        self.output(value, c.outputs[i].name, DataType::Float, &contract_dims(&c.outputs[i]))
    }

    /// Declares `value` as graph output `name`, adding an `Identity` when the names differ
    /// (ONNX has no renaming, and internal names are generated).
    pub fn output(
        &mut self,
        value: &Value,
        name: &str,
        elem: DataType,
        dims: &[Dim],
    ) -> Result<Value> {
        let shape = dims.iter().map(Dim::to_proto).collect::<Result<Vec<_>>>()?;
        if value.name() != name {
            self.used.insert(name.to_owned());
            self.node("Identity", &[value], &[name], []);
        }
        self.graph.output.push(ValueInfoProto {
            name: name.to_owned(),
            elem_type: elem,
            shape: Some(shape),
            doc_string: String::new(),
        });
        Ok(Value(name.to_owned()))
    }

    /// Adds an initializer named after `hint` (made unique).
    pub fn initializer(&mut self, hint: &str, t: TensorData) -> Result<Value> {
        let name = self.fresh_name(hint);
        self.graph.initializer.push(t.to_proto(name.clone())?);
        Ok(Value(name))
    }

    pub fn init_f32(&mut self, hint: &str, data: &[f32], shape: &[usize]) -> Result<Value> {
        self.initializer(hint, TensorData::f32(data, shape)?)
    }

    pub fn init_i64(&mut self, hint: &str, data: &[i64], shape: &[usize]) -> Result<Value> {
        self.initializer(hint, TensorData::i64(data, shape)?)
    }

    /// A shared rank-0 f32 constant.
    pub fn scalar(&mut self, v: f32) -> Value {
        if let Some(x) = self.f32_scalars.get(&v.to_bits()) {
            return x.clone();
        }
        let name = self.fresh_name("const_f");
        let t = TensorData::scalar_f32(v);
        self.graph.initializer.push(TensorProto {
            name: name.clone(),
            dims: vec![],
            data_type: t.elem,
            raw_data: t.raw,
        });
        let x = Value(name);
        self.f32_scalars.insert(v.to_bits(), x.clone());
        x
    }

    /// A shared rank-1 i64 constant (shapes, axes, slice bounds).
    pub fn ints(&mut self, v: &[i64]) -> Value {
        if let Some(x) = self.i64_vectors.get(v) {
            return x.clone();
        }
        let name = self.fresh_name("const_i");
        let t = TensorData::vec_i64(v);
        self.graph.initializer.push(TensorProto {
            name: name.clone(),
            dims: vec![v.len() as i64],
            data_type: t.elem,
            raw_data: t.raw,
        });
        let x = Value(name);
        self.i64_vectors.insert(v.to_vec(), x.clone());
        x
    }

    /// Adds a node. Empty strings in `outputs` get generated names; others are used verbatim.
    /// Returns the output handles in order.
    pub fn node<'a>(
        &mut self,
        op: &str,
        inputs: &[&Value],
        outputs: &[&str],
        attrs: impl IntoIterator<Item = (&'a str, Attr)>,
    ) -> Vec<Value> {
        let hint = op.to_ascii_lowercase();
        let outs: Vec<String> = outputs
            .iter()
            .map(|&o| {
                if o.is_empty() {
                    self.fresh_name(&hint)
                } else {
                    self.used.insert(o.to_owned());
                    o.to_owned()
                }
            })
            .collect();
        self.node_count += 1;
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| AttributeProto {
                name: name.to_owned(),
                value: attr_value(a),
            })
            .collect();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: outs.clone(),
            name: format!("{op}_{}", self.node_count),
            op_type: op.to_owned(),
            domain: String::new(),
            attribute,
        });
        outs.into_iter().map(Value).collect()
    }

    /// A single-output node with a generated output name.
    pub fn op<'a>(
        &mut self,
        op: &str,
        inputs: &[&Value],
        attrs: impl IntoIterator<Item = (&'a str, Attr)>,
    ) -> Value {
        let mut out = self.node(op, inputs, &[""], attrs);
        out.pop().unwrap_or_else(Value::absent)
    }

    // --- element-wise -------------------------------------------------------------------

    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Add", &[a, b], [])
    }
    pub fn sub(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Sub", &[a, b], [])
    }
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Mul", &[a, b], [])
    }
    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Div", &[a, b], [])
    }
    pub fn pow(&mut self, a: &Value, b: &Value) -> Value {
        self.op("Pow", &[a, b], [])
    }
    pub fn sqrt(&mut self, x: &Value) -> Value {
        self.op("Sqrt", &[x], [])
    }
    pub fn exp(&mut self, x: &Value) -> Value {
        self.op("Exp", &[x], [])
    }
    pub fn log(&mut self, x: &Value) -> Value {
        self.op("Log", &[x], [])
    }
    pub fn abs(&mut self, x: &Value) -> Value {
        self.op("Abs", &[x], [])
    }
    pub fn neg(&mut self, x: &Value) -> Value {
        self.op("Neg", &[x], [])
    }
    pub fn tanh(&mut self, x: &Value) -> Value {
        self.op("Tanh", &[x], [])
    }
    pub fn sigmoid(&mut self, x: &Value) -> Value {
        self.op("Sigmoid", &[x], [])
    }
    pub fn relu(&mut self, x: &Value) -> Value {
        self.op("Relu", &[x], [])
    }
    pub fn erf(&mut self, x: &Value) -> Value {
        self.op("Erf", &[x], [])
    }
    pub fn identity(&mut self, x: &Value) -> Value {
        self.op("Identity", &[x], [])
    }

    /// `x · scalar`.
    pub fn scale(&mut self, x: &Value, s: f32) -> Value {
        let c = self.scalar(s);
        self.mul(x, &c)
    }

    /// `x + scalar`.
    pub fn offset(&mut self, x: &Value, s: f32) -> Value {
        let c = self.scalar(s);
        self.add(x, &c)
    }

    /// Exact GELU, `0.5·x·(1 + erf(x/√2))`, spelled with Erf (the Gelu op needs opset 20).
    pub fn gelu(&mut self, x: &Value) -> Value {
        let xs = self.scale(x, std::f32::consts::FRAC_1_SQRT_2);
        let e = self.erf(&xs);
        let e1 = self.offset(&e, 1.0);
        let xe = self.mul(x, &e1);
        self.scale(&xe, 0.5)
    }

    /// Swish / SiLU, `x·σ(x)` (Conformer feed-forward and convolution modules).
    pub fn silu(&mut self, x: &Value) -> Value {
        let s = self.sigmoid(x);
        self.mul(x, &s)
    }

    // --- linear algebra -----------------------------------------------------------------

    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        self.op("MatMul", &[a, b], [])
    }

    /// `alpha·A'·B' + beta·C` on 2-D `A`, `B`.
    pub fn gemm(
        &mut self,
        a: &Value,
        b: &Value,
        c: Option<&Value>,
        trans_a: bool,
        trans_b: bool,
    ) -> Value {
        let inputs: Vec<&Value> = match c {
            Some(c) => vec![a, b, c],
            None => vec![a, b],
        };
        self.op(
            "Gemm",
            &inputs,
            [
                ("transA", Attr::Int(trans_a.into())),
                ("transB", Attr::Int(trans_b.into())),
            ],
        )
    }

    /// `x @ w + b` for inputs of any rank (MatMul broadcasts leading dims; Gemm would not).
    pub fn linear(&mut self, x: &Value, w: &Value, b: Option<&Value>) -> Value {
        let y = self.matmul(x, w);
        match b {
            Some(b) => self.add(&y, b),
            None => y,
        }
    }

    // --- normalisation and activation over an axis ----------------------------------------

    pub fn softmax(&mut self, x: &Value, axis: i64) -> Value {
        self.op("Softmax", &[x], [("axis", Attr::Int(axis))])
    }

    /// LayerNormalization (opset 17) over dims `axis..`.
    pub fn layer_norm(
        &mut self,
        x: &Value,
        scale: &Value,
        bias: Option<&Value>,
        axis: i64,
        epsilon: f32,
    ) -> Value {
        let inputs: Vec<&Value> = match bias {
            Some(b) => vec![x, scale, b],
            None => vec![x, scale],
        };
        self.op(
            "LayerNormalization",
            &inputs,
            [("axis", Attr::Int(axis)), ("epsilon", Attr::Float(epsilon))],
        )
    }

    /// Gated linear unit over `axis`: first half · σ(second half).
    pub fn glu(&mut self, x: &Value, axis: i64) -> Value {
        let halves = self.node("Split", &[x], &["", ""], [("axis", Attr::Int(axis))]);
        let gate = self.sigmoid(&halves[1]);
        self.mul(&halves[0], &gate)
    }

    // --- convolution ----------------------------------------------------------------------

    pub fn conv(&mut self, x: &Value, w: &Value, b: Option<&Value>, opts: &ConvOpts) -> Value {
        let inputs: Vec<&Value> = match b {
            Some(b) => vec![x, w, b],
            None => vec![x, w],
        };
        self.op("Conv", &inputs, opts.attrs(false))
    }

    /// Weights are `[C_in, C_out/group, k…]`, as ONNX and PyTorch store them.
    pub fn conv_transpose(
        &mut self,
        x: &Value,
        w: &Value,
        b: Option<&Value>,
        opts: &ConvOpts,
    ) -> Value {
        let inputs: Vec<&Value> = match b {
            Some(b) => vec![x, w, b],
            None => vec![x, w],
        };
        self.op("ConvTranspose", &inputs, opts.attrs(true))
    }

    // --- shape ----------------------------------------------------------------------------

    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.op("Transpose", &[x], [("perm", Attr::Ints(perm.to_vec()))])
    }

    /// Reshape; `0` copies the input dim, `-1` is inferred.
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s], [])
    }

    /// Unsqueeze with axes as an input (opset 13+).
    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a], [])
    }

    /// Squeeze with axes as an input (opset 13+).
    pub fn squeeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.ints(axes);
        self.op("Squeeze", &[x, &a], [])
    }

    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        self.op("Concat", xs, [("axis", Attr::Int(axis))])
    }

    /// Slice with bounds as inputs (opset 13+); `steps: None` means step 1.
    pub fn slice(
        &mut self,
        x: &Value,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: Option<&[i64]>,
    ) -> Value {
        let s = self.ints(starts);
        let e = self.ints(ends);
        let a = self.ints(axes);
        match steps {
            Some(st) => {
                let st = self.ints(st);
                self.op("Slice", &[x, &s, &e, &a, &st], [])
            }
            None => self.op("Slice", &[x, &s, &e, &a], []),
        }
    }

    /// Splits `x` along `axis` into pieces of the given sizes (split sizes as an input, opset 13+).
    pub fn split(&mut self, x: &Value, sizes: &[i64], axis: i64) -> Vec<Value> {
        let s = self.ints(sizes);
        let outs = vec![""; sizes.len()];
        self.node("Split", &[x, &s], &outs, [("axis", Attr::Int(axis))])
    }

    // --- reductions -----------------------------------------------------------------------

    /// ReduceMean; in opset 17 its axes are still an attribute.
    pub fn reduce_mean(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        self.op(
            "ReduceMean",
            &[x],
            [
                ("axes", Attr::Ints(axes.to_vec())),
                ("keepdims", Attr::Int(keepdims.into())),
            ],
        )
    }

    /// ReduceSum; unlike ReduceMean, its axes are an input since opset 13.
    pub fn reduce_sum(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Value {
        let a = self.ints(axes);
        self.op(
            "ReduceSum",
            &[x, &a],
            [("keepdims", Attr::Int(keepdims.into()))],
        )
    }

    // --- constants ------------------------------------------------------------------------

    /// A `Constant` node (for values that must be node outputs rather than initializers).
    pub fn constant(&mut self, t: TensorData) -> Value {
        self.op("Constant", &[], [("value", Attr::Tensor(t))])
    }

    /// Checks the graph and wraps it in a model with opset 17 and IR 8.
    pub fn finish(self) -> Result<Model> {
        validate(&self.graph)?;
        Ok(Model {
            proto: ModelProto {
                ir_version: IR_VERSION,
                opset_import: vec![OperatorSetId {
                    domain: String::new(),
                    version: OPSET_VERSION,
                }],
                producer_name: PRODUCER.to_owned(),
                producer_version: env!("CARGO_PKG_VERSION").to_owned(),
                domain: String::new(),
                model_version: 1,
                doc_string: String::new(),
                graph: self.graph,
                metadata_props: vec![],
            },
        })
    }
}

fn attr_value(a: Attr) -> AttributeValue {
    match a {
        Attr::Int(v) => AttributeValue::Int(v),
        Attr::Float(v) => AttributeValue::Float(v),
        Attr::Ints(v) => AttributeValue::Ints(v),
        Attr::Floats(v) => AttributeValue::Floats(v),
        Attr::String(s) => AttributeValue::String(s.into_bytes()),
        Attr::Tensor(t) => AttributeValue::Tensor(TensorProto {
            name: String::new(),
            dims: t.dims.iter().map(|&d| d as i64).collect(),
            data_type: t.elem,
            raw_data: t.raw,
        }),
    }
}

/// Single definition of every name, every node input defined before use (so the node list is
/// topologically sorted, as ONNX requires), and every graph output produced.
fn validate(g: &GraphProto) -> Result<()> {
    let mut defined: HashSet<&str> = HashSet::new();
    for v in &g.input {
        define(&mut defined, "graph input", &v.name)?;
    }
    for t in &g.initializer {
        define(&mut defined, "initializer", &t.name)?;
    }
    for n in &g.node {
        for i in &n.input {
            if !i.is_empty() && !defined.contains(i.as_str()) {
                bail!(
                    "node {} ({}) reads `{i}` before anything produces it",
                    n.name,
                    n.op_type
                );
            }
        }
        for o in &n.output {
            define(&mut defined, "node output", o)?;
        }
    }
    ensure!(!g.output.is_empty(), "graph has no outputs");
    let mut outs = HashSet::new();
    for o in &g.output {
        ensure!(
            defined.contains(o.name.as_str()),
            "graph output `{}` is never produced",
            o.name
        );
        ensure!(
            outs.insert(o.name.as_str()),
            "graph output `{}` is listed twice",
            o.name
        );
    }
    Ok(())
}

fn define<'g>(defined: &mut HashSet<&'g str>, what: &str, name: &'g str) -> Result<()> {
    ensure!(!name.is_empty(), "{what} with an empty name");
    ensure!(defined.insert(name), "{what} `{name}` is defined twice");
    Ok(())
}

/// A finished model, ready to serialise.
#[derive(Clone, Debug)]
pub struct Model {
    proto: ModelProto,
}

impl Model {
    /// Adds a `metadata_props` entry (e.g. the signal spec or the training run).
    pub fn with_metadata(mut self, key: &str, value: &str) -> Model {
        self.proto.metadata_props.push(StringEntry {
            key: key.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    pub fn with_doc(mut self, doc: &str) -> Model {
        self.proto.doc_string = doc.to_owned();
        self
    }

    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    /// The serialised `ModelProto`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.to_bytes()
    }

    /// Writes the model atomically: a temp file in the target's directory, then a rename, so a
    /// reader never sees a half-written model.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".onnx-")
            .suffix(".tmp")
            .permissions(crate::audio::new_file_permissions())
        .tempfile_in(dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        tmp.write_all(&self.to_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::reader::{self, AttrVal};

    fn f16_value(h: u16) -> f64 {
        f16_to_f32(h) as f64
    }

    #[test]
    fn f16_widening() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    }

    /// Against the nearest of all 63 488 finite halves (ties to the even one), for values across
    /// the normal and subnormal ranges, their rounding boundaries, overflow and specials.
    #[test]
    fn f16_rounds_to_nearest_even() {
        let mut halves: Vec<(f64, u16)> =
            (0..=u16::MAX).filter(|&h| (h >> 10) & 0x1f != 31).map(|h| (f16_value(h), h)).collect();
        halves.sort_by(|a, b| a.0.total_cmp(&b.0));
        let nearest = |v: f32| -> u16 {
            let v = v as f64;
            let i = halves.partition_point(|&(x, _)| x < v);
            let mut best = halves[i.min(halves.len() - 1)];
            for &(x, h) in &halves[i.saturating_sub(2)..(i + 2).min(halves.len())] {
                let (d, bd) = ((x - v).abs(), (best.0 - v).abs());
                if d < bd || (d == bd && (h & 1 == 0) && (best.1 & 1 == 1)) {
                    best = (x, h);
                }
            }
            best.1
        };
        let mut values = vec![0.0f32, 1.0, -2.0, 1.0 / 3.0, 65504.0, 6.1e-5, 5.96e-8, 2.98e-8, 1e-9];
        let mut state = 0x9e37_79b9_u32;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let mant = (state & 0x7f_ffff) | 0x3f80_0000;
            let scale = 2f32.powi((state >> 23 & 63) as i32 - 30);
            values.push(f32::from_bits(mant) * scale * if state >> 31 == 1 { -1.0 } else { 1.0 });
        }
        // Exact midpoints between neighbouring halves.
        for h in [0x3c00u16, 0x3c01, 0x0001, 0x0002, 0x03ff, 0x7bfe] {
            values.push(((f16_value(h) + f16_value(h + 1)) / 2.0) as f32);
        }
        for v in values {
            let got = f32_to_f16(v);
            let want = if (v as f64).abs() >= 65520.0 { (if v < 0.0 { 0x8000 } else { 0 }) | 0x7c00 } else { nearest(v) };
            // ±0 are both nearest to a zero: compare values there.
            if f16_value(want) == 0.0 {
                assert_eq!(f16_value(got), 0.0, "{v:e}");
            } else {
                assert_eq!(got, want, "{v:e}: {:e} vs {:e}", f16_value(got), f16_value(want));
            }
        }
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert!(f16_value(f32_to_f16(f32::NAN)).is_nan());
    }

    fn decode(m: &Model) -> reader::Model {
        reader::model(&m.to_bytes()).unwrap()
    }

    fn tiny() -> GraphBuilder {
        let mut g = GraphBuilder::new("tiny");
        let x = g
            .input("x", DataType::Float, &[Dim::sym("batch"), 4.into()])
            .unwrap();
        let w = g
            .init_f32("w", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[4, 2])
            .unwrap();
        let y = g.matmul(&x, &w);
        let y = g.relu(&y);
        g.output(&y, "y", DataType::Float, &["batch".into(), 2.into()])
            .unwrap();
        g
    }

    #[test]
    fn model_header_and_graph_round_trip() {
        let m = decode(&tiny().finish().unwrap().with_metadata("k", "v"));
        assert_eq!(m.ir_version, 8);
        assert_eq!(m.producer_name, "stemmark");
        assert_eq!(m.opsets, vec![(String::new(), 17)]);
        assert_eq!(m.metadata, vec![("k".into(), "v".into())]);
        assert_eq!(m.graph.name, "tiny");
        assert_eq!(m.graph.ops(), ["MatMul", "Relu", "Identity"]);
        let x = &m.graph.inputs[0];
        assert_eq!((x.name.as_str(), x.elem_type), ("x", 1));
        assert_eq!(
            x.dims,
            Some(vec![
                reader::Dim::Param("batch".into()),
                reader::Dim::Value(4)
            ])
        );
        assert_eq!(m.graph.outputs[0].name, "y");
        let w = m.graph.initializer("w").unwrap();
        assert_eq!(w.dims, vec![4, 2]);
        assert_eq!(w.f32s().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        // Wiring: MatMul(x, w) feeds Relu feeds Identity → y.
        let n = &m.graph.nodes;
        assert_eq!(n[0].inputs, ["x", "w"]);
        assert_eq!(n[1].inputs, n[0].outputs);
        assert_eq!(n[2].inputs, n[1].outputs);
        assert_eq!(n[2].outputs, ["y"]);
    }

    #[test]
    fn typed_attributes_survive_encoding() {
        let mut g = GraphBuilder::new("attrs");
        let x = g
            .input("x", DataType::Float, &[1.into(), 3.into(), 8.into()])
            .unwrap();
        let y = g.node(
            "Custom",
            &[&x, &Value::absent()],
            &[""],
            [
                ("i", Attr::Int(-3)),
                ("f", Attr::Float(0.25)),
                ("is", Attr::Ints(vec![0, 1, -1])),
                ("fs", Attr::Floats(vec![0.5, -2.0])),
                ("s", Attr::from("reflect")),
                ("t", Attr::Tensor(TensorData::i64(&[4, 5], &[2]).unwrap())),
            ],
        );
        g.output(&y[0], "y", DataType::Float, &[]).unwrap();
        let m = decode(&g.finish().unwrap());
        let n = &m.graph.nodes[0];
        assert_eq!(
            n.inputs,
            ["x", ""],
            "an omitted optional input stays an empty name"
        );
        assert_eq!(n.attr("i"), Some(&AttrVal::Int(-3)));
        assert_eq!(n.attr("f"), Some(&AttrVal::Float(0.25)));
        assert_eq!(n.attr("is"), Some(&AttrVal::Ints(vec![0, 1, -1])));
        assert_eq!(n.attr("fs"), Some(&AttrVal::Floats(vec![0.5, -2.0])));
        assert_eq!(n.attr("s"), Some(&AttrVal::Str("reflect".into())));
        match n.attr("t") {
            Some(AttrVal::Tensor(t)) => {
                assert_eq!(t.dims, vec![2]);
                assert_eq!(t.i64s().unwrap(), [4, 5]);
            }
            other => panic!("tensor attribute decoded as {other:?}"),
        }
        // A rank-0 output shape is present but empty, not missing.
        assert_eq!(m.graph.outputs[0].dims, Some(vec![]));
    }

    #[test]
    fn helpers_emit_opset17_forms() {
        let mut g = GraphBuilder::new("ops");
        let x = g
            .input("x", DataType::Float, &["b".into(), 8.into(), "t".into()])
            .unwrap();
        let u = g.unsqueeze(&x, &[1]);
        let s = g.squeeze(&u, &[1]);
        let r = g.reduce_mean(&s, &[2], true);
        let r2 = g.reduce_sum(&s, &[2], false);
        let sl = g.slice(&x, &[0], &[4], &[1], None);
        let halves = g.split(&x, &[4, 4], 1);
        let glu = g.glu(&x, 1);
        let gelu = g.gelu(&x);
        let sc = g.init_f32("ln_s", &[1.0; 8], &[8]).unwrap();
        let xt = g.transpose(&x, &[0, 2, 1]);
        let ln = g.layer_norm(&xt, &sc, None, -1, 1e-5);
        let sm = g.softmax(&ln, -1);
        let c = g.concat(&[&sl, &halves[0], &glu], 1);
        let w = g.init_f32("w", &[0.0; 8 * 8 * 3], &[8, 8, 3]).unwrap();
        let cv = g.conv(&x, &w, None, &ConvOpts::d1(2, 1, 1, 1));
        let ct = g.conv_transpose(
            &cv,
            &w,
            None,
            &ConvOpts {
                output_padding: vec![1],
                ..ConvOpts::d1(2, 1, 1, 1)
            },
        );
        for (v, name) in [
            (&r, "r"),
            (&r2, "r2"),
            (&c, "c"),
            (&gelu, "gelu"),
            (&sm, "sm"),
            (&ct, "ct"),
        ] {
            g.output(v, name, DataType::Float, &[]).unwrap();
        }
        let m = decode(&g.finish().unwrap());
        let node = |op: &str| {
            m.graph
                .nodes
                .iter()
                .find(|n| n.op_type == op)
                .unwrap()
                .clone()
        };
        let ints = |name: &str| m.graph.initializer(name).unwrap().i64s().unwrap();
        // Opset 13+: Unsqueeze/Squeeze/ReduceSum/Slice/Split take axes or sizes as inputs.
        assert_eq!(ints(&node("Unsqueeze").inputs[1]), [1]);
        assert_eq!(ints(&node("Squeeze").inputs[1]), [1]);
        assert_eq!(ints(&node("ReduceSum").inputs[1]), [2]);
        assert_eq!(node("ReduceSum").attr("keepdims"), Some(&AttrVal::Int(0)));
        let slice = node("Slice");
        assert_eq!(slice.inputs.len(), 4);
        assert_eq!(
            (ints(&slice.inputs[1]), ints(&slice.inputs[2])),
            (vec![0], vec![4])
        );
        // ...but ReduceMean keeps its axes attribute until opset 18.
        let rm = node("ReduceMean");
        assert_eq!(rm.inputs.len(), 1);
        assert_eq!(rm.attr("axes"), Some(&AttrVal::Ints(vec![2])));
        // GELU is spelled with Erf (the Gelu op is opset 20) and no op outside opset 17 appears.
        assert!(m.graph.nodes.iter().all(|n| n.op_type != "Gelu"));
        assert!(m.graph.ops().contains(&"Erf"));
        let ln = node("LayerNormalization");
        assert_eq!(ln.inputs.len(), 2);
        assert_eq!(ln.attr("axis"), Some(&AttrVal::Int(-1)));
        assert_eq!(
            node("Transpose").attr("perm"),
            Some(&AttrVal::Ints(vec![0, 2, 1]))
        );
        assert_eq!(node("Concat").attr("axis"), Some(&AttrVal::Int(1)));
        let conv = node("Conv");
        assert_eq!(conv.attr("strides"), Some(&AttrVal::Ints(vec![2])));
        assert_eq!(conv.attr("pads"), Some(&AttrVal::Ints(vec![1, 1])));
        assert_eq!(
            node("ConvTranspose").attr("output_padding"),
            Some(&AttrVal::Ints(vec![1]))
        );
        assert!(conv.attr("output_padding").is_none());
        // Two-way Split: equal halves from sizes, and a sizes-free split for GLU.
        let splits: Vec<_> = m
            .graph
            .nodes
            .iter()
            .filter(|n| n.op_type == "Split")
            .collect();
        assert_eq!(splits.len(), 2);
        assert_eq!(splits[0].outputs.len(), 2);
        assert_eq!(splits[1].inputs.len(), 1);
        // Shared constants: `ints(&[1])` was requested by Unsqueeze, Squeeze and Slice's axes.
        let ones = m
            .graph
            .initializers
            .iter()
            .filter(|t| t.data_type == 7 && t.i64s().unwrap() == [1]);
        assert_eq!(ones.count(), 1);
    }

    #[test]
    fn fresh_names_never_collide() {
        let mut g = GraphBuilder::new("names");
        let x = g.input("add", DataType::Float, &[1.into()]).unwrap();
        let a = g.add(&x, &x);
        let b = g.add(&a, &x);
        assert_eq!([a.name(), b.name()], ["add_1", "add_2"]);
        assert_eq!(g.fresh_name("w"), "w");
        assert_eq!(g.fresh_name("w"), "w_1");
        g.output(&b, "out", DataType::Float, &[1.into()]).unwrap();
        let m = decode(&g.finish().unwrap());
        let node_names: HashSet<_> = m.graph.nodes.iter().map(|n| n.name.clone()).collect();
        assert_eq!(node_names.len(), m.graph.nodes.len());
    }

    #[test]
    fn finish_rejects_broken_graphs() {
        // Reading a value before it exists.
        let mut g = GraphBuilder::new("bad");
        let x = g.input("x", DataType::Float, &[1.into()]).unwrap();
        let y = g.relu(&Value("later".into()));
        g.node("Identity", &[&x], &["later"], []);
        g.output(&y, "y", DataType::Float, &[1.into()]).unwrap();
        let err = g.finish().unwrap_err().to_string();
        assert!(err.contains("before anything produces it"), "{err}");

        // A name defined twice.
        let mut g = GraphBuilder::new("dup");
        let x = g.input("x", DataType::Float, &[1.into()]).unwrap();
        g.input("x", DataType::Float, &[1.into()]).unwrap();
        g.output(&x, "y", DataType::Float, &[1.into()]).unwrap();
        assert!(
            g.finish()
                .unwrap_err()
                .to_string()
                .contains("defined twice")
        );

        // An output nothing produces, and a graph without outputs.
        let mut g = GraphBuilder::new("noout");
        g.input("x", DataType::Float, &[1.into()]).unwrap();
        g.graph.output.push(ValueInfoProto {
            name: "ghost".into(),
            elem_type: DataType::Float,
            shape: None,
            doc_string: String::new(),
        });
        assert!(
            g.finish()
                .unwrap_err()
                .to_string()
                .contains("never produced")
        );
        assert!(GraphBuilder::new("empty").finish().is_err());
    }

    #[test]
    fn initializer_shape_must_match_data() {
        let mut g = GraphBuilder::new("shape");
        assert!(g.init_f32("w", &[1.0, 2.0, 3.0], &[2, 2]).is_err());
        assert!(g.init_i64("i", &[1, 2], &[2]).is_ok());
        assert!(TensorData::f32(&[], &[0, 5]).is_ok());
        assert!(TensorData::f32(&[1.0], &[usize::MAX, 2]).is_err());
    }

    #[test]
    fn save_is_atomic_and_matches_to_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"old").unwrap();
        let m = tiny().finish().unwrap();
        m.save(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), m.to_bytes());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
        assert!(m.save(&dir.path().join("missing/m.onnx")).is_err());
    }
}
