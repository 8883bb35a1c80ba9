//! Which files of a hub repo a model needs: its config, tokenizer and generation files, and one
//! weight format (safetensors when the repo has it, else PyTorch `.bin`), never both. Everything
//! else a repo may carry (`consolidated*`, `original/`, GGUF, ONNX, flax, TF) is left on the hub.

use crate::{Error, Result};

/// The weight formats chatvec reads, in order of preference: (single file, index of shards).
pub const WEIGHT_FORMATS: [(&str, &str); 2] =
    [("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")];

/// Top-level files a model folder may need besides its weights.
const SUPPORT_FILES: [&str; 8] = [
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

/// The weights chosen from a repo's file list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weights {
    /// One file holds every tensor.
    Single(String),
    /// An index, whose `weight_map` names the shards to fetch once it is read.
    Sharded(String),
}

/// What to fetch from a repo that lists `siblings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Config, tokenizer, generation and template files present in the repo.
    pub support: Vec<String>,
    /// The one weight format to fetch.
    pub weights: Weights,
}

/// Picks the files a model needs from the repo's file list; `what` names the repo in the error.
pub fn wanted(siblings: &[String], what: &str) -> Result<Wanted> {
    let has = |f: &str| siblings.iter().any(|s| s == f);
    let support = siblings
        .iter()
        .filter(|f| SUPPORT_FILES.contains(&f.as_str()) || (f.starts_with("tokenizer") && !f.contains('/')))
        .cloned()
        .collect();
    for (single, index) in WEIGHT_FORMATS {
        if has(index) {
            return Ok(Wanted { support, weights: Weights::Sharded(index.into()) });
        }
        if has(single) {
            return Ok(Wanted { support, weights: Weights::Single(single.into()) });
        }
    }
    Err(Error::NoWeightsInRepo { repo: what.to_string() })
}

/// Checks that every shard an index names is a plain file name the repo lists.
pub fn check_shards(shards: &[String], siblings: &[String], index: &str, what: &str) -> Result<()> {
    for s in shards {
        if !siblings.contains(s) {
            return Err(Error::ShardNotInRepo { repo: what.to_string(), index: index.to_string(), shard: s.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn safetensors_win_over_bin_and_extras_are_left_out() {
        let repo = names(&[
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "README.md",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "pytorch_model.bin.index.json",
            "pytorch_model-00001-of-00002.bin",
            "consolidated.00.pth",
            "original/params.json",
            "original/tokenizer.model",
            "model.gguf",
            "onnx/model.onnx",
            "flax_model.msgpack",
            "tf_model.h5",
        ]);
        let w = wanted(&repo, "org/m").unwrap();
        assert_eq!(w.weights, Weights::Sharded("model.safetensors.index.json".into()));
        assert_eq!(w.support, names(&["config.json", "tokenizer.json", "tokenizer_config.json"]));
    }

    #[test]
    fn bin_is_taken_only_without_safetensors() {
        let w = wanted(&names(&["config.json", "pytorch_model.bin", "flax_model.msgpack"]), "org/m").unwrap();
        assert_eq!(w.weights, Weights::Single("pytorch_model.bin".into()));
        let err = wanted(&names(&["config.json", "model.gguf"]), "org/m").unwrap_err().to_string();
        assert!(err.contains("org/m has no weights"), "{err}");
    }
}
