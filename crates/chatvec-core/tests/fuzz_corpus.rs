//! The fuzz corpora of the core's untrusted-bytes parsers (`fuzz/corpus/`: seeds plus what
//! `cargo fuzz` found), replayed through the same harnesses as the fuzz targets, so every
//! `cargo test` re-checks them: none may panic.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus")).join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "{}: corpus missing", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn safetensors_and_index_corpus_never_panics() {
    for (path, data) in corpus("safetensors_header") {
        eprintln!("{}", path.display());
        chatvec_core::fuzzing::checkpoint_dir(&data);
    }
}

#[test]
fn pickle_corpus_never_panics() {
    for (path, data) in corpus("pickle") {
        eprintln!("{}", path.display());
        chatvec_core::fuzzing::torch_zip(&data);
    }
}
