//! A model loaded for evaluation: weights, tokenizer, chat template and stop ids.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use chatvec_gen::template::TemplateSource;
use chatvec_gen::{ChatTemplate, Model, ModelOptions, ModelTokenizer, StopSet, TokenizerConfig};

/// How to load models.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where to compute, in which dtype, with weights in which format.
    pub model: ModelOptions,
    /// A Jinja file to use as every model's chat template.
    pub chat_template: Option<PathBuf>,
}

impl Default for LoadOptions {
    /// Dense float32 on CPU: the precision the perplexity oracle uses.
    fn default() -> Self {
        LoadOptions { model: ModelOptions::dense(&Device::Cpu, DType::F32), chat_template: None }
    }
}

/// A loaded model.
pub struct EvalModel {
    /// Its directory.
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
}

impl EvalModel {
    /// Loads `dir`. Without a template of its own (and no `--chat-template`), the template of
    /// `template_fallback` is used, compiled with this model's special tokens: a CP target is
    /// judged with the chat format its merge will have.
    pub fn load(dir: &Path, opts: &LoadOptions, template_fallback: Option<&Path>) -> Result<EvalModel> {
        let tokenizer = ModelTokenizer::load(dir)?;
        let stops = StopSet::for_model(dir, &tokenizer, &[])?;
        let (template, template_from) = find_template(dir, tokenizer.config(), opts, template_fallback)?;
        let model = Model::load_with(dir, &opts.model).with_context(|| format!("{}: loading", dir.display()))?;
        Ok(EvalModel { dir: dir.to_path_buf(), model, tokenizer, template, template_from, stops })
    }

    /// Tokenizes `text` as a document (with BOS when the tokenizer adds one).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(text, true)?)
    }
}

fn find_template(
    dir: &Path,
    tok: &TokenizerConfig,
    opts: &LoadOptions,
    fallback: Option<&Path>,
) -> Result<(Option<ChatTemplate>, Option<String>)> {
    if let Some(file) = &opts.chat_template {
        return Ok((Some(ChatTemplate::from_file(file, tok)?), Some(file.display().to_string())));
    }
    if let Some(text) = template_text(dir)? {
        let t = ChatTemplate::compile(text, tok, TemplateSource::TokenizerConfig(dir.to_path_buf()))?;
        return Ok((Some(t), Some("the model".into())));
    }
    if let Some(other) = fallback {
        if let Some(text) = template_text(other)? {
            let t = ChatTemplate::compile(text, tok, TemplateSource::TokenizerConfig(other.to_path_buf()))?;
            return Ok((Some(t), Some(format!("{} (the model has none)", other.display()))));
        }
    }
    Ok((None, None))
}

/// The chat template text of the model in `dir`: `chat_template.jinja`, else `chat_template` in
/// `tokenizer_config.json`.
pub fn template_text(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(std::fs::read_to_string(&jinja).with_context(|| format!("{}: cannot read", jinja.display()))?));
    }
    Ok(TokenizerConfig::load(dir)?.chat_template()?)
}
