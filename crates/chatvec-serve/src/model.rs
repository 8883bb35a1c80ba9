//! A served model: what the HTTP layer needs to turn a request into token ids and tokens back
//! into text, and the handle of its engine thread.

use chatvec_gen::{ChatModel, ChatTemplate, GenerationDefaults, ModelTokenizer, StopSet};

use crate::batch::Batch;
use crate::engine::EngineHandle;
use crate::error::ServeError;

/// How many sequences an engine runs and queues.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Sequences decoded together.
    pub max_seqs: usize,
    /// Sequences that may wait for a place; past that, requests get 429.
    pub queue: usize,
}

/// One model under its served name.
pub struct ServedModel {
    /// The name clients pass as `model`.
    pub name: String,
    /// Its tokenizer. Leaked: it lives as long as the server, and answers decode their text
    /// with a `TextStream` borrowing it from tasks that must own what they hold.
    pub tokenizer: &'static ModelTokenizer,
    /// Its chat template, or why it has none.
    pub template: Result<ChatTemplate, String>,
    /// Ids that end an answer.
    pub stops: StopSet,
    /// Sampling defaults from its `generation_config.json`.
    pub defaults: GenerationDefaults,
    /// Positions in its context.
    pub context: usize,
    /// Rows of its embedding (valid token ids are below).
    pub vocab: usize,
    /// Its engine.
    pub engine: EngineHandle,
    /// When it was loaded (unix seconds), for `/v1/models`.
    pub created: u64,
}

impl ServedModel {
    /// Starts the engine of `chat` and keeps what requests need.
    pub fn start(
        name: String,
        chat: ChatModel,
        defaults: GenerationDefaults,
        opts: EngineOptions,
    ) -> Result<Self, ServeError> {
        let template = chat.chat_template().map(|_| ()).map_err(|e| e.to_string());
        let ChatModel { model, tokenizer, template: stored, stops, .. } = chat;
        let template = template.and_then(|()| stored.ok_or_else(String::new));
        let context = model.config().max_position_embeddings;
        let vocab = model.config().vocab_size;
        let engine = EngineHandle::start(&name, Batch::new(model, opts.max_seqs), opts.max_seqs, opts.queue)
            .map_err(|source| ServeError::Io { what: format!("cannot start the engine of {name}"), source })?;
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        Ok(ServedModel {
            name,
            tokenizer: Box::leak(Box::new(tokenizer)),
            template,
            stops,
            defaults,
            context,
            vocab,
            engine,
            created,
        })
    }

    /// 400 when `prompt` plus `max_tokens` does not fit the context, naming both numbers.
    pub fn check_fits(&self, prompt: usize, max_tokens: usize, what: &str) -> Result<(), crate::error::ApiError> {
        if prompt + max_tokens <= self.context {
            return Ok(());
        }
        let mut e = crate::error::ApiError::bad_request(format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens ({prompt} in the \
             {what}, {max_tokens} in the completion). Please reduce the length of the {what} or completion.",
            self.context,
            prompt + max_tokens
        ));
        e.code = Some("context_length_exceeded");
        Err(e)
    }
}
