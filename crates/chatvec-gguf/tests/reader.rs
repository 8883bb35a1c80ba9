//! The GGUF reader against hand-built hostile files: each layout or metadata fault llama.cpp's
//! `gguf_init_from_file` refuses is refused here too, naming the tensor or key; arrays chatvec does
//! not use cost neither memory nor time.

use std::path::Path;

use chatvec_gguf::format::{header, Metadata, TensorInfo, Value};
use chatvec_gguf::read::{GgufIndex, MetaValue, Problem};

/// A file of `tensors` (f32, 1-d, sizes in elements), written as the exporter writes files, then
/// `edit`ed in its tensor infos.
fn file(meta: &Metadata, tensors: &[(&str, usize)]) -> Vec<u8> {
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|(n, len)| TensorInfo { name: n.to_string(), shape: vec![*len], ggml_type: 0, bytes: *len as u64 * 4 })
        .collect();
    let (mut bytes, offsets) = header(meta, &infos);
    let data_start = bytes.len();
    for (t, off) in infos.iter().zip(offsets) {
        bytes.resize(data_start + off as usize, 0);
        bytes.extend((0..t.bytes / 4).flat_map(|i| (i as f32).to_le_bytes()));
    }
    bytes
}

fn meta() -> Metadata {
    let mut m = Metadata::default();
    m.set("general.architecture", Value::str("llama"));
    m
}

fn parse(bytes: &[u8]) -> Result<GgufIndex, Problem> {
    GgufIndex::from_bytes(bytes, Path::new("x.gguf")).map_err(|e| {
        assert!(e.to_string().starts_with("x.gguf: "), "{e}");
        e.problem
    })
}

/// Finds `name`'s tensor info (the name's bytes, then its fields) and returns the position after
/// the name.
fn info_at(bytes: &[u8], name: &str) -> usize {
    let needle: Vec<u8> = (name.len() as u64).to_le_bytes().into_iter().chain(name.bytes()).collect();
    bytes.windows(needle.len()).position(|w| w == needle).unwrap() + needle.len()
}

/// The offset field of 1-d tensor `name`.
fn offset_field(bytes: &[u8], name: &str) -> usize {
    info_at(bytes, name) + 4 + 8 + 4
}

#[test]
fn a_well_formed_file_reads_back_with_its_offsets_and_shapes() {
    let bytes = file(&meta(), &[("a", 3), ("b", 40), ("c", 8)]);
    let index = parse(&bytes).unwrap();
    assert_eq!(index.get("general.architecture"), Some(&MetaValue::Str("llama".into())));
    let b = index.tensor("b").unwrap();
    assert_eq!((b.shape.clone(), b.bytes, b.stored.name), (vec![40], 160, "F32"));
    let start = b.start as usize;
    assert_eq!(&bytes[start + 4..start + 8], &1f32.to_le_bytes());
    assert_eq!(index.tensors().len(), 3);
}

#[test]
fn alignment_zero_or_not_a_power_of_two_is_refused() {
    for a in [0u32, 3, 48] {
        let mut m = meta();
        m.set("general.alignment", Value::U32(a));
        // The writer pads with its default for bad alignments; the reader must refuse first.
        let err = parse(&file(&m, &[("a", 8)])).unwrap_err();
        assert!(matches!(err, Problem::Alignment(x) if x == a as u64), "{a}: {err}");
        assert!(err.to_string().contains("general.alignment"), "{err}");
    }
}

#[test]
fn an_unaligned_offset_is_refused_naming_the_tensor() {
    let mut bytes = file(&meta(), &[("a", 8), ("b", 8)]);
    let at = offset_field(&bytes, "b");
    bytes[at..at + 8].copy_from_slice(&36u64.to_le_bytes());
    let err = parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("\"b\"") && err.contains("not a multiple of the alignment 32"), "{err}");
}

#[test]
fn overlapping_tensors_are_refused_naming_both() {
    let mut bytes = file(&meta(), &[("a", 16), ("b", 8)]);
    let at = offset_field(&bytes, "b");
    bytes[at..at + 8].copy_from_slice(&32u64.to_le_bytes());
    let err = parse(&bytes).unwrap_err();
    assert!(matches!(&err, Problem::Overlap { first, second } if first == "a" && second == "b"), "{err}");
}

#[test]
fn a_type_that_does_not_match_the_bytes_is_refused_naming_the_tensor() {
    // 64 f32 elements (256 bytes) relabelled f16 (128 bytes): the next tensor starts too late.
    let mut bytes = file(&meta(), &[("a", 64), ("b", 8)]);
    let at = info_at(&bytes, "a") + 4 + 8;
    bytes[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    let err = parse(&bytes).unwrap_err();
    assert!(matches!(&err, Problem::SizeMismatch { tensor, bytes: 128, room: 256, .. } if tensor == "a"), "{err}");
    // Relabelled q8_0: 64 elements are 2 blocks of 34 bytes.
    bytes[at..at + 4].copy_from_slice(&8u32.to_le_bytes());
    let err = parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("\"a\"") && err.contains("Q8_0") && err.contains("68 bytes"), "{err}");
}

#[test]
fn a_tensor_past_the_end_of_the_file_is_refused() {
    let bytes = file(&meta(), &[("a", 8), ("b", 8)]);
    let err = parse(&bytes[..bytes.len() - 1]).unwrap_err().to_string();
    assert!(err.contains("\"b\"") && err.contains("past the end"), "{err}");
}

#[test]
fn a_tensor_name_given_twice_is_refused() {
    let err = parse(&file(&meta(), &[("a", 8), ("a", 8)])).unwrap_err().to_string();
    assert!(err.contains("\"a\"") && err.contains("twice"), "{err}");
}

#[test]
fn iq_and_tq_types_are_refused_naming_tensor_and_type() {
    for (id, name) in [(16u32, "IQ2_XXS"), (23, "IQ4_XS"), (34, "TQ1_0")] {
        let mut bytes = file(&meta(), &[("blk.0.ffn_up.weight", 256)]);
        let at = info_at(&bytes, "blk.0.ffn_up.weight") + 4 + 8;
        bytes[at..at + 4].copy_from_slice(&id.to_le_bytes());
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("blk.0.ffn_up.weight") && err.contains(name), "{err}");
    }
}

#[test]
fn nan_or_infinite_float_metadata_is_refused_naming_the_key() {
    for x in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut m = meta();
        m.set("llama.rope.freq_base", Value::F32(x));
        let err = parse(&file(&m, &[("a", 8)])).unwrap_err();
        assert!(matches!(&err, Problem::NonFinite(k) if k == "llama.rope.freq_base"), "{err}");
    }
}

#[test]
fn a_metadata_key_given_twice_is_refused() {
    // A second key, then its last letter changed to make it the first one's name.
    let mut m = meta();
    m.set("general.architecturf", Value::str("llama"));
    let mut bytes = file(&m, &[("a", 8)]);
    let at = info_at(&bytes, "general.architecturf") - 1;
    bytes[at] = b'e';
    let err = parse(&bytes).unwrap_err().to_string();
    assert!(err.contains("general.architecture") && err.contains("twice"), "{err}");
}

#[test]
fn an_unused_array_of_millions_of_strings_is_skipped_not_kept() {
    let mut m = meta();
    let n = 4_000_000;
    m.set("general.tags", Value::StrArray(vec![Vec::new(); n]));
    let bytes = file(&m, &[("a", 8)]);
    let started = std::time::Instant::now();
    let index = parse(&bytes).unwrap();
    assert_eq!(index.get("general.tags"), Some(&MetaValue::Skipped { element_type: 8, len: n as u64 }));
    // Skipping is a pass over 32 MB; keeping would allocate 4M strings.
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}

#[test]
fn a_tokenizer_array_beyond_the_cap_is_refused_naming_the_key() {
    let mut m = meta();
    m.set("tokenizer.ggml.token_type", Value::I32Array(vec![1; (1 << 21) + 1]));
    let err = parse(&file(&m, &[("a", 8)])).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.token_type") && err.contains("more than chatvec keeps"), "{err}");
    let mut m = meta();
    m.set("tokenizer.ggml.scores", Value::F32Array(vec![-1.5; 10]));
    let index = parse(&file(&m, &[("a", 8)])).unwrap();
    assert_eq!(index.get("tokenizer.ggml.scores"), Some(&MetaValue::Numbers(vec![-1.5; 10])));
}

#[test]
fn counts_beyond_the_file_are_refused_before_allocating() {
    let mut bytes = file(&meta(), &[("a", 8)]);
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse(&bytes).unwrap_err().to_string().contains("tensors announced"));
    let mut bytes = file(&meta(), &[("a", 8)]);
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(parse(&bytes).unwrap_err().to_string().contains("metadata entries announced"));
}
