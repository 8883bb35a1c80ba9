//! Hostile and broken inputs (issue 12): shard paths that leave the model directory, outputs
//! inside inputs, degenerate merges, signals and stale temporary directories, messages.

mod common;

use std::path::{Path, PathBuf};

use chatvec_format::{resolve_shard, Checkpoint, Error};
use common::*;

/// A copy of the sharded base fixture whose index maps one tensor to `shard` instead.
fn base_with_shard_name(dir: &Path, shard: &str) -> PathBuf {
    let m = dir.join("m");
    copy_dir(&fixture("base"), &m);
    let index = m.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["weight_map"]["model.norm.weight"] = serde_json::json!(shard);
    std::fs::write(&index, v.to_string()).unwrap();
    m
}

#[test]
fn index_naming_a_file_outside_the_model_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("x");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(fixture("base/model-00001-of-00004.safetensors"), outside.join("shard.safetensors")).unwrap();
    for (name, why) in [
        ("../x/shard.safetensors", "not a plain relative path"),
        ("/etc/passwd", "not a plain relative path"),
        ("nope.safetensors", "which is missing"),
    ] {
        let m = base_with_shard_name(dir.path(), name);
        let err = Checkpoint::open(&m).err().unwrap();
        let Error::BadShardName { named_in, name: named, why: reason } = &err else { panic!("{err}") };
        assert_eq!((named_in.as_path(), named.as_str()), (m.join("model.safetensors.index.json").as_path(), name));
        assert!(reason.contains(why), "{err}");
        std::fs::remove_dir_all(&m).unwrap();
    }
    // A relative name that is a symlink to a file outside the directory.
    let m = base_with_shard_name(dir.path(), "link.safetensors");
    std::os::unix::fs::symlink(outside.join("shard.safetensors"), m.join("link.safetensors")).unwrap();
    let err = Checkpoint::open(&m).err().unwrap().to_string();
    assert!(err.contains("link.safetensors, which lies outside the model directory"), "{err}");
}

#[test]
fn a_single_weight_file_linked_outside_the_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(fixture("base/config.json"), m.join("config.json")).unwrap();
    std::fs::copy(fixture("base/model-00001-of-00004.safetensors"), dir.path().join("secret")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), m.join("model.safetensors")).unwrap();
    let err = Checkpoint::open(&m).err().unwrap().to_string();
    assert!(err.contains("outside the model directory"), "{err}");
}

#[test]
fn hub_snapshot_links_into_its_own_blobs_are_allowed_and_others_not() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--org--m");
    let snap = repo.join("snapshots/abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("blobs/1234"), b"x").unwrap();
    std::os::unix::fs::symlink("../../blobs/1234", snap.join("model.safetensors")).unwrap();
    let named_in = snap.join("model.safetensors");
    assert_eq!(resolve_shard(&snap, &named_in, "model.safetensors").unwrap(), snap.join("model.safetensors"));
    // Another repository's blobs are outside.
    let other = cache.path().join("models--org--other/blobs");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("5678"), b"y").unwrap();
    std::os::unix::fs::symlink(other.join("5678"), snap.join("b.safetensors")).unwrap();
    let err = resolve_shard(&snap, &named_in, "b.safetensors").unwrap_err().to_string();
    assert!(err.contains("outside the model directory"), "{err}");
}

/// `mixed.bin` (a torch.save state dict) with one more entry, `x: os.system('ls')`, set on the
/// state dict just before the pickle's STOP.
fn torch_bin_with_a_system_call(dir: &Path) -> PathBuf {
    use std::io::{Read, Write};
    let src =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../chatvec-pickle/tests/data/mixed.bin")).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(src)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = vec![];
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            assert_eq!(bytes.pop(), Some(b'.'));
            bytes.extend_from_slice(b"X\x01\x00\x00\x00xcos\nsystem\nX\x02\x00\x00\x00ls\x85Rs.");
        }
        out.start_file(name, stored.with_alignment(64)).unwrap();
        out.write_all(&bytes).unwrap();
    }
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("pytorch_model.bin"), out.finish().unwrap().into_inner()).unwrap();
    std::fs::write(m.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    m
}

#[test]
fn state_dict_entries_that_are_not_tensors_are_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let m = torch_bin_with_a_system_call(dir.path());
    let ckpt = Checkpoint::open(&m).unwrap();
    assert!(!ckpt.tensors().is_empty());
    let warnings = ckpt.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(w.contains("pytorch_model.bin") && w.contains("not tensors") && w.ends_with(": x"), "{w}");
}
