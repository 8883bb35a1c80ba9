//! The files around the weights that make an output a complete model: config, tokenizer, chat
//! template (carried over from the chat model when the target has none) and a generation config
//! whose stop ids include the chat model's end-of-turn token.

use std::path::Path;

use serde_json::Value;

use crate::config::{ids_of, ModelConfig};
use crate::writer::write_json;
use crate::{DType, Error, Result};

/// A chat template as a model stores it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "stored_as", content = "template", rename_all = "snake_case")]
pub enum ChatTemplate {
    /// The contents of `chat_template.jinja`.
    JinjaFile(String),
    /// The `chat_template` value of `tokenizer_config.json` (a string or a list of named templates).
    TokenizerConfig(Value),
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// The chat template of the model in `dir`, if it has one.
pub fn chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let t = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        return Ok(Some(ChatTemplate::JinjaFile(t)));
    }
    let tc = read_json(&dir.join("tokenizer_config.json"))?;
    Ok(tc.and_then(|v| v.get("chat_template").cloned()).filter(|v| !v.is_null()).map(ChatTemplate::TokenizerConfig))
}

/// Writes `template` into the model directory `out` the way the source model stored it.
pub fn install_chat_template(out: &Path, template: &ChatTemplate) -> Result<()> {
    let tc_path = out.join("tokenizer_config.json");
    match template {
        ChatTemplate::JinjaFile(t) => {
            let p = out.join("chat_template.jinja");
            std::fs::write(&p, t).map_err(|e| Error::io(&p, e))
        }
        ChatTemplate::TokenizerConfig(v) => match read_json(&tc_path)? {
            Some(Value::Object(mut tc)) => {
                tc.insert("chat_template".into(), v.clone());
                write_json(&tc_path, &Value::Object(tc))
            }
            _ => match v.as_str() {
                Some(s) => {
                    let p = out.join("chat_template.jinja");
                    std::fs::write(&p, s).map_err(|e| Error::io(&p, e))
                }
                None => Err(Error::format(&tc_path, "missing; cannot store a list of chat templates")),
            },
        },
    }
}

/// Stop ids a model declares: `generation_config.json`'s `eos_token_id` and the config's.
pub fn eos_ids(dir: &Path, config: &ModelConfig) -> Result<Vec<u32>> {
    let mut ids =
        read_json(&dir.join("generation_config.json"))?.map(|g| ids_of(g.get("eos_token_id"))).unwrap_or_default();
    for id in config.token_ids("eos_token_id") {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Whether a file of a model directory is weights (not copied) rather than config or tokenizer.
fn is_weight_file(name: &str) -> bool {
    const EXT: &[&str] = &[".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz"];
    EXT.iter().any(|e| name.ends_with(e))
        || name.ends_with(".safetensors.index.json")
        || name.ends_with(".bin.index.json")
        || name == "chatvec.json"
        || name.starts_with('.')
}

/// Copies the target's config, tokenizer and other small files (not weights, not subfolders).
pub fn copy_support_files(from: &Path, to: &Path) -> Result<Vec<String>> {
    let mut copied = vec![];
    let rd = std::fs::read_dir(from).map_err(|e| Error::io(from, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(from, e))?;
        let name = ent.file_name().to_string_lossy().to_string();
        // `metadata` follows symlinks, as HF cache snapshots are links into `blobs/`.
        let is_file = std::fs::metadata(ent.path()).map(|m| m.is_file()).unwrap_or(false);
        if !is_file || is_weight_file(&name) {
            continue;
        }
        // An error here is about the output (full disk, no inodes), so it names the copy.
        let dest = to.join(&name);
        std::fs::copy(ent.path(), &dest).map_err(|e| Error::io(&dest, e))?;
        copied.push(name);
    }
    copied.sort();
    Ok(copied)
}

/// Sets the output's dtype in its `config.json` (in whichever spelling the config uses).
pub fn set_config_dtype(out: &Path, dtype: DType) -> Result<()> {
    let path = out.join("config.json");
    let Some(Value::Object(mut cfg)) = read_json(&path)? else {
        return Ok(());
    };
    let key = if cfg.contains_key("dtype") && !cfg.contains_key("torch_dtype") { "dtype" } else { "torch_dtype" };
    cfg.insert(key.into(), Value::String(dtype.torch_name().into()));
    write_json(&path, &Value::Object(cfg))
}

/// Writes `generation_config.json` with `eos_token_id` = the target's stop ids ∪ `extra` (ids
/// outside the target's vocabulary left out). Returns the final list.
pub fn write_generation_config(out: &Path, target: &ModelConfig, extra: &[u32]) -> Result<Vec<u32>> {
    let path = out.join("generation_config.json");
    let mut gen = match read_json(&path)? {
        Some(Value::Object(g)) => g,
        _ => {
            let mut g = serde_json::Map::new();
            if let Some(b) = target.get("bos_token_id") {
                g.insert("bos_token_id".into(), b.clone());
            }
            g
        }
    };
    let mut ids = ids_of(gen.get("eos_token_id"));
    for id in target.token_ids("eos_token_id").into_iter().chain(extra.iter().copied()) {
        let in_vocab = target.vocab_size().is_none_or(|v| (id as usize) < v);
        if in_vocab && !ids.contains(&id) {
            ids.push(id);
        }
    }
    let v = match ids.as_slice() {
        [one] => Value::from(*one),
        many => Value::from(many.to_vec()),
    };
    gen.insert("eos_token_id".into(), v);
    write_json(&path, &Value::Object(gen))?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_copy_names_the_output_file_not_the_input() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(from.path().join("tokenizer.json"), "{}").unwrap();
        // The copy cannot be created (as when the disk is out of inodes).
        std::fs::create_dir(to.path().join("tokenizer.json")).unwrap();
        let err = copy_support_files(from.path(), to.path()).unwrap_err().to_string();
        assert!(err.starts_with(&to.path().join("tokenizer.json").display().to_string()), "{err}");
    }
}
