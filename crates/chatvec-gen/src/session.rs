//! A model loaded with everything needed to answer in its chat format: weights, tokenizer, chat
//! template and stop ids. `generate`/`chat` and the evaluations all load models through it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{GenError, Result};
use crate::generate::{generate, GenerationConfig, GenerationOutput, StopReason};
use crate::models::{Model, ModelOptions};
use crate::stops::StopSet;
use crate::template::ChatTemplate;
use crate::tokenizer::{ModelTokenizer, TokenizerConfig};

/// How to load a [`ChatModel`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where to compute, in which dtype, with weights in which format.
    pub model: ModelOptions,
    /// A Jinja file to use as the chat template instead of the model's.
    pub chat_template: Option<PathBuf>,
    /// Extra stop tokens (token strings).
    pub stop: Vec<String>,
    /// Refuse a model without a chat template before reading its weights.
    pub require_template: bool,
}

impl Default for LoadOptions {
    /// Dense float32 on CPU: the exact path.
    fn default() -> Self {
        LoadOptions {
            model: ModelOptions::dense(&Device::Cpu, DType::F32),
            chat_template: None,
            stop: Vec::new(),
            require_template: false,
        }
    }
}

/// A loaded model with its tokenizer, chat template and stop ids.
pub struct ChatModel {
    /// The directory the tokenizer, template and generation config come from.
    pub dir: PathBuf,
    /// The network.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: ModelTokenizer,
    /// Its chat template, if it has one (a continually pre-trained target often has none).
    pub template: Option<ChatTemplate>,
    /// Where the template came from, for reports.
    pub template_from: Option<String>,
    /// Ids that end an answer.
    pub stops: StopSet,
    /// Why there is no template (the message [`ChatModel::chat_template`] returns).
    no_template: Option<String>,
}

impl ChatModel {
    /// Loads the model in `dir`; see [`ChatModel::load_from`].
    pub fn load(dir: &Path, opts: &LoadOptions, template_fallback: Option<&Path>) -> Result<Self> {
        Self::load_from(dir, dir, opts, template_fallback)
    }

    /// Loads the weights at `weights` (a model directory or a GGUF file) with the tokenizer,
    /// template and stop ids of `dir`. The cheap parts come first, so mistakes fail before the
    /// weights are read. Without a template of its own (and no `chat_template` option), the
    /// template of `template_fallback` is used, compiled with this model's special tokens: a CP
    /// target is judged with the chat format its merge will have.
    pub fn load_from(weights: &Path, dir: &Path, opts: &LoadOptions, template_fallback: Option<&Path>) -> Result<Self> {
        let tokenizer = ModelTokenizer::load(dir)?;
        let stops = StopSet::for_model(dir, &tokenizer, &opts.stop)?;
        let found = find_template(dir, tokenizer.config(), opts, template_fallback)?;
        if let (Err(why), true) = (&found, opts.require_template) {
            return Err(GenError::NoChatTemplate(why.clone()));
        }
        let model = Model::load_with(weights, &opts.model)?;
        let (template, template_from, no_template) = match found {
            Ok((t, from)) => (Some(t), Some(from), None),
            Err(why) => (None, None, Some(why)),
        };
        Ok(ChatModel { dir: dir.to_path_buf(), model, tokenizer, template, template_from, stops, no_template })
    }

    /// Loads a GGUF file with the tokenizer, special tokens, chat template and stop ids its
    /// metadata carries (no Hugging Face files needed).
    pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let index =
            chatvec_gguf::read::GgufIndex::open(path).map_err(|e| GenError::bad_file(path, e.problem.to_string()))?;
        let parts = crate::gguf_tokenizer::from_gguf(&index)?;
        drop(index);
        let template_text = parts.config.get("chat_template").and_then(|t| t.as_str()).map(str::to_string);
        let tokenizer = ModelTokenizer::from_parts(parts.tokenizer, TokenizerConfig::from_value(parts.config));
        let mut stops = StopSet::new();
        for (id, text) in parts.stops {
            stops.insert(id, text);
        }
        for token in &opts.stop {
            let id = tokenizer.token_to_id(token).ok_or_else(|| {
                GenError::InvalidArgument(format!("--stop {token}: not a single token of this tokenizer"))
            })?;
            stops.insert(id, token.clone());
        }
        let template = match (&opts.chat_template, template_text) {
            (Some(file), _) => Some((ChatTemplate::from_file(file, tokenizer.config())?, file.display().to_string())),
            (None, Some(text)) => {
                let source = crate::template::TemplateSource::File(path.to_path_buf());
                Some((ChatTemplate::compile(text, tokenizer.config(), source)?, "the model".to_string()))
            }
            (None, None) => None,
        };
        let why = format!("{}: no tokenizer.chat_template in its metadata; pass --chat-template FILE", path.display());
        if template.is_none() && opts.require_template {
            return Err(GenError::NoChatTemplate(why));
        }
        let model = Model::load_with(path, &opts.model)?;
        let (template, template_from) = template.map_or((None, None), |(t, f)| (Some(t), Some(f)));
        let no_template = template.is_none().then_some(why);
        Ok(ChatModel { dir: path.to_path_buf(), model, tokenizer, template, template_from, stops, no_template })
    }

    /// The chat template, or an error saying the model has none and what to do.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().ok_or_else(|| GenError::NoChatTemplate(self.no_template.clone().unwrap_or_default()))
    }

    /// Tokenizes `text` as a document (with BOS when the tokenizer adds one).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    /// Generates an answer to `prompt` ids; `on_text` receives the text as it is made and may
    /// stop generation. Returns the result and the answer's text.
    pub fn answer<E: From<GenError>>(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        mut on_text: impl FnMut(&str) -> std::result::Result<ControlFlow<()>, E>,
    ) -> std::result::Result<(GenerationOutput, String), E> {
        let mut stream = self.tokenizer.stream();
        let mut text = String::new();
        let result = generate::<E, _>(&mut self.model, prompt, config, &self.stops, |id| {
            let mut flow = ControlFlow::Continue(());
            if let Some(chunk) = stream.step(id)? {
                flow = on_text(&chunk)?;
                text.push_str(&chunk);
            }
            Ok(flow)
        })?;
        if let Some(rest) = stream.finish()? {
            let _ = on_text(&rest)?;
            text.push_str(&rest);
        }
        Ok((result, text))
    }

    /// Human description of why generation ended.
    pub fn describe_stop(&self, stop: StopReason, max_new_tokens: usize) -> String {
        match stop {
            StopReason::StopToken { id } => self.stops.describe(id),
            StopReason::Length => format!("length limit ({max_new_tokens})"),
            StopReason::Cancelled => "interrupted".to_string(),
            StopReason::Context => format!("context full ({} positions)", self.model.config().max_position_embeddings),
        }
    }
}

/// The template and where it came from, or why there is none.
fn find_template(
    dir: &Path,
    tok: &TokenizerConfig,
    opts: &LoadOptions,
    fallback: Option<&Path>,
) -> Result<std::result::Result<(ChatTemplate, String), String>> {
    if let Some(file) = &opts.chat_template {
        return Ok(Ok((ChatTemplate::from_file(file, tok)?, file.display().to_string())));
    }
    let why = match ChatTemplate::for_model(dir, tok, None) {
        Ok(t) => return Ok(Ok((t, "the model".into()))),
        Err(GenError::NoChatTemplate(why)) => why,
        Err(e) => return Err(e),
    };
    if let Some(other) = fallback {
        if let Some(t) = ChatTemplate::stored(other, tok)? {
            return Ok(Ok((t, format!("{} (the model has none)", other.display()))));
        }
    }
    Ok(Err(why))
}
