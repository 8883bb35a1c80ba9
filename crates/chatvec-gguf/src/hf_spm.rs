//! A SentencePiece (`llama`) vocabulary from `tokenizer.json` when `tokenizer.model` is absent,
//! as the converter's fallback (`_set_vocab_llama_hf`, gguf-py's `LlamaHfVocab`) builds it: the
//! tokens in id order, `BYTE` for `<0xNN>`, `CONTROL` for transformers' special tokens, `NORMAL`
//! for the rest, added tokens past the model's vocabulary appended.
//!
//! One difference, on purpose: the converter writes the score -1000 for every token. llama.cpp's
//! SentencePiece tokenizer merges the best-scoring pair first, so with equal scores it merges left
//! to right and gives other ids than `tokenizer.json`. chatvec scores each merged piece by the
//! order of its first merge (the first is 0, the next -1, …), which is what `tokenizer.model` holds
//! for a tokenizer converted from it, and every other token below all of them.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chatvec_format::{Error, Result};
use serde_json::Value as Json;

use crate::format::{Metadata, Value};
use crate::vocab::{read_json, token_content, CONTROL, NORMAL, USER_DEFINED};

/// gguf.TokenType.BYTE.
const BYTE: i32 = 6;

/// The converter's score for every token, kept for tokens no merge makes.
const CONVERTER_SCORE: f32 = -1000.0;

/// Whether `tokenizer.json` is a SentencePiece-style BPE (byte fallback, a `Sequence` decoder): the
/// test `LlamaHfVocab` makes before reading it.
pub fn is_spm_style(json: &Json) -> bool {
    let model = &json["model"];
    model["type"] == "BPE" && model["byte_fallback"] == true && json["decoder"]["type"] == "Sequence"
}

/// Writes the `llama` tokenizer keys from `dir/tokenizer.json`; returns the number of tokens.
///
/// `defaults` are the tokenizer class's named special tokens (`("bos_token", "<bos>")`, …), used
/// where the files name none.
pub fn write_llama_hf(
    dir: &Path,
    tok_config: Option<&Json>,
    defaults: &[(&str, &str)],
    meta: &mut Metadata,
) -> Result<usize> {
    let path = dir.join("tokenizer.json");
    let json = read_json(&path)?.ok_or_else(|| Error::MissingFile {
        dir: dir.to_path_buf(),
        step: "GGUF export",
        file: "tokenizer.model or tokenizer.json",
    })?;
    let bad = |problem: String| Error::BadTokenizer { path: path.clone(), problem };
    if !is_spm_style(&json) {
        return Err(bad("without tokenizer.model, a SentencePiece vocabulary needs a BPE tokenizer.json with \
                        byte fallback and a Sequence decoder"
            .to_string()));
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| bad(format!("cannot load: {e}")))?;
    let base = tokenizer.get_vocab_size(false);
    let by_id: HashMap<u32, String> = tokenizer.get_vocab(true).into_iter().map(|(t, i)| (i, t)).collect();
    let special = special_ids(dir, tok_config, defaults, &tokenizer)?;
    let type_of = |id: u32, text: &str| {
        if is_byte_token(text) {
            BYTE
        } else if special.contains(&id) {
            CONTROL
        } else {
            NORMAL
        }
    };
    let mut tokens = Vec::with_capacity(base);
    let mut types = Vec::with_capacity(base);
    for id in 0..base as u32 {
        let text = by_id.get(&id).ok_or_else(|| bad(format!("no token has id {id}")))?;
        tokens.push(text.clone());
        types.push(type_of(id, text));
    }
    // Added tokens past the model's vocabulary, by id (LlamaHfVocab.added_tokens).
    let mut added: Vec<(u32, &String)> =
        by_id.iter().filter(|(&i, _)| i as usize >= base).map(|(&i, t)| (i, t)).collect();
    added.sort();
    for (id, text) in added {
        tokens.push(text.clone());
        types.push(if special.contains(&id) { type_of(id, "") } else { USER_DEFINED });
    }
    let scores = merge_order_scores(&json, &tokens);
    let n = tokens.len();
    meta.set("tokenizer.ggml.model", Value::str("llama"));
    meta.set("tokenizer.ggml.pre", Value::str("default"));
    meta.set("tokenizer.ggml.tokens", Value::StrArray(tokens.into_iter().map(String::into_bytes).collect()));
    meta.set("tokenizer.ggml.scores", Value::F32Array(scores));
    meta.set("tokenizer.ggml.token_type", Value::I32Array(types));
    Ok(n)
}

fn is_byte_token(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6 && text.starts_with("<0x") && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit() && b[5] == b'>'
}

/// The named special tokens transformers keeps (`SPECIAL_TOKENS_ATTRIBUTES`).
const NAMED: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// transformers' `all_special_ids` for the tokenizer: the named special tokens of
/// `tokenizer_config.json` and `special_tokens_map.json` (the class's `defaults` where neither
/// names one), and their `extra_special_tokens` / `additional_special_tokens`.
fn special_ids(
    dir: &Path,
    tok_config: Option<&Json>,
    defaults: &[(&str, &str)],
    tokenizer: &tokenizers::Tokenizer,
) -> Result<HashSet<u32>> {
    let map = read_json(&dir.join("special_tokens_map.json"))?;
    let sources: Vec<&Json> = tok_config.into_iter().chain(map.as_ref()).collect();
    let mut texts: Vec<String> = vec![];
    for name in NAMED {
        let given = sources.iter().find_map(|s| s.get(name)).filter(|v| !v.is_null());
        match given {
            Some(v) => texts.extend(token_content(v)),
            None => texts.extend(defaults.iter().find(|(n, _)| *n == name).map(|(_, t)| t.to_string())),
        }
    }
    for s in &sources {
        for key in ["extra_special_tokens", "additional_special_tokens"] {
            match s.get(key) {
                Some(Json::Array(list)) => texts.extend(list.iter().filter_map(token_content)),
                Some(Json::Object(named)) => texts.extend(named.values().filter_map(token_content)),
                _ => {}
            }
        }
    }
    // A token missing from the vocabulary maps to unk, as convert_tokens_to_ids does.
    let unk = tokenizer.token_to_id(&token_text(&sources, "unk_token").unwrap_or_else(|| "<unk>".into()));
    Ok(texts.iter().filter_map(|t| tokenizer.token_to_id(t).or(unk)).collect())
}

fn token_text(sources: &[&Json], name: &str) -> Option<String> {
    sources.iter().find_map(|s| s.get(name)).and_then(token_content)
}

/// Scores that make llama.cpp's best-score-first merging follow `tokenizer.json`'s merge order:
/// the k-th distinct merged piece scores -k; every other token scores below all of them (the
/// converter's -1000 when that already is).
fn merge_order_scores(json: &Json, tokens: &[String]) -> Vec<f32> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
    let mut scores = vec![f32::NAN; tokens.len()];
    let mut k = 0usize;
    for merge in json["model"]["merges"].as_array().into_iter().flatten() {
        let (l, r) = match merge {
            Json::String(s) => match s.split_once(' ') {
                Some(p) => p,
                None => continue,
            },
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(l), Some(r)) => (l, r),
                _ => continue,
            },
            _ => continue,
        };
        if let Some(&id) = ids.get(format!("{l}{r}").as_str()) {
            if scores[id].is_nan() {
                scores[id] = -(k as f32);
                k += 1;
            }
        }
    }
    let rest = CONVERTER_SCORE.min(-(k as f32));
    scores.iter().map(|&s| if s.is_nan() { rest } else { s }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_pieces_score_by_first_merge_and_the_rest_below() {
        let json = serde_json::json!({"model": {"merges": ["a b", ["ab", "c"], "a bc", "x y"]}});
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "abc", "bc"].iter().map(|s| s.to_string()).collect();
        let s = merge_order_scores(&json, &tokens);
        assert_eq!(s, vec![-1000.0, -1000.0, -1000.0, -1000.0, 0.0, -1.0, -1000.0]);
    }

    #[test]
    fn byte_tokens_are_recognised() {
        assert!(is_byte_token("<0x0A>") && is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0x0A") && !is_byte_token("<0xZZ>") && !is_byte_token("<0x0AB>"));
    }
}
