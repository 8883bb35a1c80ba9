//! Which token ids end an answer.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{GenError, Result};
use crate::tokenizer::ModelTokenizer;

/// End-of-turn tokens of common chat formats; included whenever the vocabulary has them, so a
/// merged model whose configs came from a base-derived target (eos = `<|end_of_text|>` only)
/// still stops at the end of its turn.
pub const END_OF_TURN_TOKENS: [&str; 7] =
    ["<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<|end_of_turn|>", "<|end|>", "<|endoftext|>"];

/// The set of stop ids, each with the reason it is in the set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopSet {
    ids: BTreeMap<u32, String>,
}

impl StopSet {
    /// An empty set (generation runs to the length limit).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an id with a label used in reports (its token text).
    pub fn insert(&mut self, id: u32, label: impl Into<String>) {
        self.ids.entry(id).or_insert_with(|| label.into());
    }

    /// Whether `id` ends generation.
    pub fn contains(&self, id: u32) -> bool {
        self.ids.contains_key(&id)
    }

    /// The ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.ids.keys().copied().collect()
    }

    /// `<|eot_id|> (2004)` style description of a stop id.
    pub fn describe(&self, id: u32) -> String {
        match self.ids.get(&id) {
            Some(label) if !label.is_empty() => format!("{label} ({id})"),
            _ => id.to_string(),
        }
    }

    /// The union transformers users rely on: `generation_config.json` `eos_token_id` ∪
    /// config.json `eos_token_id` ∪ the tokenizer's `eos_token` ∪ end-of-turn tokens in the
    /// vocabulary ∪ `extra` (token strings, e.g. from `--stop`).
    pub fn for_model(dir: &Path, tokenizer: &ModelTokenizer, extra: &[String]) -> Result<Self> {
        let mut set = StopSet::new();
        let label = |id: u32| tokenizer.id_to_token(id).unwrap_or_default();
        for id in declared_eos_ids(dir)? {
            set.insert(id, label(id));
        }
        if let Some(eos) = tokenizer.config().token("eos_token") {
            if let Some(id) = tokenizer.token_to_id(&eos) {
                set.insert(id, eos);
            }
        }
        for token in END_OF_TURN_TOKENS {
            if let Some(id) = tokenizer.token_to_id(token) {
                set.insert(id, token);
            }
        }
        for token in extra {
            let id = tokenizer.token_to_id(token).ok_or_else(|| {
                GenError::InvalidArgument(format!("--stop {token}: not a single token of this tokenizer"))
            })?;
            set.insert(id, token.clone());
        }
        Ok(set)
    }
}

/// The eos ids `dir` declares (`generation_config.json`, then `config.json`), read by
/// chatvec-format as `merge` reads them; none for a directory without config (a GGUF's).
fn declared_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let config = match dir.join("config.json").is_file() {
        true => chatvec_format::ModelConfig::load(dir),
        false => Ok(chatvec_format::ModelConfig::default()),
    };
    config
        .and_then(|config| chatvec_format::modelfiles::eos_ids(dir, &config))
        .map_err(|e| GenError::NotAModel(e.to_string()))
}
