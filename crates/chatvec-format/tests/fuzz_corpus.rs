//! The fuzz corpus of the core's untrusted-bytes parser (`fuzz/corpus/`: seeds plus what
//! `cargo fuzz` found), replayed through the same harness as the fuzz target, so every
//! `cargo test` re-checks it: none may panic. (The pickle corpus: chatvec-pickle's tests.)

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
        chatvec_format::fuzzing::checkpoint_dir(&data);
    }
}
