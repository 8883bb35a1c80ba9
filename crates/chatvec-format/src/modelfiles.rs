//! The files around the weights that make an output a complete model: config, tokenizer, chat
//! template (carried over from the chat model when the target has none) and a generation config
//! whose stop ids include the chat model's end-of-turn token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let text = crate::metadata::read_metadata(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::json(path, e))
}

/// The key of `tokenizer_config.json` that holds the chat template.
const TEMPLATE_KEY: &str = "chat_template";

/// The template transformers renders when no name is asked for.
const DEFAULT_TEMPLATE: &str = "default";

/// The template transformers renders when tools are passed, if the model names one.
const TOOL_USE_TEMPLATE: &str = "tool_use";

impl ChatTemplate {
    /// The file of the model directory `dir` the template is stored in.
    pub fn file(&self, dir: &Path) -> PathBuf {
        dir.join(match self {
            ChatTemplate::JinjaFile(_) => "chat_template.jinja",
            ChatTemplate::TokenizerConfig(_) => "tokenizer_config.json",
        })
    }

    /// The templates by name, as transformers holds them after loading: a single template is
    /// `default`; a list of `{"name", "template"}` (or an object of name → template) names each,
    /// and of a repeated name the last wins. Errors name the file in `dir` and the key.
    pub fn named(&self, dir: &Path) -> Result<BTreeMap<String, String>> {
        let value = match self {
            ChatTemplate::JinjaFile(text) => return Ok(BTreeMap::from([(DEFAULT_TEMPLATE.into(), text.clone())])),
            ChatTemplate::TokenizerConfig(value) => value,
        };
        let bad = |key: String, what: &str| Error::bad_key(self.file(dir), key, what);
        match value {
            Value::String(text) => Ok(BTreeMap::from([(DEFAULT_TEMPLATE.into(), text.clone())])),
            Value::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let field = |f: &str| entry.get(f).and_then(Value::as_str).map(str::to_string);
                    field("name").zip(field("template")).ok_or_else(|| {
                        bad(format!("{TEMPLATE_KEY}[{i}]"), "is not an object with string `name` and `template`")
                    })
                })
                .collect(),
            Value::Object(map) => map
                .iter()
                .map(|(name, text)| match text.as_str() {
                    Some(t) => Ok((name.clone(), t.to_string())),
                    None => {
                        Err(bad(format!("{TEMPLATE_KEY}.{name}"), &format!("is {}, not a string", json_kind(text))))
                    }
                })
                .collect(),
            other => Err(bad(
                TEMPLATE_KEY.into(),
                &format!("is {}, not a string or a list of named templates", json_kind(other)),
            )),
        }
    }

    /// The template text transformers' `get_chat_template` picks: `tool_use` when tools are
    /// passed and the model names one, otherwise `default`.
    pub fn pick(&self, dir: &Path, with_tools: bool) -> Result<String> {
        let mut named = self.named(dir)?;
        if let Some(text) = with_tools.then(|| named.remove(TOOL_USE_TEMPLATE)).flatten() {
            return Ok(text);
        }
        named.remove(DEFAULT_TEMPLATE).ok_or_else(|| {
            let names: Vec<&String> = named.keys().collect();
            let problem = format!("lists templates {names:?} but none named `{DEFAULT_TEMPLATE}`");
            Error::bad_key(self.file(dir), TEMPLATE_KEY, problem)
        })
    }
}

/// "a number", "an object"...: a JSON value's kind, for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The chat template of the model in `dir`, if it has one, found as transformers finds it:
/// `chat_template.jinja` wins over `chat_template` in `tokenizer_config.json` (a `null` there
/// is none). The value is returned as stored, so a merge carries it over unchanged;
/// [`ChatTemplate::named`] and [`ChatTemplate::pick`] check its shape.
pub fn chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let t = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        return Ok(Some(ChatTemplate::JinjaFile(t)));
    }
    let tc = read_json(&dir.join("tokenizer_config.json"))?;
    Ok(tc.and_then(|v| v.get(TEMPLATE_KEY).cloned()).filter(|v| !v.is_null()).map(ChatTemplate::TokenizerConfig))
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
                tc.insert(TEMPLATE_KEY.into(), v.clone());
                write_json(&tc_path, &Value::Object(tc))
            }
            _ => match v.as_str() {
                Some(s) => {
                    let p = out.join("chat_template.jinja");
                    std::fs::write(&p, s).map_err(|e| Error::io(&p, e))
                }
                None => Err(Error::NoTokenizerConfig { path: tc_path }),
            },
        },
    }
}

/// Stop ids a model declares: `generation_config.json`'s `eos_token_id` and the config's.
/// Each must be a token id of the model's vocabulary (see [`ids_of`]).
pub fn eos_ids(dir: &Path, config: &ModelConfig) -> Result<Vec<u32>> {
    let gen_path = dir.join("generation_config.json");
    let mut ids = match read_json(&gen_path)? {
        Some(g) => ids_of(g.get("eos_token_id"), &gen_path, "eos_token_id", config.vocab_size())?,
        None => vec![],
    };
    for id in config.token_ids("eos_token_id", dir)? {
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
    let mut ids = ids_of(gen.get("eos_token_id"), &path, "eos_token_id", target.vocab_size())?;
    for id in target.token_ids("eos_token_id", out)?.into_iter().chain(extra.iter().copied()) {
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

    /// A model directory with the template files of a case of `fixtures/stored-templates`.
    fn model_dir(case: &Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(config) = case.get("tokenizer_config") {
            std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        }
        if let Some(Value::String(jinja)) = case.get("jinja") {
            std::fs::write(dir.path().join("chat_template.jinja"), jinja).unwrap();
        }
        dir
    }

    /// The fixture's verdict, as chatvec reaches it: the template, `none`, or `refused`.
    fn verdict(dir: &Path, with_tools: bool) -> Value {
        match chat_template(dir).unwrap() {
            None => serde_json::json!({"none": true}),
            Some(t) => match t.pick(dir, with_tools) {
                Ok(text) => serde_json::json!({"template": text}),
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.starts_with(&t.file(dir).display().to_string()) && !e.contains('\n'), "{e}");
                    serde_json::json!({"refused": true})
                }
            },
        }
    }

    #[test]
    fn the_stored_template_is_the_one_transformers_picks() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/stored-templates/cases.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 13);
        for case in cases {
            let dir = model_dir(case);
            for (key, with_tools) in [("without_tools", false), ("with_tools", true)] {
                assert_eq!(verdict(dir.path(), with_tools), case[key], "{} {key}", case["name"]);
            }
        }
    }

    #[test]
    fn a_list_without_default_is_refused_naming_the_file_and_the_names() {
        let dir = model_dir(&serde_json::json!({"tokenizer_config": {"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "rag", "template": "R"}]}}));
        let err = chat_template(dir.path()).unwrap().unwrap().pick(dir.path(), false).unwrap_err().to_string();
        let file = dir.path().join("tokenizer_config.json").display().to_string();
        assert_eq!(
            err,
            format!("{file}: `chat_template` lists templates [\"rag\", \"tool_use\"] but none named `default`")
        );
    }

    #[test]
    fn a_template_of_the_wrong_shape_is_one_line_naming_file_and_key() {
        let cases = [
            (serde_json::json!(7), "`chat_template` is a number, not a string or a list of named templates"),
            (serde_json::json!(true), "`chat_template` is a boolean, not a string or a list of named templates"),
            (
                serde_json::json!([{"name": "default"}]),
                "`chat_template[0]` is not an object with string `name` and `template`",
            ),
            (serde_json::json!(["x"]), "`chat_template[0]` is not an object with string `name` and `template`"),
            (serde_json::json!({"default": ["x"]}), "`chat_template.default` is a list, not a string"),
        ];
        for (value, message) in cases {
            let dir = model_dir(&serde_json::json!({"tokenizer_config": {"chat_template": value}}));
            let stored = chat_template(dir.path()).unwrap().unwrap();
            let file = dir.path().join("tokenizer_config.json").display().to_string();
            for with_tools in [false, true] {
                assert_eq!(stored.pick(dir.path(), with_tools).unwrap_err().to_string(), format!("{file}: {message}"));
            }
        }
    }

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
