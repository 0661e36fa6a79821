//! A tiny, independent protobuf wire reader for tests: decodes exported bytes back into plain
//! structs so tests check what was actually written, not what the builder meant to write.
//! Strict on purpose: unknown fields, wrong wire types and truncation are errors.

use anyhow::{Context, Result, bail, ensure};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos).context("truncated varint")?;
        *pos += 1;
        ensure!(shift < 64, "varint too long");
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

/// Splits one message into (field number, value) pairs in wire order.
pub fn fields(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let field = u32::try_from(key >> 3).context("field number too large")?;
        ensure!(field > 0, "field number 0");
        let value = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => {
                let b = buf.get(pos..pos + 8).context("truncated fixed64")?;
                pos += 8;
                Wire::Fixed64(u64::from_le_bytes(b.try_into()?))
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)?;
                let b = buf
                    .get(pos..pos + len)
                    .context("truncated length-delimited field")?;
                pos += len;
                Wire::Bytes(b)
            }
            5 => {
                let b = buf.get(pos..pos + 4).context("truncated fixed32")?;
                pos += 4;
                Wire::Fixed32(u32::from_le_bytes(b.try_into()?))
            }
            w => bail!("unsupported wire type {w}"),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn as_int(w: Wire<'_>) -> Result<i64> {
    match w {
        Wire::Varint(v) => Ok(v as i64),
        other => bail!("expected varint, got {other:?}"),
    }
}

fn as_bytes(w: Wire<'_>) -> Result<&[u8]> {
    match w {
        Wire::Bytes(b) => Ok(b),
        other => bail!("expected length-delimited, got {other:?}"),
    }
}

fn as_str(w: Wire<'_>) -> Result<String> {
    Ok(String::from_utf8(as_bytes(w)?.to_vec())?)
}

fn as_f32(w: Wire<'_>) -> Result<f32> {
    match w {
        Wire::Fixed32(v) => Ok(f32::from_bits(v)),
        other => bail!("expected fixed32, got {other:?}"),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i64,
    pub raw: Vec<u8>,
}

impl Tensor {
    pub fn f32s(&self) -> Result<Vec<f32>> {
        ensure!(self.data_type == 1, "not a float tensor");
        ensure!(self.raw.len().is_multiple_of(4), "ragged raw data");
        Ok(self
            .raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    pub fn i64s(&self) -> Result<Vec<i64>> {
        ensure!(self.data_type == 7, "not an int64 tensor");
        ensure!(self.raw.len().is_multiple_of(8), "ragged raw data");
        Ok(self
            .raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }
}

fn tensor(buf: &[u8]) -> Result<Tensor> {
    let mut t = Tensor {
        name: String::new(),
        dims: vec![],
        data_type: 0,
        raw: vec![],
    };
    let mut has_raw = false;
    for (f, w) in fields(buf)? {
        match f {
            1 => t.dims.push(as_int(w)?),
            2 => t.data_type = as_int(w)?,
            8 => t.name = as_str(w)?,
            9 => {
                t.raw = as_bytes(w)?.to_vec();
                has_raw = true;
            }
            _ => bail!("unexpected TensorProto field {f}"),
        }
    }
    ensure!(has_raw, "tensor {} has no raw_data", t.name);
    Ok(t)
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrVal {
    Float(f32),
    Int(i64),
    Str(String),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub name: String,
    pub type_code: i64,
    pub value: AttrVal,
}

fn attribute(buf: &[u8]) -> Result<Attr> {
    let (mut name, mut type_code) = (None, None);
    let (mut f, mut i, mut s, mut t) = (None, None, None, None);
    let (mut floats, mut ints) = (Vec::new(), Vec::new());
    for (field, w) in fields(buf)? {
        match field {
            1 => name = Some(as_str(w)?),
            2 => f = Some(as_f32(w)?),
            3 => i = Some(as_int(w)?),
            4 => s = Some(as_str(w)?),
            5 => t = Some(tensor(as_bytes(w)?)?),
            7 => floats.push(as_f32(w)?),
            8 => ints.push(as_int(w)?),
            20 => type_code = Some(as_int(w)?),
            _ => bail!("unexpected AttributeProto field {field}"),
        }
    }
    let name = name.context("attribute without name")?;
    let type_code = type_code.context("attribute without type")?;
    let value = match type_code {
        1 => AttrVal::Float(f.context("FLOAT attribute without f")?),
        2 => AttrVal::Int(i.context("INT attribute without i")?),
        3 => AttrVal::Str(s.context("STRING attribute without s")?),
        4 => AttrVal::Tensor(t.context("TENSOR attribute without t")?),
        6 => AttrVal::Floats(floats),
        7 => AttrVal::Ints(ints),
        other => bail!("unsupported attribute type {other}"),
    };
    Ok(Attr {
        name,
        type_code,
        value,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<Attr>,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&AttrVal> {
        self.attrs.iter().find(|a| a.name == name).map(|a| &a.value)
    }
}

fn node(buf: &[u8]) -> Result<Node> {
    let mut n = Node {
        name: String::new(),
        op_type: String::new(),
        inputs: vec![],
        outputs: vec![],
        attrs: vec![],
    };
    for (f, w) in fields(buf)? {
        match f {
            1 => n.inputs.push(as_str(w)?),
            2 => n.outputs.push(as_str(w)?),
            3 => n.name = as_str(w)?,
            4 => n.op_type = as_str(w)?,
            5 => n.attrs.push(attribute(as_bytes(w)?)?),
            _ => bail!("unexpected NodeProto field {f}"),
        }
    }
    ensure!(!n.op_type.is_empty(), "node without op_type");
    Ok(n)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Value(i64),
    Param(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: i64,
    pub dims: Option<Vec<Dim>>,
}

fn value_info(buf: &[u8]) -> Result<ValueInfo> {
    let mut v = ValueInfo {
        name: String::new(),
        elem_type: 0,
        dims: None,
    };
    for (f, w) in fields(buf)? {
        match f {
            1 => v.name = as_str(w)?,
            2 => {
                for (tf, tw) in fields(as_bytes(w)?)? {
                    ensure!(
                        tf == 1,
                        "only tensor types expected, got TypeProto field {tf}"
                    );
                    for (ef, ew) in fields(as_bytes(tw)?)? {
                        match ef {
                            1 => v.elem_type = as_int(ew)?,
                            2 => {
                                let mut dims = Vec::new();
                                for (sf, sw) in fields(as_bytes(ew)?)? {
                                    ensure!(sf == 1, "unexpected TensorShapeProto field {sf}");
                                    let d = fields(as_bytes(sw)?)?;
                                    ensure!(d.len() == 1, "dimension must hold exactly one value");
                                    dims.push(match d[0] {
                                        (1, w) => Dim::Value(as_int(w)?),
                                        (2, w) => Dim::Param(as_str(w)?),
                                        (f, _) => bail!("unexpected Dimension field {f}"),
                                    });
                                }
                                v.dims = Some(dims);
                            }
                            _ => bail!("unexpected TypeProto.Tensor field {ef}"),
                        }
                    }
                }
            }
            3 => {}
            _ => bail!("unexpected ValueInfoProto field {f}"),
        }
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Graph {
    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.iter().find(|t| t.name == name)
    }

    pub fn ops(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.op_type.as_str()).collect()
    }
}

fn graph(buf: &[u8]) -> Result<Graph> {
    let mut g = Graph::default();
    for (f, w) in fields(buf)? {
        match f {
            1 => g.nodes.push(node(as_bytes(w)?)?),
            2 => g.name = as_str(w)?,
            5 => g.initializers.push(tensor(as_bytes(w)?)?),
            10 => {}
            11 => g.inputs.push(value_info(as_bytes(w)?)?),
            12 => g.outputs.push(value_info(as_bytes(w)?)?),
            13 => {}
            _ => bail!("unexpected GraphProto field {f}"),
        }
    }
    Ok(g)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub ir_version: i64,
    pub producer_name: String,
    pub opsets: Vec<(String, i64)>,
    pub metadata: Vec<(String, String)>,
    pub graph: Graph,
}

pub fn model(buf: &[u8]) -> Result<Model> {
    let mut m = Model {
        ir_version: 0,
        producer_name: String::new(),
        opsets: vec![],
        metadata: vec![],
        graph: Graph::default(),
    };
    let mut has_graph = false;
    for (f, w) in fields(buf)? {
        match f {
            1 => m.ir_version = as_int(w)?,
            2 => m.producer_name = as_str(w)?,
            3..=6 => {}
            7 => {
                m.graph = graph(as_bytes(w)?)?;
                has_graph = true;
            }
            8 => {
                let (mut domain, mut version) = (String::new(), None);
                for (of, ow) in fields(as_bytes(w)?)? {
                    match of {
                        1 => domain = as_str(ow)?,
                        2 => version = Some(as_int(ow)?),
                        _ => bail!("unexpected OperatorSetIdProto field {of}"),
                    }
                }
                m.opsets
                    .push((domain, version.context("opset without version")?));
            }
            14 => {
                let mut kv = (String::new(), String::new());
                for (sf, sw) in fields(as_bytes(w)?)? {
                    match sf {
                        1 => kv.0 = as_str(sw)?,
                        2 => kv.1 = as_str(sw)?,
                        _ => bail!("unexpected StringStringEntryProto field {sf}"),
                    }
                }
                m.metadata.push(kv);
            }
            _ => bail!("unexpected ModelProto field {f}"),
        }
    }
    ensure!(has_graph, "model without graph");
    Ok(m)
}
