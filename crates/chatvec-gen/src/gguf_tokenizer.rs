//! The tokenizer a GGUF file carries in its metadata, rebuilt as a `tokenizers::Tokenizer` that
//! splits text as llama.cpp does:
//! - `gpt2`: byte-level BPE with its merges, after the pre-tokenizer regexes llama.cpp uses for
//!   `tokenizer.ggml.pre` (llama-bpe, qwen2, gpt-2, smollm, default);
//! - `llama`: SentencePiece as BPE with byte fallback, merges ordered by the merged piece's score
//!   (llama.cpp's SPM merges the best-scoring pair first), a `▁` prefix on each text fragment.
//!
//! Control and user-defined tokens become added tokens, matched whole. The pipeline is described
//! as tokenizer.json and loaded by the tokenizers crate, so its models, pre-tokenizers and decoders
//! do the work. Also read: special ids, add-bos/add-eos, the chat template and the stop ids.

use chatvec_gguf::vocab::LLAMA_CPP_EOG_TEXTS;
use std::collections::HashMap;

use chatvec_gguf::read::{GgufIndex, MetaValue};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::error::{GenError, Result};

/// What a GGUF file says about tokenizing and chatting.
pub struct GgufTokenizer {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// A `tokenizer_config.json`-shaped value: bos/eos/unk tokens, add_bos/add_eos, chat template.
    pub config: Value,
    /// Ids that end an answer (eos, eot, eom), with their text.
    pub stops: Vec<(u32, String)>,
}

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_attr` order in GGUF).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The pre-tokenizer regexes llama.cpp applies for each `tokenizer.ggml.pre` (llama-vocab.cpp),
/// each splitting the pieces of the one before.
fn pre_regexes(pre: &str) -> Option<&'static [&'static str]> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    Some(match pre {
        "llama-bpe" | "llama3" | "llama-v3" => &[
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        "qwen2" => &[
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        "gpt-2" => &[GPT2],
        "smollm" => &[r"\p{N}", GPT2],
        "default" => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        _ => return None,
    })
}

/// The pre-tokenizer names [`pre_regexes`] knows.
const KNOWN_PRE: &str = "llama-bpe, qwen2, gpt-2, smollm, default";

struct Meta<'a> {
    index: &'a GgufIndex,
}

impl Meta<'_> {
    fn err(&self, message: String) -> GenError {
        GenError::bad_file(self.index.path(), message)
    }

    fn str(&self, key: &str) -> Option<&str> {
        match self.index.get(key) {
            Some(MetaValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn strings(&self, key: &str) -> Result<&[String]> {
        match self.index.get(key) {
            Some(MetaValue::Strings(s)) => Ok(s),
            _ => Err(self.err(format!("metadata {key:?} is missing or not a list of strings"))),
        }
    }

    fn numbers(&self, key: &str, len: usize) -> Result<Option<&[f64]>> {
        match self.index.get(key) {
            None => Ok(None),
            Some(MetaValue::Numbers(n)) if n.len() == len => Ok(Some(n)),
            Some(_) => Err(self.err(format!("metadata {key:?} is not a list of {len} numbers"))),
        }
    }

    fn id(&self, key: &str, vocab: usize) -> Result<Option<u32>> {
        match self.index.get(key) {
            None => Ok(None),
            Some(MetaValue::UInt(x)) if (*x as usize) < vocab => Ok(Some(*x as u32)),
            Some(MetaValue::Int(-1)) => Ok(None),
            Some(_) => Err(self.err(format!("metadata {key:?} is not a token id below {vocab}"))),
        }
    }

    fn flag(&self, key: &str) -> Option<bool> {
        match self.index.get(key) {
            Some(MetaValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

/// Reads the tokenizer of a GGUF file; an error when it has none, or one chatvec cannot rebuild.
pub fn from_gguf(index: &GgufIndex) -> Result<GgufTokenizer> {
    let meta = Meta { index };
    let model = meta.str("tokenizer.ggml.model").ok_or_else(|| {
        meta.err("no tokenizer in its metadata (pass --tokenizer DIR with Hugging Face files)".into())
    })?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = meta.numbers("tokenizer.ggml.token_type", tokens.len())?;
    // Texts llama.cpp makes end-of-generation tokens whatever their stored type.
    let eog = |i: usize| LLAMA_CPP_EOG_TEXTS.contains(&tokens[i].as_str());
    let type_of = |i: usize| if eog(i) { CONTROL } else { types.map_or(1, |t| t[i] as i64) };
    let added: Vec<Value> = (0..tokens.len())
        .filter(|&i| matches!(type_of(i), CONTROL | USER_DEFINED))
        .map(|i| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": type_of(i) == CONTROL})
        })
        .collect();
    let id = |k: &str| meta.id(&format!("tokenizer.ggml.{k}"), tokens.len());
    let (bos, eos) = (id("bos_token_id")?, id("eos_token_id")?);
    let add_bos = meta.flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
    let add_eos = meta.flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
    let mut tj = match model {
        "gpt2" => gpt2_json(&meta, tokens)?,
        "llama" => spm_json(&meta, tokens)?,
        other => return Err(meta.err(format!("tokenizer model {other:?} is not supported (gpt2, llama)"))),
    };
    tj["added_tokens"] = Value::Array(added);
    tj["post_processor"] = post_processor(tokens, bos.filter(|_| add_bos), eos.filter(|_| add_eos));
    let tokenizer = Tokenizer::from_bytes(serde_json::to_vec(&tj).expect("JSON"))
        .map_err(|e| meta.err(format!("cannot build its tokenizer: {e}")))?;
    let name = |i: Option<u32>| i.map(|i| Value::String(tokens[i as usize].clone())).unwrap_or(Value::Null);
    let mut config = json!({"bos_token": name(bos), "eos_token": name(eos), "unk_token": name(id("unknown_token_id")?),
                            "add_bos_token": add_bos, "add_eos_token": add_eos});
    if let Some(t) = meta.str("tokenizer.chat_template") {
        config["chat_template"] = Value::String(t.to_string());
    }
    let mut stop_ids = vec![];
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        stop_ids.extend(id(key)?);
    }
    stop_ids.extend((0..tokens.len()).filter(|&i| eog(i)).map(|i| i as u32));
    let mut stops: Vec<(u32, String)> = vec![];
    for i in stop_ids {
        if !stops.iter().any(|(s, _)| *s == i) {
            stops.push((i, tokens[i as usize].clone()));
        }
    }
    Ok(GgufTokenizer { tokenizer, config, stops })
}

fn vocab_json(tokens: &[String]) -> Value {
    // A later duplicate keeps the first id, as llama.cpp's text-to-token map does.
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(i));
    }
    Value::Object(vocab)
}

fn gpt2_json(meta: &Meta, tokens: &[String]) -> Result<Value> {
    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
    let regexes = pre_regexes(pre).ok_or_else(|| {
        meta.err(format!("pre-tokenizer {:?} (tokenizer.ggml.pre) is not one chatvec knows ({KNOWN_PRE})", pre))
    })?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let mut pre_tokenizers: Vec<Value> = regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    pre_tokenizers.push(byte_level.clone());
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizers},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": matches!(pre, "llama-bpe" | "llama3" | "llama-v3"),
                  "vocab": vocab_json(tokens), "merges": merges},
        "decoder": byte_level,
    }))
}

/// SentencePiece merges as llama.cpp applies them: every split of a piece into two pieces of the
/// vocabulary, the best-scoring merged piece first.
fn spm_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, String, String)> = vec![];
    for (i, piece) in tokens.iter().enumerate() {
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if ids.contains_key(l) && ids.contains_key(r) {
                merges.push((scores[i], i, l.to_string(), r.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    merges.into_iter().map(|(_, _, l, r)| (l, r)).collect()
}

fn spm_json(meta: &Meta, tokens: &[String]) -> Result<Value> {
    let scores = meta
        .numbers("tokenizer.ggml.scores", tokens.len())?
        .ok_or_else(|| meta.err("metadata \"tokenizer.ggml.scores\" is missing".into()))?;
    let unk = meta.id("tokenizer.ggml.unknown_token_id", tokens.len())?.map(|i| tokens[i as usize].clone());
    let prefix = meta.flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizers =
        if prefix { vec![json!({"type": "Prepend", "prepend": "\u{2581}"}), replace] } else { vec![replace] };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_json(tokens), "merges": spm_merges(tokens, scores)},
        "decoder": {"type": "Sequence", "decoders": decoders},
    }))
}

/// BOS/EOS around each sequence when the file asks for them.
fn post_processor(tokens: &[String], bos: Option<u32>, eos: Option<u32>) -> Value {
    let mut single = vec![];
    let mut special = serde_json::Map::new();
    let mut add = |id: u32, single: &mut Vec<Value>| {
        let t = &tokens[id as usize];
        single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        special.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    };
    if let Some(b) = bos {
        add(b, &mut single);
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some(e) = eos {
        add(e, &mut single);
    }
    let mut pair = single.clone();
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
}
