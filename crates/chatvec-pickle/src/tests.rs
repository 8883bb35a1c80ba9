//! The reader against torch-written fixtures (`scripts/make_torch_fixtures.py`) and hostile bytes.

use super::*;
use crate::unpickle::long_value;
use std::path::PathBuf;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn fixture(name: &str) -> (PathBuf, Vec<u8>) {
    let path = Path::new(DIR).join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, bytes)
}

fn read(name: &str) -> Result<Vec<TorchTensor>> {
    let (path, bytes) = fixture(name);
    read_torch_zip(&path, &bytes)
}

fn err(name: &str) -> String {
    match read(name) {
        Ok(t) => panic!("{name}: expected an error, got {} tensors", t.len()),
        Err(e) => e.to_string(),
    }
}

/// Checks that the tensors listed for `bin` are exactly those of the safetensors `twin`:
/// same names, dtypes, shapes, and bytes read through the reported offsets.
fn assert_matches_twin(file: &[u8], listed: &[TorchTensor], twin: &Path) {
    let twin_bytes = std::fs::read(twin).unwrap();
    let st = safetensors::SafeTensors::deserialize(&twin_bytes).unwrap();
    assert_eq!(listed.len(), st.len(), "tensor count vs {}", twin.display());
    for t in listed {
        let want = st.tensor(&t.name).unwrap_or_else(|_| panic!("{} not in {}", t.name, twin.display()));
        assert_eq!(t.dtype, format!("{:?}", want.dtype()), "{}", t.name);
        assert_eq!(t.shape, want.shape(), "{}", t.name);
        assert_eq!(t.data_len, want.data().len(), "{}", t.name);
        assert_eq!(&file[t.data_start..t.data_start + t.data_len], want.data(), "{}", t.name);
    }
}

fn by_name<'t>(ts: &'t [TorchTensor], name: &str) -> &'t TorchTensor {
    ts.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
}

#[test]
fn pickle_mixed_matches_safetensors_twin() {
    let (path, file) = fixture("mixed.bin");
    let ts = read_torch_zip(&path, &file).unwrap();
    assert_matches_twin(&file, &ts, &Path::new(DIR).join("mixed.safetensors"));
    // State-dict order is kept.
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "w_bf16",
            "w_f16",
            "w_f32",
            "w_f64",
            "tail",
            "head",
            "row3",
            "embed.weight",
            "lm_head.weight",
            "position_ids",
            "i32",
            "i16",
            "i8",
            "u8",
            "mask",
            "scalar",
            "empty",
            "col"
        ]
    );
    let dtypes: Vec<&str> = ts.iter().map(|t| t.dtype.as_str()).collect();
    for d in ["BF16", "F16", "F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"] {
        assert!(dtypes.contains(&d), "{d} missing");
    }
}

#[test]
fn pickle_shared_storage_and_offsets() {
    let ts = read("mixed.bin").unwrap();
    // Tied weights: both names, same bytes.
    let (e, l) = (by_name(&ts, "embed.weight"), by_name(&ts, "lm_head.weight"));
    assert_eq!((e.data_start, e.data_len), (l.data_start, l.data_len));
    // Three views of one 6x4 f32 storage at element offsets 0, 8 and 12.
    let (head, tail, row3) = (by_name(&ts, "head"), by_name(&ts, "tail"), by_name(&ts, "row3"));
    assert_eq!(tail.data_start, head.data_start + 8 * 4);
    assert_eq!(row3.data_start, head.data_start + 12 * 4);
    assert_eq!((tail.shape.as_slice(), tail.data_len), (&[4, 4][..], 64));
    assert_eq!((row3.shape.as_slice(), row3.data_len), (&[4][..], 16));
    // 0-dim and empty tensors.
    let s = by_name(&ts, "scalar");
    assert_eq!((s.shape.as_slice(), s.data_len, s.dtype.as_str()), (&[][..], 4, "F32"));
    let z = by_name(&ts, "empty");
    assert_eq!((z.shape.as_slice(), z.data_len), (&[0, 3][..], 0));
    assert_eq!(by_name(&ts, "position_ids").shape, [1, 7]);
}

#[test]
fn pickle_module_parameters_match_twin() {
    let (path, file) = fixture("params.bin");
    let ts = read_torch_zip(&path, &file).unwrap();
    assert_matches_twin(&file, &ts, &Path::new(DIR).join("params.safetensors"));
    assert!(ts.iter().all(|t| t.dtype == "BF16"));
    assert_eq!(by_name(&ts, "0.weight").shape, [3, 4]);
}

#[test]
fn pickle_untyped_storage_v3_matches_twin() {
    let (path, file) = fixture("untyped_v3.bin");
    let ts = read_torch_zip(&path, &file).unwrap();
    assert_matches_twin(&file, &ts, &Path::new(DIR).join("untyped_v3.safetensors"));
    assert_eq!(by_name(&ts, "a").dtype, "BF16");
    assert_eq!(by_name(&ts, "b_tail").dtype, "F32");
}

#[test]
fn pickle_llama_shards_equal_safetensors() {
    let dir = Path::new(DIR).join("llama-sharded");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("pytorch_model.bin.index.json")).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let st_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny/target/model.safetensors");
    let st_bytes = std::fs::read(&st_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    assert_eq!(map.len(), st.len());
    let mut shards: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    shards.sort();
    shards.dedup();
    assert_eq!(shards.len(), 2);
    let mut seen = 0;
    let mut total = 0;
    for shard in shards {
        let path = dir.join(shard);
        let file = std::fs::read(&path).unwrap();
        for t in read_torch_zip(&path, &file).unwrap() {
            assert_eq!(map[&t.name].as_str(), Some(shard), "{}", t.name);
            let want = st.tensor(&t.name).unwrap();
            assert_eq!(t.dtype, "BF16");
            assert_eq!(t.shape, want.shape(), "{}", t.name);
            assert_eq!(&file[t.data_start..t.data_start + t.data_len], want.data());
            seen += 1;
            total += t.data_len;
        }
    }
    assert_eq!(seen, st.len());
    assert_eq!(Some(total as u64), index["metadata"]["total_size"].as_u64());
}

#[test]
fn pickle_non_contiguous_is_an_error_naming_the_tensor() {
    let e = err("noncontig.bin");
    assert!(e.contains("transposed") && e.contains("non-contiguous"), "{e}");
    assert!(e.contains("noncontig.bin"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn pickle_legacy_format_is_refused() {
    let e = err("legacy.bin");
    assert!(e.contains(&FileError::Legacy.to_string()) && e.contains("legacy.bin"), "{e}");
    // The older tar format too.
    let mut tar = vec![0u8; 1024];
    tar[257..262].copy_from_slice(b"ustar");
    let e = read_torch_zip(Path::new("old.bin"), &tar).unwrap_err().to_string();
    assert!(e.contains(&FileError::Legacy.to_string()), "{e}");
}

#[test]
fn pickle_unsupported_contents_are_clear_errors() {
    let e = err("nested.bin");
    assert!(e.contains("nested dict") && e.contains("\"model\"") && e.contains("nested.bin"), "{e}");
    let e = err("uint16.bin");
    assert!(e.contains("u16") && e.contains("unsupported dtype torch.uint16"), "{e}");
    assert!(e.contains("uint16.bin"), "{e}");
    let e = err("sparse.bin");
    assert!(
        e.contains("sparse")
            && e.contains("unsupported pickle global torch._utils._rebuild_sparse_tensor")
            && e.contains("sparse.bin"),
        "{e}"
    );
    let e = err("deflated.bin");
    assert!(e.contains("compressed") && e.contains("deflated.bin"), "{e}");
}

#[test]
fn pickle_not_a_checkpoint() {
    let p = Path::new("x.bin");
    for bytes in [&b""[..], b"hello world", b"PK\x03\x04garbage"] {
        let e = read_torch_zip(p, bytes).unwrap_err().to_string();
        assert!(e.starts_with("x.bin: "), "{e}");
    }
    let (_, st) = fixture("mixed.safetensors");
    assert!(read_torch_zip(p, &st).unwrap_err().to_string().contains("no zip signature"));
}

/// A tiny deterministic generator for the fuzz loops.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn check_in_bounds(file: &[u8], r: Result<Vec<TorchTensor>>) {
    if let Ok(ts) = r {
        for t in ts {
            assert!(t.data_start + t.data_len <= file.len(), "{t:?}");
        }
    }
}

#[test]
fn pickle_truncated_files_are_errors() {
    for name in ["mixed.bin", "untyped_v3.bin"] {
        let (_, file) = fixture(name);
        for len in 0..file.len() {
            let r = read_torch_zip(Path::new(name), &file[..len]);
            let e = r.expect_err(&format!("{name} truncated to {len} bytes was accepted"));
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}

#[test]
fn pickle_corrupted_files_never_panic() {
    let (_, file) = fixture("mixed.bin");
    let p = Path::new("mixed.bin");
    let mut buf = file.clone();
    for i in 0..buf.len() {
        buf[i] ^= 0xff;
        check_in_bounds(&buf, read_torch_zip(p, &buf));
        buf[i] = file[i];
    }
    let mut rng = Lcg(7);
    for _ in 0..3000 {
        let mut buf = file.clone();
        for _ in 0..1 + rng.next() % 4 {
            let i = (rng.next() as usize) % buf.len();
            buf[i] = rng.next() as u8;
        }
        check_in_bounds(&buf, read_torch_zip(p, &buf));
    }
}

/// The data.pkl of a fixture, read with the python-free zip path.
fn data_pkl(name: &str) -> Vec<u8> {
    let (_, file) = fixture(name);
    let mut zip = Zip::open(&file).unwrap();
    let prefix = zip.archive_prefix().unwrap();
    let r = zip.entry(&format!("{prefix}data.pkl")).unwrap();
    file[r].to_vec()
}

#[test]
fn pickle_interpreter_survives_garbage() {
    let pkl = data_pkl("params.bin");
    for len in 0..pkl.len() {
        assert!(Unpickler::new(&pkl[..len]).load().is_err(), "accepted {len} bytes");
    }
    let mut buf = pkl.clone();
    for i in 0..buf.len() {
        for x in [0xff, 0x01, 0x80] {
            buf[i] ^= x;
            let _ = Unpickler::new(&buf).load();
            buf[i] = pkl[i];
        }
    }
    // Opcode soup.
    let mut rng = Lcg(11);
    let ops = b"\x80\x95.(012N\x88\x89JKM\x8a\x8bGX\x8c\x8dUTCB\x8e\x96}]\x8f)t\x85\x86\x87l\x91dae\x90suc\x93qr\x94hjQR\x81\x92b";
    for _ in 0..20000 {
        let n = 1 + rng.next() % 64;
        let soup: Vec<u8> = (0..n)
            .map(|_| if rng.next() % 3 == 2 { rng.next() as u8 } else { ops[rng.next() as usize % ops.len()] })
            .collect();
        let _ = Unpickler::new(&soup).load();
    }
}

#[test]
fn pickle_globals_are_never_called() {
    // {'x': os.system('ls'), 'y': 1}: the call is only recorded.
    let pkl = b"\x80\x02}q\x00(X\x01\x00\x00\x00xcos\nsystem\nX\x02\x00\x00\x00ls\x85RX\x01\x00\x00\x00yK\x01u.";
    let mut u = Unpickler::new(pkl);
    let Value::Obj(id) = u.load().unwrap() else { panic!("not a dict") };
    let Obj::Dict(d) = &u.arena[id] else { panic!("not a dict") };
    assert!(matches!(&d.items[0].1, Value::Opaque(g) if &**g == "os.system"));
    assert!(matches!(d.items[1].1, Value::Int(1)));
}

#[test]
fn pickle_memo_shares_mutations_and_deep_nesting_is_flat() {
    // d = {}; memo it; fill it; the memo copy sees the items: [d, d] with d = {'k': 5}.
    let pkl = b"\x80\x02](}q\x00X\x01\x00\x00\x00kK\x05sh\x00e.";
    let mut u = Unpickler::new(pkl);
    let Value::Obj(list) = u.load().unwrap() else { panic!() };
    let Obj::List(items) = &u.arena[list] else { panic!() };
    assert_eq!(items.len(), 2);
    for v in items {
        let Value::Obj(d) = v else { panic!() };
        let Obj::Dict(d) = &u.arena[*d] else { panic!() };
        assert!(matches!(d.items.as_slice(), [(Value::Str(k), Value::Int(5))] if &**k == "k"));
    }
    // A million nested tuples and a memo "billion laughs" cost linear memory, no recursion.
    let mut deep = vec![b']'];
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    assert!(Unpickler::new(&deep).load().is_ok());
    let mut laughs = b"]q\x00".to_vec();
    for _ in 0..10_000 {
        laughs.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    laughs.push(b'.');
    assert!(Unpickler::new(&laughs).load().is_ok());
}

#[test]
fn pickle_reusing_a_big_object_hits_the_work_budget() {
    // l = [('k', 1)] * 20_000, then OrderedDict(l) 20_000 times: 4e8 steps without a budget.
    let mut pkl = b"\x80\x02]q\x00X\x01\x00\x00\x00kK\x01\x86q\x010(".to_vec();
    for _ in 0..20_000 {
        pkl.extend_from_slice(b"h\x01");
    }
    pkl.extend_from_slice(b"eccollections\nOrderedDict\nq\x02");
    for _ in 0..20_000 {
        pkl.extend_from_slice(b"h\x02h\x00\x85R0");
    }
    pkl.push(b'.');
    let t0 = std::time::Instant::now();
    let e = Unpickler::new(&pkl).load().unwrap_err();
    assert!(matches!(e, PickleError::TooMuchWork(_)), "{e}");
    assert!(t0.elapsed().as_secs() < 10);
}

#[test]
fn pickle_long_values() {
    assert!(matches!(long_value(&[]), Value::Int(0)));
    assert!(matches!(long_value(&[0xff]), Value::Int(-1)));
    assert!(matches!(long_value(&[0x00, 0x80]), Value::Int(-32768)));
    assert!(matches!(long_value(&[0x34, 0x12]), Value::Int(0x1234)));
    assert!(matches!(long_value(&[1; 9]), Value::BigInt));
}

#[test]
fn pickle_contiguity_rule() {
    assert!(is_contiguous(&[2, 3], &[3, 1]));
    assert!(!is_contiguous(&[2, 3], &[1, 2]));
    assert!(is_contiguous(&[4, 1], &[1, 1]));
    assert!(is_contiguous(&[1, 4], &[99, 1]));
    assert!(is_contiguous(&[], &[]));
}
