//! Harnesses for the parsers of untrusted bytes, shared by the `cargo fuzz` targets (`fuzz/`)
//! and the corpus replay test, so both exercise the same code. Not part of the API.

use std::path::Path;

use crate::Checkpoint;

const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 8}"#;

/// Opens a model directory built from `data`: byte 0 even, the rest is `model.safetensors`;
/// odd, the rest up to the first NUL is `model.safetensors.index.json` and what follows is the
/// shard `a.safetensors`. Every tensor it lists is then read in full (a listed range outside
/// its file would panic here).
pub fn checkpoint_dir(data: &[u8]) {
    let Ok(dir) = tempfile_dir() else { return };
    let d = dir.path();
    let (Some(&mode), rest) = (data.first(), data.get(1..).unwrap_or_default()) else { return };
    let written = std::fs::write(d.join("config.json"), CONFIG).and_then(|_| {
        if mode % 2 == 0 {
            std::fs::write(d.join("model.safetensors"), rest)
        } else {
            let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            std::fs::write(d.join("model.safetensors.index.json"), &rest[..cut])?;
            std::fs::write(d.join("a.safetensors"), rest.get(cut + 1..).unwrap_or_default())
        }
    });
    if written.is_err() {
        return;
    }
    if let Ok(ckpt) = Checkpoint::open(d) {
        for t in ckpt.tensors() {
            assert!(ckpt.file_of(t).starts_with(d), "{} read outside the model", t.name);
            let _ = ckpt.bytes(t, 0..t.byte_len());
        }
    }
}

/// A private temporary directory (std only: the core has no tempfile dependency outside tests).
fn tempfile_dir() -> std::io::Result<TempDir> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("chatvec-fuzz-{}-{n}", std::process::id()));
    std::fs::create_dir(&path)?;
    Ok(TempDir(path))
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
