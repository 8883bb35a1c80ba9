//! `merge --gguf` (the merge streamed straight into a GGUF file) against merging to a directory
//! and then exporting it: the two must give the same bytes.

mod common;

use std::path::{Path, PathBuf};

use common::{chatvec, fixture, root};
use sha2::{Digest, Sha256};

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

fn run(args: &[&str]) {
    let out = chatvec(args);
    assert!(out.status.success(), "chatvec {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn export(model: &Path, out: &Path, t: &str) {
    run(&["export", "gguf", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--type", t]);
}

fn merge_gguf(base: &Path, chat: &Path, target: &Path, out: &Path, t: &str) {
    let (b, c, g) = (base.to_str().unwrap(), chat.to_str().unwrap(), target.to_str().unwrap());
    run(&["merge", "--base", b, "--chat", c, "--target", g, "--gguf", t, "-o", out.to_str().unwrap()]);
}

#[test]
fn merge_to_gguf_equals_merging_then_exporting() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, chat, target) = (fixture("base"), fixture("chat"), fixture("target"));
    let merged = tmp.path().join("merged");
    let (b, c, g) = (base.to_str().unwrap(), chat.to_str().unwrap(), target.to_str().unwrap());
    run(&["merge", "--base", b, "--chat", c, "--target", g, "-o", merged.to_str().unwrap()]);
    for t in ["f16", "q8_0", "q4_k_m"] {
        let direct = tmp.path().join(format!("direct-{t}/merged.gguf"));
        std::fs::create_dir_all(direct.parent().unwrap()).unwrap();
        merge_gguf(&base, &chat, &target, &direct, t);
        let two_step = tmp.path().join(format!("two-step-{t}/merged.gguf"));
        std::fs::create_dir_all(two_step.parent().unwrap()).unwrap();
        export(&merged, &two_step, t);
        assert_eq!(sha256(&direct), sha256(&two_step), "{t}");
    }
}

#[test]
fn merge_to_gguf_writes_every_architecture_and_type() {
    // base = chat: the vector is zero, so the merge is the target exactly and its GGUF must be the
    // target's export, byte for byte (the name comes from the file stem, as from the directory).
    let data = root().join("fixtures/arch");
    let models: [(&str, PathBuf); 3] =
        [("mistral", data.join("mistral")), ("qwen2", data.join("qwen2")), ("gemma", data.join("gemma"))];
    let tmp = tempfile::tempdir().unwrap();
    for (name, dir) in models {
        for t in ["f16", "bf16", "q8_0", "q4_k_m"] {
            let sub = tmp.path().join(format!("{name}-{t}"));
            std::fs::create_dir_all(sub.join("merged")).unwrap();
            let merged = sub.join(format!("merged/{name}.gguf"));
            merge_gguf(&dir, &dir, &dir, &merged, t);
            let exported = sub.join(format!("{name}.gguf"));
            export(&dir, &exported, t);
            assert_eq!(sha256(&merged), sha256(&exported), "{name} {t}");
        }
    }
}
