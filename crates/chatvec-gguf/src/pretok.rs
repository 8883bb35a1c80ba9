//! Choosing `tokenizer.ggml.pre` for a byte-level BPE tokenizer, as the converter does: tokenize
//! a fixed text, hash the ids (chkhsh) and look the hash up in its table of known tokenizers.
//!
//! The hash covers the whole vocabulary, so a tokenizer whose vocabulary grew (a Korean
//! continual-pretraining model built on Llama-3) has a hash in no table and the converter refuses
//! it. chatvec then reads the pre-tokenizer's split regex from `tokenizer.json` and names the
//! llama.cpp pre-tokenizer with that same regex.

use serde_json::Value as Json;

use crate::pre_hashes::KNOWN;
use crate::vocab::{chkhsh, CHKTXT};

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` name for `tokenizer` (whose `tokenizer.json` is `json`).
pub fn pre_tokenizer(tokenizer: &tokenizers::Tokenizer, json: &Json) -> Result<String, String> {
    let enc = tokenizer.encode(CHKTXT, true).map_err(|e| format!("cannot tokenize the probe text: {e}"))?;
    let hash = chkhsh(enc.get_ids());
    if let Some((_, name)) = KNOWN.iter().find(|(h, _)| *h == hash) {
        return Ok(name.to_string());
    }
    by_regex(json.get("pre_tokenizer").unwrap_or(&Json::Null)).map(str::to_string).ok_or_else(|| {
        format!("BPE pre-tokenizer not recognised (chkhsh {hash}, and its split regex is not one llama.cpp knows)")
    })
}

/// The llama.cpp pre-tokenizer whose regex the `pre_tokenizer` section uses.
fn by_regex(pre: &Json) -> Option<&'static str> {
    match pre.get("type")?.as_str()? {
        "ByteLevel" if pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true) => Some("gpt-2"),
        "Sequence" => {
            let parts = pre.get("pretokenizers")?.as_array()?;
            let regex = parts.iter().find_map(|p| {
                (p.get("type")?.as_str()? == "Split").then(|| p.get("pattern")?.get("Regex")?.as_str())?
            })?;
            match regex {
                LLAMA3_REGEX => Some("llama-bpe"),
                QWEN2_REGEX => Some("qwen2"),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(regex: &str) -> Json {
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
    }

    #[test]
    fn unknown_hashes_fall_back_to_the_split_regex() {
        assert_eq!(by_regex(&split(LLAMA3_REGEX)), Some("llama-bpe"));
        assert_eq!(by_regex(&split(QWEN2_REGEX)), Some("qwen2"));
        assert_eq!(by_regex(&serde_json::json!({"type": "ByteLevel", "use_regex": true})), Some("gpt-2"));
        assert_eq!(by_regex(&split("x+")), None);
    }

    #[test]
    fn the_table_has_llama3_and_qwen2() {
        assert!(KNOWN.contains(&("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5", "llama-bpe")));
        assert!(KNOWN.iter().any(|(_, n)| *n == "qwen2"));
    }
}
