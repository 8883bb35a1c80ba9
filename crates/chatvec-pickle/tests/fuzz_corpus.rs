//! The fuzz corpus of the pickle reader (`fuzz/corpus/pickle/`: seeds plus what `cargo fuzz`
//! found), replayed through the same harness as the fuzz target, so every `cargo test`
//! re-checks it: no file may panic or yield a tensor outside the file.

use std::path::PathBuf;

#[test]
fn pickle_corpus_never_panics() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/pickle"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "{}: corpus missing", dir.display());
    for path in files {
        eprintln!("{}", path.display());
        chatvec_pickle::fuzzing::torch_zip(&std::fs::read(&path).unwrap());
    }
}
