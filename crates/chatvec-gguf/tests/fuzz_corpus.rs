//! The GGUF reader's fuzz corpus (`fuzz/corpus/gguf`: small files from gguf-py and chatvec's
//! exporter, the hostile files of issue 20 and what `cargo fuzz` found), replayed through the fuzz
//! target's harness on every `cargo test`: none may panic, hang or exhaust memory.

use std::path::PathBuf;

#[test]
fn gguf_corpus_never_panics() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/gguf"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "{}: corpus missing", dir.display());
    let mut parsed = 0;
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        chatvec_gguf::read::fuzz_index(&bytes);
        parsed += chatvec_gguf::read::GgufIndex::from_bytes(&bytes, &path).is_ok() as usize;
    }
    // The seeds include good files, so the harness reaches past the header checks.
    assert!(parsed >= 2, "only {parsed} corpus files parse");
}
