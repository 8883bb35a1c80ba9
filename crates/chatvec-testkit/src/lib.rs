//! chatvec-testkit: the external tools chatvec's cross-checks compare with (Python with
//! transformers, gguf-py, huggingface_hub, openai or lm-eval; llama.cpp through node-llama-cpp;
//! Chromium), found in one place.
//!
//! Two halves, so a skipped check is never silent:
//! - [`probe`] runs in a crate's `build.rs` and sets a `have_*` cfg for each tool it finds. A
//!   cross-check carries `#[cfg_attr(not(have_py_transformers), ignore = "needs ...")]`, so
//!   `cargo test` lists it by name as ignored, with what it needs, and counts it in the summary.
//!   Under `CI` every cfg is set: the checks run, and a missing tool fails them.
//! - [`python`], [`node_llama_dir`], [`llama_cpp_bundle`] and [`chromium`] give the tests the tool
//!   the probe found, by the same rules.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python modules the cross-checks import; each present one sets `have_py_<module>`.
pub const PYTHON_MODULES: &[&str] =
    &["transformers", "torch", "gguf", "numpy", "sentencepiece", "huggingface_hub", "openai", "lm_eval"];

/// The Python the cross-checks run: `$CHATVEC_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("CHATVEC_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The folder holding `node_modules/node-llama-cpp`: `$CHATVEC_NODE_LLAMA_DIR`, else
/// `<repo>/.tools/node` (where `.ci/run` installs it).
pub fn node_llama_dir() -> PathBuf {
    std::env::var_os("CHATVEC_NODE_LLAMA_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".tools/node"))
}

/// llama.cpp's source (the converter and gguf-py) as node-llama-cpp ships it: a git bundle.
pub fn llama_cpp_bundle() -> PathBuf {
    node_llama_dir().join("node_modules/node-llama-cpp/llama/gitRelease.bundle")
}

/// The first Chromium on `PATH` (chromium, chromium-browser, google-chrome).
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| which(name))
}

/// The repository's root (this crate lives in `<root>/crates/chatvec-testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Which of [`PYTHON_MODULES`] `python` can import (found by `importlib.util.find_spec`, which
/// does not import them: fast).
fn python_modules(python: &str) -> Vec<String> {
    let script = "import importlib.util as u, sys\nprint(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))";
    match Command::new(python).arg("-c").arg(script).args(PYTHON_MODULES).output() {
        Ok(o) if o.status.success() => {
            String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect()
        }
        _ => vec![],
    }
}

fn node_llama_present() -> bool {
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    node_ok && node_llama_dir().join("node_modules/node-llama-cpp").is_dir()
}

/// For a crate's `build.rs`: sets `have_py_<module>`, `have_node_llama` and `have_chromium` for
/// each tool found (all of them under `CI`, so nothing is skipped there), declares them to
/// `check-cfg`, and reruns when the variables that choose the tools change.
pub fn probe() {
    let mut cfgs: Vec<String> = PYTHON_MODULES.iter().map(|m| format!("have_py_{m}")).collect();
    cfgs.extend(["have_node_llama".to_string(), "have_chromium".to_string()]);
    println!("cargo::rustc-check-cfg=cfg({})", cfgs.join(", "));
    for var in ["CI", "CHATVEC_PYTHON", "CHATVEC_NODE_LLAMA_DIR", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let found: Vec<String> = if std::env::var_os("CI").is_some() {
        cfgs
    } else {
        let mut found: Vec<String> = python_modules(&python()).iter().map(|m| format!("have_py_{m}")).collect();
        if node_llama_present() {
            found.push("have_node_llama".into());
        }
        if chromium().is_some() {
            found.push("have_chromium".into());
        }
        found
    };
    for cfg in found {
        println!("cargo::rustc-cfg={cfg}");
    }
}
