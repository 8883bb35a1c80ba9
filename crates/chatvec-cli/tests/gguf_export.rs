//! `chatvec export gguf` on models transformers loads that an earlier exporter refused (issue 24,
//! item 5): a config.json with `model_type` and no `architectures` exports to the same bytes as
//! the same model with `architectures`.

mod common;

use common::{chatvec, copy_dir_files, root, stderr};

#[test]
fn a_config_without_architectures_exports_by_its_model_type() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["qwen2", "mistral"] {
        // The same directory name for both: general.name comes from it.
        let fixture = root().join("crates/chatvec-gguf/tests/data").join(arch);
        let (named, unnamed) = (tmp.path().join("named").join(arch), tmp.path().join("unnamed").join(arch));
        copy_dir_files(&fixture, &named);
        copy_dir_files(&fixture, &unnamed);
        let cfg_path = unnamed.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        assert!(cfg.as_object_mut().unwrap().remove("architectures").is_some());
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut outputs = vec![];
        for (name, dir) in [("named", &named), ("unnamed", &unnamed)] {
            let out = tmp.path().join(format!("{arch}-{name}.gguf"));
            let o = chatvec(&["export", "gguf", "--model", dir.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"]);
            assert!(o.status.success(), "{arch} {name}: {}", stderr(&o));
            outputs.push(std::fs::read(&out).unwrap());
        }
        assert!(outputs[0] == outputs[1], "{arch}: the export without `architectures` differs");
    }
}
