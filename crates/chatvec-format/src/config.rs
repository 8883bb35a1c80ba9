//! `config.json` as written by transformers, read in both spellings (2024-era `rope_theta` /
//! `torch_dtype`, transformers-5 `rope_parameters` / `dtype`) and for multimodal wrappers
//! (`text_config`).

use std::path::Path;

use serde_json::Value;

use crate::{DType, Error, Result};

/// `key` of a config.json object, or the same key in its `text_config` (multimodal wrappers
/// keep the language model's settings there); `null` counts as absent. Every reader of
/// config.json (the merge's checks, the GGUF export, the decoder) looks keys up through this.
pub fn lookup<'a>(raw: &'a Value, key: &str) -> Option<&'a Value> {
    raw.get(key).filter(|v| !v.is_null()).or_else(|| raw.get("text_config")?.get(key).filter(|v| !v.is_null()))
}

/// A model's `config.json`, kept whole so it can be written back unchanged.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    /// The parsed JSON.
    pub raw: Value,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = crate::metadata::read_metadata(&path)?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| Error::json(&path, e))?;
        if !raw.is_object() {
            return Err(Error::NotJsonObject { path });
        }
        Ok(ModelConfig { raw })
    }

    /// A top-level key, or the same key in `text_config` (multimodal wrappers keep it there).
    pub fn get(&self, key: &str) -> Option<&Value> {
        lookup(&self.raw, key)
    }

    fn usize(&self, key: &str) -> Option<usize> {
        self.get(key)?.as_u64().map(|v| v as usize)
    }

    /// `model_type`, e.g. `llama`.
    pub fn model_type(&self) -> Option<&str> {
        self.raw.get("model_type")?.as_str()
    }

    /// `architectures[0]`, e.g. `LlamaForCausalLM`.
    pub fn architecture(&self) -> Option<&str> {
        self.raw.get("architectures")?.get(0)?.as_str()
    }

    /// `vocab_size`.
    pub fn vocab_size(&self) -> Option<usize> {
        self.usize("vocab_size")
    }

    /// `max_position_embeddings`.
    pub fn max_position_embeddings(&self) -> Option<usize> {
        self.usize("max_position_embeddings")
    }

    /// `rope_theta`, or `rope_parameters.rope_theta` (transformers 5).
    pub fn rope_theta(&self) -> Option<f64> {
        self.get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| self.get("rope_parameters")?.get("rope_theta")?.as_f64())
    }

    /// `rope_scaling`, or `rope_parameters` minus its `rope_theta` (transformers 5).
    pub fn rope_scaling(&self) -> Option<Value> {
        if let Some(v) = self.get("rope_scaling") {
            return Some(v.clone());
        }
        let mut p = self.get("rope_parameters")?.as_object()?.clone();
        p.remove("rope_theta");
        let default = p.get("rope_type").and_then(Value::as_str) == Some("default");
        (!p.is_empty() && !default).then_some(Value::Object(p))
    }

    /// Token ids under `key` (`eos_token_id`, `bos_token_id`), an int or a list, checked as
    /// [`ids_of`] checks them; `dir` is the model directory, for messages.
    pub fn token_ids(&self, key: &str, dir: &Path) -> Result<Vec<u32>> {
        ids_of(self.get(key), &dir.join("config.json"), key, self.vocab_size())
    }

    /// `tie_word_embeddings`; `None` when the config does not say.
    pub fn tie_word_embeddings(&self) -> Option<bool> {
        self.get("tie_word_embeddings").and_then(Value::as_bool)
    }

    /// `torch_dtype` or `dtype`.
    pub fn dtype(&self) -> Option<DType> {
        self.get("torch_dtype").or_else(|| self.get("dtype")).and_then(Value::as_str).and_then(DType::parse)
    }
}

/// Token ids under `key` of the JSON file `file`: an int, a list of ints, or null. Each must be
/// a whole number below 2^32 and, when `vocab` is known, below it; anything else is refused
/// naming the file and the key (a truncated id would stop generation at an unrelated token).
pub fn ids_of(v: Option<&Value>, file: &Path, key: &str, vocab: Option<usize>) -> Result<Vec<u32>> {
    let items: Vec<&Value> = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
    };
    let id_of = |item: &Value| -> Result<u32> {
        let id = item.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| Error::NotATokenId {
            path: file.to_path_buf(),
            key: key.to_string(),
            value: item.to_string(),
        })?;
        match vocab {
            Some(v) if id as usize >= v => {
                Err(Error::TokenIdBeyondVocab { path: file.to_path_buf(), key: key.to_string(), id, vocab: v })
            }
            _ => Ok(id),
        }
    };
    items.into_iter().map(id_of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_token_ids_carry_the_file_key_and_values() {
        let file = Path::new("m/generation_config.json");
        let beyond = ids_of(Some(&serde_json::json!([1, 5000])), file, "eos_token_id", Some(2008)).unwrap_err();
        let Error::TokenIdBeyondVocab { path, key, id, vocab } = &beyond else { panic!("{beyond}") };
        assert_eq!((path.as_path(), key.as_str(), *id, *vocab), (file, "eos_token_id", 5000, 2008));
        let negative = ids_of(Some(&serde_json::json!(-1)), file, "eos_token_id", None).unwrap_err();
        let Error::NotATokenId { value, .. } = &negative else { panic!("{negative}") };
        assert_eq!(value, "-1");
        assert_eq!(
            negative.to_string(),
            "m/generation_config.json: `eos_token_id`: -1 is not a token id (a whole number below 2^32)"
        );
    }

    #[test]
    fn both_config_spellings_give_the_same_rope_and_dtype() {
        let old = ModelConfig {
            raw: serde_json::json!({"rope_theta": 500000.0, "torch_dtype": "bfloat16",
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "eos_token_id": [1, 2]}),
        };
        let new = ModelConfig {
            raw: serde_json::json!({"dtype": "bfloat16", "eos_token_id": 7,
                "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}}),
        };
        assert_eq!(old.rope_theta(), Some(500000.0));
        assert_eq!(new.rope_theta(), Some(500000.0));
        assert_eq!(old.rope_scaling(), new.rope_scaling());
        assert_eq!(new.dtype(), Some(DType::BF16));
        assert_eq!(old.token_ids("eos_token_id", Path::new("m")).unwrap(), vec![1, 2]);
        assert_eq!(new.token_ids("eos_token_id", Path::new("m")).unwrap(), vec![7]);
        let plain =
            ModelConfig { raw: serde_json::json!({"rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}}) };
        assert_eq!(plain.rope_scaling(), None);
    }

    #[test]
    fn text_config_is_searched_for_multimodal_wrappers() {
        let c = ModelConfig { raw: serde_json::json!({"text_config": {"vocab_size": 10}}) };
        assert_eq!(c.vocab_size(), Some(10));
    }
}
