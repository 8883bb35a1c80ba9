//! The chat-template fuzz corpus (`fuzz/corpus/chat_template`: real templates, hostile seeds and
//! what `cargo fuzz` found), replayed through the fuzz target's harness on every `cargo test`:
//! none may panic, hang or exhaust memory.

use std::path::PathBuf;

#[test]
fn chat_template_corpus_never_panics() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/chat_template"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "{}: corpus missing", dir.display());
    for path in files {
        eprintln!("{}", path.display());
        chatvec_gen::template::fuzz_render(&std::fs::read(&path).unwrap());
    }
}
