//! The model's tokenizer (`tokenizer.json`), the special tokens of its `tokenizer_config.json`,
//! and incremental decoding for streaming.

use std::path::Path;

use serde_json::Value;
use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer,
};

use crate::error::{GenError, Result};

/// The special tokens of `tokenizer_config.json` (and `special_tokens_map.json`), both optional.
/// The chat template and the stop ids are read by chatvec-format (`modelfiles`).
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    config: Value,
    special_map: Value,
}

/// The special-token names transformers passes to chat templates.
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"];

impl TokenizerConfig {
    /// Reads the files in `dir`; missing files leave the config empty.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Value> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(Value::Null);
            }
            let text = chatvec_format::metadata::read_metadata(&path)?;
            serde_json::from_str(&text).map_err(|e| GenError::bad_file(&path, e.to_string()))
        };
        Ok(TokenizerConfig { config: read("tokenizer_config.json")?, special_map: read("special_tokens_map.json")? })
    }

    /// A config held in memory (a GGUF file's), shaped as `tokenizer_config.json`.
    pub fn from_value(config: Value) -> Self {
        TokenizerConfig { config, special_map: Value::Null }
    }

    /// A special token such as `eos_token`, written as a string or an `{"content": ...}` object.
    pub fn token(&self, key: &str) -> Option<String> {
        let as_text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        self.config.get(key).and_then(as_text).or_else(|| self.special_map.get(key).and_then(as_text))
    }

    /// `(name, token)` pairs for the special tokens that are set.
    pub fn special_tokens(&self) -> Vec<(String, String)> {
        SPECIAL_TOKEN_KEYS.iter().filter_map(|k| self.token(k).map(|t| (k.to_string(), t))).collect()
    }
}

/// The tokenizer of a model directory.
pub struct ModelTokenizer {
    inner: Tokenizer,
    config: TokenizerConfig,
}

type DecodeStreamImpl<'a> = tokenizers::DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

impl ModelTokenizer {
    /// Loads `dir/tokenizer.json` and the optional configs beside it.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(GenError::NotAModel(format!("{}: no tokenizer.json", dir.display())));
        }
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| GenError::bad_file(&path, format!("cannot load tokenizer: {e}")))?;
        Ok(ModelTokenizer { inner, config: TokenizerConfig::load(dir)? })
    }

    /// A tokenizer built elsewhere (from a GGUF file's metadata) with its configuration.
    pub fn from_parts(inner: Tokenizer, config: TokenizerConfig) -> Self {
        ModelTokenizer { inner, config }
    }

    /// The tokenizer configuration (special tokens).
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `text`. Chat prompts are encoded with `add_special_tokens = false`, as
    /// transformers does, because the template already wrote the BOS token.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| GenError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| GenError::Tokenizer(e.to_string()))
    }

    /// Id of a token written exactly as in the vocabulary (e.g. `<|eot_id|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary entry of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// An incremental decoder that yields text as soon as it is complete UTF-8, skipping
    /// special tokens.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tokenizer: &self.inner,
            inner: Some(self.inner.decode_stream(true)),
            ids: Vec::new(),
            text: String::new(),
        }
    }
}

/// Incremental detokenisation with the tokenizers crate's `DecodeStream`: it emits a chunk as
/// soon as the bytes so far decode to whole characters, so Hangul (three bytes, often split
/// over byte-level tokens) streams syllable by syllable instead of waiting for ASCII.
///
/// `DecodeStream` holds back bytes that do not yet form a character and has no way to flush
/// them, so the stream keeps the ids and the text given out, and [`TextStream::finish`] decodes
/// the whole answer once to give out what was held back.
///
/// With byte-fallback tokenizers (SentencePiece: Mistral, Gemma) a stray continuation byte turns
/// text already given out into U+FFFD, and `DecodeStream` fails ("Invalid prefix"). The stream
/// then decodes the whole answer at each step instead and gives out what extends the text so far.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    /// `None` once `DecodeStream` failed: whole-answer decoding from then on.
    inner: Option<DecodeStreamImpl<'a>>,
    ids: Vec<u32>,
    text: String,
}

impl TextStream<'_> {
    /// Adds one token; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let chunk = match self.inner.as_mut().map(|s| s.step(id)) {
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) | None => {
                self.inner = None;
                self.whole_answer_step()?
            }
        };
        if let Some(c) = &chunk {
            self.text.push_str(c);
        }
        Ok(chunk)
    }

    /// The new text when the whole answer is decoded, once it ends in a whole character.
    fn whole_answer_step(&self) -> Result<Option<String>> {
        let all = self.decode_all()?;
        if all.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        Ok(self.beyond_given(&all))
    }

    fn decode_all(&self) -> Result<String> {
        self.tokenizer.decode(&self.ids, true).map_err(|e| GenError::Tokenizer(e.to_string()))
    }

    /// The characters of `all` past as many as were given out. Given-out text can't be taken
    /// back: when a later byte turns an earlier character into U+FFFD, the stream keeps the
    /// character it printed and the count stays aligned.
    fn beyond_given(&self, all: &str) -> Option<String> {
        let rest: String = all.chars().skip(self.text.chars().count()).collect();
        (!rest.is_empty()).then_some(rest)
    }

    /// Ends the answer: the text still held back (an incomplete UTF-8 character shows as
    /// U+FFFD, as in transformers' `decode` of the same ids), if any.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let all = self.decode_all()?;
        let rest = self.beyond_given(&all);
        if let Some(r) = &rest {
            self.text.push_str(r);
        }
        Ok(rest)
    }
}
