//! Tokenizer metadata as llama.cpp's converter writes it: a SentencePiece vocabulary (`llama`)
//! from `tokenizer.model`, or a byte-level BPE one (`gpt2`) from `tokenizer.json` with its
//! pre-tokenizer chosen by hashing the tokenization of a fixed text (chkhsh); then gguf-py's
//! `SpecialVocab`: merges, special ids, add-bos/eos flags and the chat template.

use std::path::Path;

use chatvec_format::{Error, Result};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::format::{Metadata, Value};
use crate::pretok;
use crate::spm;

// gguf.TokenType
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Where the tokenizer comes from, and a chat template to use when its files have none (a merge
/// carries the chat model's).
pub struct VocabSource<'a> {
    /// The directory with `tokenizer.json` / `tokenizer.model` / `tokenizer_config.json`.
    pub dir: &'a Path,
    /// `config.json` as parsed.
    pub config: &'a Json,
    /// A template for when the tokenizer files have none.
    pub fallback_template: Option<Json>,
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::json(path, e))
}

/// Writes the tokenizer keys for `arch` into `meta`.
pub fn write_vocab(arch: Arch, src: &VocabSource, meta: &mut Metadata) -> Result<()> {
    let tok_config = read_json(&src.dir.join("tokenizer_config.json"))?;
    let has_spm = src.dir.join("tokenizer.model").is_file();
    if arch == Arch::Llama {
        if let Some(b) = tok_config.as_ref().and_then(|c| c.get("add_prefix_space")).and_then(Json::as_bool) {
            meta.set("tokenizer.ggml.add_space_prefix", Value::Bool(b));
        }
    }
    let vocab_size = src.config.get("vocab_size").and_then(Json::as_u64).map(|v| v as usize);
    if has_spm {
        let n = write_spm(src, tok_config.as_ref(), vocab_size, meta)?;
        SpecialVocab::load(src, &["bos", "eos", "unk", "sep", "pad", "cls", "mask"], false, Some(n))?.add_to(meta);
    } else if arch == Arch::Gemma {
        return Err(Error::MissingFile { dir: src.dir.to_path_buf(), step: "Gemma export", file: "tokenizer.model" });
    } else {
        write_bpe(src, vocab_size, meta)?;
        SpecialVocab::load(src, &["bos", "eos", "unk", "sep", "pad", "cls", "mask"], true, None)?.add_to(meta);
    }
    if arch == Arch::Gemma {
        let mut sv = SpecialVocab::load(src, &["prefix", "suffix", "middle", "fsep", "eot"], false, None)?;
        for (t, id) in [("prefix", 67), ("suffix", 69), ("middle", 68), ("fsep", 70), ("eot", 107)] {
            sv.set_id(t, id);
        }
        sv.chat_template = None;
        sv.add_to(meta);
        meta.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    }
    Ok(())
}

/// `tokenizer.model` pieces, added tokens and padding, as `_create_vocab_sentencepiece` builds them.
fn write_spm(
    src: &VocabSource,
    tok_config: Option<&Json>,
    vocab_size: Option<usize>,
    meta: &mut Metadata,
) -> Result<usize> {
    let path = src.dir.join("tokenizer.model");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let pieces = spm::pieces(&bytes).map_err(|problem| Error::BadTokenizer { path: path.clone(), problem })?;
    let n = vocab_size.unwrap_or(pieces.len());
    let mut tokens: Vec<Vec<u8>> = (0..n).map(|i| format!("[PAD{i}]").into_bytes()).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![UNUSED; n];
    for (i, p) in pieces.iter().enumerate().take(n) {
        tokens[i] = p.text.as_bytes().to_vec();
        scores[i] = p.score;
        // sentencepiece's own types; user-defined pieces count as normal, as the converter has it.
        types[i] = match p.kind {
            2 | 3 | 5 | 6 => p.kind,
            _ => NORMAL,
        };
    }
    if let Some(added) = read_json(&src.dir.join("added_tokens.json"))? {
        for (text, id) in added.as_object().into_iter().flatten() {
            if let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < n) {
                tokens[id] = text.as_bytes().to_vec();
                scores[id] = -1000.0;
                types[id] = USER_DEFINED;
            }
        }
    }
    for (id, data) in
        tok_config.and_then(|c| c.get("added_tokens_decoder")).and_then(Json::as_object).into_iter().flatten()
    {
        let (Ok(id), Some(content)) = (id.parse::<usize>(), data.get("content").and_then(Json::as_str)) else {
            continue;
        };
        if id >= n {
            continue;
        }
        let special = data.get("special").and_then(Json::as_bool).unwrap_or(false);
        let text = if special || looks_special(content) {
            types[id] = CONTROL;
            content.to_string()
        } else {
            types[id] = USER_DEFINED;
            content.replace('\u{2581}', " ")
        };
        scores[id] = -1000.0;
        tokens[id] = text.into_bytes();
    }
    meta.set("tokenizer.ggml.model", Value::str("llama"));
    meta.set("tokenizer.ggml.pre", Value::str("default"));
    meta.set("tokenizer.ggml.tokens", Value::StrArray(tokens));
    meta.set("tokenizer.ggml.scores", Value::F32Array(scores));
    meta.set("tokenizer.ggml.token_type", Value::I32Array(types));
    Ok(n)
}

/// Token texts llama.cpp treats as end-of-generation by themselves (llama-vocab.cpp's list).
pub const LLAMA_CPP_EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// Makes llama.cpp stop on every id in `stop_ids` (chatvec's stop set): llama.cpp ends generation
/// on eos, eot, eom and on tokens whose text is in its list; a stop id it would miss becomes
/// `eot_token_id` (then `eom_token_id`). The converter writes neither, so this changes the bytes
/// only for a model whose end-of-turn token llama.cpp does not know. Returns the ids it added.
pub fn ensure_stop_ids(meta: &mut Metadata, stop_ids: &[u32]) -> Vec<u32> {
    let id_of = |meta: &Metadata, k: &str| match meta.get(k) {
        Some(Value::U32(id)) => Some(*id),
        _ => None,
    };
    let mut added = vec![];
    for &id in stop_ids {
        let text = match meta.get("tokenizer.ggml.tokens") {
            Some(Value::StrArray(t)) => t.get(id as usize).cloned(),
            _ => None,
        };
        let Some(text) = text else { continue };
        let keys = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"];
        let known = keys.iter().any(|k| id_of(meta, k) == Some(id))
            || LLAMA_CPP_EOG_TEXTS.iter().any(|t| t.as_bytes() == text.as_slice());
        if known {
            continue;
        }
        if let Some(free) = keys[1..].iter().find(|k| id_of(meta, k).is_none()) {
            meta.set(free, Value::U32(id));
            added.push(id);
        }
    }
    added
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Byte-level BPE tokens from `tokenizer.json`, as `get_vocab_base` lists them.
fn write_bpe(src: &VocabSource, vocab_size: Option<usize>, meta: &mut Metadata) -> Result<()> {
    let path = src.dir.join("tokenizer.json");
    let json = read_json(&path)?.ok_or_else(|| Error::MissingFile {
        dir: src.dir.to_path_buf(),
        step: "GGUF export",
        file: "tokenizer.json or tokenizer.model",
    })?;
    let bad = |problem: String| Error::BadTokenizer { path: path.clone(), problem };
    let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| bad(format!("cannot load: {e}")))?;
    let pre = pretok::pre_tokenizer(&tokenizer, &json).map_err(bad)?;
    let vocab = tokenizer.get_vocab(true);
    let n = vocab_size.unwrap_or(vocab.len());
    let mut by_id: Vec<Option<&str>> = vec![None; n];
    for (text, &id) in &vocab {
        if let Some(slot) = by_id.get_mut(id as usize) {
            *slot = Some(text);
        } else {
            return Err(bad(format!("token {text:?} has id {id}, beyond vocab_size {n}")));
        }
    }
    let added: std::collections::HashMap<u32, &Json> = json
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t.get("id")?.as_u64()? as u32, t)))
        .collect();
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for (i, text) in by_id.iter().enumerate() {
        let Some(text) = text else {
            tokens.push(format!("[PAD{i}]").into_bytes());
            types.push(UNUSED);
            continue;
        };
        match added.get(&(i as u32)) {
            Some(a) if a.get("special").and_then(Json::as_bool).unwrap_or(false) || looks_special(text) => {
                tokens.push(text.as_bytes().to_vec());
                types.push(CONTROL);
            }
            Some(_) => {
                tokens.push(text.replace('\u{2581}', " ").into_bytes());
                types.push(USER_DEFINED);
            }
            None => {
                tokens.push(text.as_bytes().to_vec());
                types.push(NORMAL);
            }
        }
    }
    meta.set("tokenizer.ggml.model", Value::str("gpt2"));
    meta.set("tokenizer.ggml.pre", Value::str(&pre));
    meta.set("tokenizer.ggml.tokens", Value::StrArray(tokens));
    meta.set("tokenizer.ggml.token_type", Value::I32Array(types));
    Ok(())
}

/// The fixed text whose tokenization identifies a BPE pre-tokenizer (`get_vocab_base_pre`'s chktxt).
pub const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// The converter's chkhsh: SHA-256 of Python's `str()` of the token ids of [`CHKTXT`].
pub fn chkhsh(ids: &[u32]) -> String {
    let list = format!("[{}]", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
    Sha256::digest(list.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// gguf-py's `SpecialVocab`: what it reads from tokenizer.json, tokenizer_config.json and
/// config.json, in the order it will write it.
struct SpecialVocab {
    types: Vec<String>,
    n_vocab: Option<usize>,
    merges: Vec<Vec<u8>>,
    ids: Vec<(String, u32)>,
    add: Vec<(String, bool)>,
    chat_template: Option<Json>,
}

impl SpecialVocab {
    fn load(src: &VocabSource, types: &[&str], load_merges: bool, n_vocab: Option<usize>) -> Result<Self> {
        let mut sv = SpecialVocab {
            types: types.iter().map(|s| s.to_string()).collect(),
            n_vocab,
            merges: vec![],
            ids: vec![],
            add: vec![],
            chat_template: None,
        };
        let tokenizer = read_json(&src.dir.join("tokenizer.json"))?;
        let mut tok_config = read_json(&src.dir.join("tokenizer_config.json"))?;
        if let Some(t) = &tokenizer {
            if load_merges {
                sv.merges = merges(t);
            }
            if let (Some(pp), Some(tc)) = (t.get("post_processor"), tok_config.as_mut()) {
                sv.read_post_processor(pp, tc);
            }
        }
        if let Some(tc) = &tok_config {
            sv.read_tokenizer_config(src, tc, tokenizer.as_ref());
        }
        for typ in sv.types.clone() {
            let key = format!("{typ}_token_id");
            let id = chatvec_format::config::lookup(src.config, &key);
            if let Some(id) = id.and_then(Json::as_u64) {
                sv.set_id(&typ, id as u32);
            }
        }
        Ok(sv)
    }

    fn set_id(&mut self, typ: &str, id: u32) {
        if self.n_vocab.is_none_or(|n| (id as usize) < n) && !self.ids.iter().any(|(t, _)| t == typ) {
            self.ids.push((typ.to_string(), id));
        }
    }

    fn set_add(&mut self, typ: &str, v: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(e) => e.1 = v,
            None => self.add.push((typ.to_string(), v)),
        }
    }

    /// The TemplateProcessing part of `_try_load_from_tokenizer_json`: whether bos/eos/sep are added.
    fn read_post_processor(&mut self, pp: &Json, tc: &mut Json) {
        let processors: Vec<&Json> = match pp.get("processors").and_then(Json::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![pp],
        };
        let get = |k: &str, tc: &Json| tc.get(k).and_then(token_content);
        for p in processors {
            if p.get("type").and_then(Json::as_str) != Some("TemplateProcessing") {
                continue;
            }
            let special_id = |x: &Json| x.get("SpecialToken")?.get("id")?.as_str().map(str::to_string);
            let single = p.get("single").and_then(Json::as_array).cloned().unwrap_or_default();
            let (mut first, mut last) = (None, None);
            if single.len() > 1 {
                first = special_id(&single[0]);
                if let Some(f) = &first {
                    let (bos, cls) = (get("bos_token", tc), get("cls_token", tc));
                    self.set_add("bos", Some(f) == bos.as_ref() || Some(f) == cls.as_ref());
                }
                last = special_id(&single[single.len() - 1]);
                if let Some(l) = &last {
                    // (the converter's eot/eom rewrite for a trailing token other than eos is not needed by
                    // the supported architectures; a plain comparison decides add_eos)
                    self.set_add("eos", Some(l) == get("eos_token", tc).as_ref());
                }
            }
            let pair = p.get("pair").and_then(Json::as_array).cloned().unwrap_or_default();
            if pair.is_empty() {
                continue;
            }
            let start = usize::from(first.is_some() && special_id(&pair[0]) == first);
            let stop =
                if last.is_some() && special_id(&pair[pair.len() - 1]) == last { pair.len() - 1 } else { pair.len() };
            let inner = &pair[start..stop.max(start)];
            let seq = |x: &Json| x.get("Sequence")?.get("id")?.as_str().map(str::to_string);
            if inner.len() < 2
                || seq(&inner[0]).as_deref() != Some("A")
                || seq(&inner[inner.len() - 1]).as_deref() != Some("B")
            {
                continue;
            }
            let middle = &inner[1..inner.len() - 1];
            if middle.is_empty() {
                continue;
            }
            let (sep, eos) = (get("sep_token", tc), get("eos_token", tc));
            let is_sep_or_eos = |s: &Option<String>| s.is_some() && (*s == sep || *s == eos);
            let mut add_sep = false;
            let e0 = special_id(&middle[0]);
            if is_sep_or_eos(&e0) && last.is_none() {
                add_sep = true;
            }
            if middle.len() == 2 && is_sep_or_eos(&special_id(&middle[1])) {
                add_sep = true;
            }
            self.set_add("sep", add_sep);
        }
    }

    fn read_tokenizer_config(&mut self, src: &VocabSource, tc: &Json, tokenizer: Option<&Json>) {
        let template = tc.get("chat_template").filter(|t| !t.is_null()).cloned().or_else(|| {
            let jinja = src.dir.join("chat_template.jinja");
            let json = src.dir.join("chat_template.json");
            std::fs::read_to_string(jinja)
                .ok()
                .map(Json::String)
                .or_else(|| read_json(&json).ok().flatten()?.get("chat_template").cloned())
        });
        self.chat_template =
            template.filter(|t| t.is_string() || t.is_array()).or_else(|| src.fallback_template.clone());
        let added: Vec<&Json> =
            tokenizer.and_then(|t| t.get("added_tokens")).and_then(Json::as_array).into_iter().flatten().collect();
        for typ in self.types.clone() {
            if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(Json::as_bool) {
                self.set_add(&typ, b);
            }
            let Some(content) = tc.get(format!("{typ}_token")).and_then(token_content) else { continue };
            let id = added.iter().find(|a| a.get("content").and_then(Json::as_str) == Some(&content));
            if let Some(id) = id.and_then(|a| a.get("id")).and_then(Json::as_u64) {
                self.set_id(&typ, id as u32);
            }
        }
    }

    fn add_to(&self, meta: &mut Metadata) {
        if !self.merges.is_empty() {
            meta.set("tokenizer.ggml.merges", Value::StrArray(self.merges.clone()));
        }
        for (typ, id) in &self.ids {
            let key = match typ.as_str() {
                "bos" => "bos_token_id",
                "eos" => "eos_token_id",
                "unk" => "unknown_token_id",
                "sep" => "seperator_token_id",
                "pad" => "padding_token_id",
                "mask" => "mask_token_id",
                "eot" => "eot_token_id",
                "eom" => "eom_token_id",
                _ => continue, // gguf-py has no writer for cls/prefix/suffix/middle/fsep
            };
            meta.set(&format!("tokenizer.ggml.{key}"), Value::U32(*id));
        }
        for (typ, v) in &self.add {
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                meta.set(&format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(*v));
            }
        }
        match &self.chat_template {
            Some(Json::String(t)) => meta.set("tokenizer.chat_template", Value::str(t)),
            Some(Json::Array(list)) => write_named_templates(list, meta),
            _ => {}
        }
    }
}

/// A named template list: `tokenizer.chat_template.NAME` for each, the default as `tokenizer.chat_template`.
fn write_named_templates(list: &[Json], meta: &mut Metadata) {
    let mut names = vec![];
    let mut default = None;
    for choice in list {
        let name: String = choice
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(t) = choice.get("template").and_then(Json::as_str) else { continue };
        if name == "default" {
            default = Some(t);
        } else if !name.is_empty() {
            meta.set(&format!("tokenizer.chat_template.{name}"), Value::str(t));
            names.push(name.into_bytes());
        }
    }
    if !names.is_empty() {
        meta.set("tokenizer.chat_templates", Value::StrArray(names));
    }
    if let Some(t) = default {
        meta.set("tokenizer.chat_template", Value::str(t));
    }
}

/// A special token given as a string or as `{"content": ...}`.
fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// BPE merges as `"a b"` strings; a space inside a part (transformers ≥ 4.45's pair format) is
/// written as U+0120, as gguf-py does.
fn merges(tokenizer: &Json) -> Vec<Vec<u8>> {
    let Some(list) = tokenizer.get("model").and_then(|m| m.get("merges")).and_then(Json::as_array) else {
        return vec![];
    };
    list.iter()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone().into_bytes()),
            Json::Array(pair) => {
                let parts: Vec<String> =
                    pair.iter().filter_map(Json::as_str).map(|p| p.replace(' ', "\u{120}")).collect();
                Some(parts.join(" ").into_bytes())
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chkhsh_hashes_the_python_list_spelling() {
        assert_eq!(chkhsh(&[1, 2, 3]), "a36b1f2c3f84522dd1005145646617d7054c0851e97c72a039c0bdfac9fa07f3");
    }

    #[test]
    fn a_stop_token_llama_cpp_would_miss_becomes_eot() {
        let mut meta = Metadata::default();
        let tokens = ["a", "</s>", "<|im_end|>", "<|my_turn_end|>"].iter().map(|t| t.as_bytes().to_vec()).collect();
        meta.set("tokenizer.ggml.tokens", Value::StrArray(tokens));
        meta.set("tokenizer.ggml.eos_token_id", Value::U32(1));
        assert_eq!(ensure_stop_ids(&mut meta, &[1, 2]), Vec::<u32>::new());
        assert!(meta.get("tokenizer.ggml.eot_token_id").is_none());
        assert_eq!(ensure_stop_ids(&mut meta, &[1, 2, 3]), vec![3]);
        assert_eq!(meta.get("tokenizer.ggml.eot_token_id"), Some(&Value::U32(3)));
    }

    #[test]
    fn gpt2_merges_encode_spaces_inside_a_part() {
        let t = serde_json::json!({"model": {"merges": [["a", "b c"], ["x", "y"]]}});
        assert_eq!(merges(&t), vec!["a b\u{120}c".as_bytes().to_vec(), b"x y".to_vec()]);
    }
}
