//! The GGUF container: metadata values, tensor infos and the header, encoded as llama.cpp's gguf-py
//! writes them (version 3, little-endian, tensor data aligned to `general.alignment`, default 32).
//!
//! Hand-written because candle's `gguf_file::write` takes every tensor as an in-memory `QTensor`:
//! a whole model in RAM. Here the header is computed from shapes alone, so the data can follow
//! one tensor at a time.

/// Default data alignment of GGUF files.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (token texts may be arbitrary bytes, so kept as bytes).
    Str(Vec<u8>),
    /// An array of strings.
    StrArray(Vec<Vec<u8>>),
    /// An array of `f32`.
    F32Array(Vec<f32>),
    /// An array of `i32`.
    I32Array(Vec<i32>),
}

impl Value {
    /// A string value.
    pub fn str(s: &str) -> Self {
        Value::Str(s.as_bytes().to_vec())
    }
}

// gguf value type ids (ggml/include/gguf.h).
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    let array = |out: &mut Vec<u8>, t: u32, n: usize| {
        out.extend(T_ARRAY.to_le_bytes());
        out.extend(t.to_le_bytes());
        out.extend((n as u64).to_le_bytes());
    };
    match v {
        Value::U32(x) => out.extend(T_U32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Value::I32(x) => out.extend(T_I32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Value::F32(x) => out.extend(T_F32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Value::Bool(x) => out.extend(T_BOOL.to_le_bytes().into_iter().chain([*x as u8])),
        Value::Str(s) => {
            out.extend(T_STRING.to_le_bytes());
            put_str(out, s);
        }
        Value::StrArray(a) => {
            array(out, T_STRING, a.len());
            a.iter().for_each(|s| put_str(out, s));
        }
        Value::F32Array(a) => {
            array(out, T_F32, a.len());
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
        Value::I32Array(a) => {
            array(out, T_I32, a.len());
            a.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
    }
}

/// Ordered metadata: a key set twice keeps its first position and its last value, as gguf-py's
/// dict does (the key order is part of the bytes).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
}

impl Metadata {
    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| k != key);
    }
    /// Every entry in file order.
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }
    /// The data alignment these metadata ask for.
    pub fn alignment(&self) -> u64 {
        match self.get("general.alignment") {
            Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        }
    }
}

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Shape in PyTorch order (outermost first); written reversed, as ggml's `ne`.
    pub shape: Vec<usize>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Bytes of data.
    pub bytes: u64,
}

/// `x` rounded up to a multiple of `align`.
pub fn pad(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// The whole header (magic, counts, metadata, tensor infos, padding to the data section) and each
/// tensor's offset from the start of the data section.
pub fn header(meta: &Metadata, tensors: &[TensorInfo]) -> (Vec<u8>, Vec<u64>) {
    let align = meta.alignment();
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.entries.len() as u64).to_le_bytes());
    for (k, v) in &meta.entries {
        put_str(&mut out, k.as_bytes());
        put_value(&mut out, v);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, t.name.as_bytes());
        out.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(t.ggml_type.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset += pad(t.bytes, align);
    }
    out.resize(pad(out.len() as u64, align) as usize, 0);
    (out, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_twice_keeps_its_place_and_takes_the_new_value() {
        let mut m = Metadata::default();
        m.set("a", Value::U32(1));
        m.set("b", Value::U32(2));
        m.set("a", Value::U32(3));
        assert_eq!(m.entries()[0], ("a".to_string(), Value::U32(3)));
        assert_eq!(m.entries().len(), 2);
    }

    #[test]
    fn header_pads_to_the_alignment_and_offsets_are_padded_sizes() {
        let mut m = Metadata::default();
        m.set("general.architecture", Value::str("llama"));
        let t = |n: &str, b| TensorInfo { name: n.into(), shape: vec![b as usize], ggml_type: 0, bytes: b };
        let (h, off) = header(&m, &[t("a", 12), t("b", 40), t("c", 4)]);
        assert_eq!(h.len() % 32, 0);
        assert_eq!(off, vec![0, 32, 96]);
        assert_eq!(&h[..4], b"GGUF");
    }
}
