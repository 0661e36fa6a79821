//! Hand-written protobuf wire encoding for the subset of `onnx.proto` the exporter needs.
//!
//! Field numbers are those of `onnx/onnx.proto` (proto2). Repeated scalars that the schema does
//! not mark `packed` (`TensorProto.dims`, `AttributeProto.ints/floats`) are written unpacked, as
//! a proto2 encoder would. Every message writes itself once through a [`Sink`]: a byte counter
//! first (to get the length prefix of a nested message) and then the real buffer, so large
//! initializers are copied exactly once.

/// Where encoded bytes go: the output buffer, or a counter that only measures.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts bytes instead of storing them; used for length prefixes.
#[derive(Default)]
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Protobuf wire types.
const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

pub fn put_varint<S: Sink>(s: &mut S, mut v: u64) {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = low;
            n += 1;
            break;
        }
        buf[n] = low | 0x80;
        n += 1;
    }
    s.put(&buf[..n]);
}

fn put_key<S: Sink>(s: &mut S, field: u32, wire: u64) {
    put_varint(s, (u64::from(field) << 3) | wire);
}

/// `int64`/`int32`/enum field. Negative values take ten bytes (two's complement), as protobuf
/// specifies for non-zigzag integers.
pub fn put_int<S: Sink>(s: &mut S, field: u32, v: i64) {
    put_key(s, field, WIRE_VARINT);
    put_varint(s, v as u64);
}

pub fn put_float<S: Sink>(s: &mut S, field: u32, v: f32) {
    put_key(s, field, WIRE_FIXED32);
    s.put(&v.to_le_bytes());
}

pub fn put_bytes<S: Sink>(s: &mut S, field: u32, b: &[u8]) {
    put_key(s, field, WIRE_LEN);
    put_varint(s, b.len() as u64);
    s.put(b);
}

/// Optional string: proto2 presence, so an empty string is simply left out.
fn put_opt_str<S: Sink>(s: &mut S, field: u32, v: &str) {
    if !v.is_empty() {
        put_bytes(s, field, v.as_bytes());
    }
}

pub fn put_message<S: Sink, M: Message + ?Sized>(s: &mut S, field: u32, m: &M) {
    put_key(s, field, WIRE_LEN);
    put_varint(s, m.encoded_len() as u64);
    m.write(s);
}

/// A protobuf message that can encode itself.
pub trait Message {
    fn write<S: Sink>(&self, s: &mut S);

    fn encoded_len(&self) -> usize {
        let mut c = Counter::default();
        self.write(&mut c);
        c.0
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.write(&mut v);
        v
    }
}

/// `TensorProto.DataType`, only the element types the exporter emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Float,
    Int32,
    Int64,
    Bool,
    /// IEEE half precision: large initialisers stored at half the size (the graph casts them).
    Float16,
}

impl DataType {
    pub fn code(self) -> i64 {
        match self {
            DataType::Float => 1,
            DataType::Int32 => 6,
            DataType::Int64 => 7,
            DataType::Bool => 9,
            DataType::Float16 => 10,
        }
    }

    /// Bytes per element in `raw_data`.
    pub fn size(self) -> usize {
        match self {
            DataType::Float | DataType::Int32 => 4,
            DataType::Int64 => 8,
            DataType::Bool => 1,
            DataType::Float16 => 2,
        }
    }
}

/// `OperatorSetIdProto`.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorSetId {
    pub domain: String,
    pub version: i64,
}

impl Message for OperatorSetId {
    fn write<S: Sink>(&self, s: &mut S) {
        put_opt_str(s, 1, &self.domain);
        put_int(s, 2, self.version);
    }
}

/// `StringStringEntryProto`, used for `ModelProto.metadata_props`.
#[derive(Clone, Debug, PartialEq)]
pub struct StringEntry {
    pub key: String,
    pub value: String,
}

impl Message for StringEntry {
    fn write<S: Sink>(&self, s: &mut S) {
        put_bytes(s, 1, self.key.as_bytes());
        put_bytes(s, 2, self.value.as_bytes());
    }
}

/// `TensorProto`, always with its data in `raw_data` (little-endian, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorProto {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: DataType,
    pub raw_data: Vec<u8>,
}

impl Message for TensorProto {
    fn write<S: Sink>(&self, s: &mut S) {
        for &d in &self.dims {
            put_int(s, 1, d);
        }
        put_int(s, 2, self.data_type.code());
        put_opt_str(s, 8, &self.name);
        // Written even when empty: a zero-element tensor still needs its data field.
        put_bytes(s, 9, &self.raw_data);
    }
}

/// `AttributeProto` value, with the matching `AttributeType` discriminator.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(TensorProto),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
}

impl AttributeValue {
    /// `AttributeProto.AttributeType`.
    pub fn type_code(&self) -> i64 {
        match self {
            AttributeValue::Float(_) => 1,
            AttributeValue::Int(_) => 2,
            AttributeValue::String(_) => 3,
            AttributeValue::Tensor(_) => 4,
            AttributeValue::Floats(_) => 6,
            AttributeValue::Ints(_) => 7,
            AttributeValue::Strings(_) => 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttributeProto {
    pub name: String,
    pub value: AttributeValue,
}

impl Message for AttributeProto {
    fn write<S: Sink>(&self, s: &mut S) {
        put_bytes(s, 1, self.name.as_bytes());
        // Scalars are written even when zero: `axis = 0` must be present, not defaulted.
        match &self.value {
            AttributeValue::Float(f) => put_float(s, 2, *f),
            AttributeValue::Int(i) => put_int(s, 3, *i),
            AttributeValue::String(b) => put_bytes(s, 4, b),
            AttributeValue::Tensor(t) => put_message(s, 5, t),
            AttributeValue::Floats(fs) => fs.iter().for_each(|&f| put_float(s, 7, f)),
            AttributeValue::Ints(is) => is.iter().for_each(|&i| put_int(s, 8, i)),
            AttributeValue::Strings(ss) => ss.iter().for_each(|b| put_bytes(s, 9, b)),
        }
        put_int(s, 20, self.value.type_code());
    }
}

/// `NodeProto`. Empty strings in `input` are kept: they mark an omitted optional input.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeProto {
    pub input: Vec<String>,
    pub output: Vec<String>,
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub attribute: Vec<AttributeProto>,
}

impl Message for NodeProto {
    fn write<S: Sink>(&self, s: &mut S) {
        for i in &self.input {
            put_bytes(s, 1, i.as_bytes());
        }
        for o in &self.output {
            put_bytes(s, 2, o.as_bytes());
        }
        put_opt_str(s, 3, &self.name);
        put_bytes(s, 4, self.op_type.as_bytes());
        for a in &self.attribute {
            put_message(s, 5, a);
        }
        put_opt_str(s, 7, &self.domain);
    }
}

/// `TensorShapeProto.Dimension`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dimension {
    Value(i64),
    Param(String),
}

impl Message for Dimension {
    fn write<S: Sink>(&self, s: &mut S) {
        match self {
            Dimension::Value(v) => put_int(s, 1, *v),
            Dimension::Param(p) => put_bytes(s, 2, p.as_bytes()),
        }
    }
}

/// `TensorShapeProto`.
struct Shape<'a>(&'a [Dimension]);

impl Message for Shape<'_> {
    fn write<S: Sink>(&self, s: &mut S) {
        for d in self.0 {
            put_message(s, 1, d);
        }
    }
}

/// `TypeProto.Tensor`; `shape: None` means unknown rank, `Some(vec![])` a scalar.
struct TensorType<'a> {
    elem_type: DataType,
    shape: Option<&'a [Dimension]>,
}

impl Message for TensorType<'_> {
    fn write<S: Sink>(&self, s: &mut S) {
        put_int(s, 1, self.elem_type.code());
        if let Some(dims) = self.shape {
            put_message(s, 2, &Shape(dims));
        }
    }
}

/// `TypeProto` with its `tensor_type` arm.
struct TypeProto<'a>(TensorType<'a>);

impl Message for TypeProto<'_> {
    fn write<S: Sink>(&self, s: &mut S) {
        put_message(s, 1, &self.0);
    }
}

/// `ValueInfoProto` of a tensor value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfoProto {
    pub name: String,
    pub elem_type: DataType,
    pub shape: Option<Vec<Dimension>>,
    pub doc_string: String,
}

impl Message for ValueInfoProto {
    fn write<S: Sink>(&self, s: &mut S) {
        put_bytes(s, 1, self.name.as_bytes());
        let ty = TypeProto(TensorType {
            elem_type: self.elem_type,
            shape: self.shape.as_deref(),
        });
        put_message(s, 2, &ty);
        put_opt_str(s, 3, &self.doc_string);
    }
}

/// `GraphProto`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphProto {
    pub node: Vec<NodeProto>,
    pub name: String,
    pub initializer: Vec<TensorProto>,
    pub doc_string: String,
    pub input: Vec<ValueInfoProto>,
    pub output: Vec<ValueInfoProto>,
    pub value_info: Vec<ValueInfoProto>,
}

impl Message for GraphProto {
    fn write<S: Sink>(&self, s: &mut S) {
        for n in &self.node {
            put_message(s, 1, n);
        }
        put_opt_str(s, 2, &self.name);
        for t in &self.initializer {
            put_message(s, 5, t);
        }
        put_opt_str(s, 10, &self.doc_string);
        for v in &self.input {
            put_message(s, 11, v);
        }
        for v in &self.output {
            put_message(s, 12, v);
        }
        for v in &self.value_info {
            put_message(s, 13, v);
        }
    }
}

/// `ModelProto`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelProto {
    pub ir_version: i64,
    pub opset_import: Vec<OperatorSetId>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc_string: String,
    pub graph: GraphProto,
    pub metadata_props: Vec<StringEntry>,
}

impl Message for ModelProto {
    fn write<S: Sink>(&self, s: &mut S) {
        put_int(s, 1, self.ir_version);
        put_opt_str(s, 2, &self.producer_name);
        put_opt_str(s, 3, &self.producer_version);
        put_opt_str(s, 4, &self.domain);
        put_int(s, 5, self.model_version);
        put_opt_str(s, 6, &self.doc_string);
        put_message(s, 7, &self.graph);
        for o in &self.opset_import {
            put_message(s, 8, o);
        }
        for m in &self.metadata_props {
            put_message(s, 14, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_bytes(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        b
    }

    #[test]
    fn varints_match_the_protobuf_spec() {
        assert_eq!(varint_bytes(0), [0x00]);
        assert_eq!(varint_bytes(1), [0x01]);
        assert_eq!(varint_bytes(127), [0x7f]);
        assert_eq!(varint_bytes(150), [0x96, 0x01]);
        assert_eq!(varint_bytes(300), [0xac, 0x02]);
        assert_eq!(varint_bytes(u64::MAX).len(), 10);
        // int64 -1 is ten bytes of two's complement.
        let mut b = Vec::new();
        put_int(&mut b, 1, -1);
        assert_eq!(
            b,
            [
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]
        );
    }

    #[test]
    fn small_messages_have_known_bytes() {
        // OperatorSetIdProto { version: 17 }: field 2 varint.
        let op = OperatorSetId {
            domain: String::new(),
            version: 17,
        };
        assert_eq!(op.to_bytes(), [0x10, 0x11]);
        // AttributeProto { name: "axis", i: 0, type: INT }: the zero must be present.
        let a = AttributeProto {
            name: "axis".into(),
            value: AttributeValue::Int(0),
        };
        assert_eq!(
            a.to_bytes(),
            [
                0x0a, 4, b'a', b'x', b'i', b's', 0x18, 0x00, 0xa0, 0x01, 0x02
            ]
        );
        // A float attribute is fixed32 little-endian under field 2.
        let f = AttributeProto {
            name: "e".into(),
            value: AttributeValue::Float(1.0),
        };
        assert_eq!(
            f.to_bytes(),
            [
                0x0a, 1, b'e', 0x15, 0x00, 0x00, 0x80, 0x3f, 0xa0, 0x01, 0x01
            ]
        );
    }

    #[test]
    fn nested_length_prefix_matches_payload() {
        let t = TensorProto {
            name: "w".into(),
            dims: vec![2, 100],
            data_type: DataType::Float,
            raw_data: vec![7u8; 800],
        };
        let mut b = Vec::new();
        put_message(&mut b, 5, &t);
        assert_eq!(b[0], 0x2a); // field 5, wire type 2
        let body = t.to_bytes();
        assert_eq!(&b[1..3], varint_bytes(body.len() as u64).as_slice());
        assert_eq!(&b[3..], body.as_slice());
        assert_eq!(t.encoded_len(), body.len());
    }

    #[test]
    fn empty_node_inputs_are_kept() {
        let n = NodeProto {
            input: vec!["x".into(), String::new(), "b".into()],
            output: vec!["y".into()],
            name: String::new(),
            op_type: "Conv".into(),
            domain: String::new(),
            attribute: vec![],
        };
        let b = n.to_bytes();
        assert_eq!(&b[..7], &[0x0a, 1, b'x', 0x0a, 0, 0x0a, 1]);
    }
}
