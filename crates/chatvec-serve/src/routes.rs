//! The HTTP surface: the router, the API-key check, the request body (size limit, JSON), the
//! small endpoints (`/v1/models`, `/tokenize`, `/health`, the page) and the SSE framing both completion
//! endpoints share.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};

use crate::answers::{Answers, Delta};
use crate::error::ApiError;
use crate::model::ServedModel;
use crate::request;

/// What every handler sees.
pub struct AppState {
    /// The served models, in the order given.
    pub models: Vec<Arc<ServedModel>>,
    /// `Authorization: Bearer KEY` required on `/v1/*` when set.
    pub api_key: Option<String>,
    /// The page at `/`, with its prompts filled in.
    pub page: String,
}

impl AppState {
    /// The model named `name`; 404 naming the served ones otherwise.
    pub fn model(&self, name: &str) -> Result<Arc<ServedModel>, ApiError> {
        self.models.iter().find(|m| m.name == name).cloned().ok_or_else(|| {
            let served: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            let mut e = ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("The model {name:?} does not exist; served: {}", served.join(", ")),
            );
            e.param = Some("model".into());
            e
        })
    }
}

/// The router over `state`, refusing bodies over `max_body_bytes` with 413.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/tokenize", post(tokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(page))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else { return next.run(request).await };
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(k) if k == key => next.run(request).await,
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "missing or wrong API key (Authorization: Bearer KEY)",
        )
        .into_response(),
    }
}

/// The body as a parsed request and the model it names: 413 past the size limit, 400 for
/// malformed JSON, 404 for an unknown model.
fn read_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Arc<ServedModel>, request::Body), ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "request_too_large" } else { "bad_body" };
        ApiError::new(status, code, rejection.body_text())
    })?;
    let body = request::parse(&bytes)?;
    let model = state.model(body.model()?)?;
    Ok((model, body))
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = match read_body(&state, body) {
        Ok((model, body)) => crate::chat::handle(model, body).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = match read_body(&state, body) {
        Ok((model, body)) => crate::completions::handle(model, body).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /tokenize` as vLLM answers it (`{"model", "prompt", "add_special_tokens"}` →
/// `{"count", "max_model_len", "tokens"}`): clients that score text in windows of token ids
/// (`chatvec report --endpoint`) tokenize with the served model's own tokenizer.
async fn tokenize(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = read_body(&state, body).and_then(|(model, body)| {
        let Some(Value::String(text)) = &body.prompt else {
            return Err(ApiError::bad_param("prompt", "prompt must be a string"));
        };
        let ids = model
            .tokenizer
            .encode(text, body.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::bad_param("prompt", e.to_string()))?;
        Ok(Reply::json(json!({"count": ids.len(), "max_model_len": model.context, "tokens": ids})))
    });
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            json!({"id": m.name, "object": "model", "created": m.created, "owned_by": "chatvec",
                   "max_model_len": m.context, "chat_template": m.template.is_ok()})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn page(State(state): State<Arc<AppState>>) -> Html<String> {
    Html(state.page.clone())
}

/// Identity of one response: its id, creation time and model name.
pub struct Meta {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Served name.
    pub model: String,
}

impl Meta {
    /// A fresh id with `prefix`.
    pub fn new(prefix: &str, model: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Meta { id: format!("{prefix}-{created:x}{n:08x}"), created, model: model.to_string() }
    }
}

/// Plain JSON answers.
pub struct Reply;

impl Reply {
    /// 200 with `body`.
    pub fn json(body: Value) -> Response {
        Json(body).into_response()
    }
}

/// Streams `answers` as server-sent events: `opening` first, then what `events` makes of each
/// delta (and of the end, `None`), then `data: [DONE]`. A failure mid-stream is sent as an
/// `{"error": ...}` event. Dropping the stream (the client left) drops `answers`, which cancels
/// its sequences.
pub fn into_sse<F>(answers: Answers, opening: Vec<Value>, events: F) -> Response
where
    F: Fn(Option<&Delta>, &Answers) -> Vec<Value> + Send + 'static,
{
    let head = stream::iter(opening.into_iter().map(|v| Some(v.to_string())));
    let body = stream::unfold(Some((answers, events)), |state| async move {
        let (mut answers, events) = state?;
        let items: Vec<Option<String>> = match answers.next().await {
            Some(Ok(delta)) => events(Some(&delta), &answers).into_iter().map(|v| Some(v.to_string())).collect(),
            Some(Err(e)) => return Some((vec![Some(e.body().to_string()), None], None)),
            None => {
                let mut tail: Vec<Option<String>> =
                    events(None, &answers).into_iter().map(|v| Some(v.to_string())).collect();
                tail.push(None);
                return Some((tail, None));
            }
        };
        Some((items, Some((answers, events))))
    })
    .flat_map(stream::iter);
    let framed =
        head.chain(body).map(|item| Ok::<_, Infallible>(Event::default().data(item.as_deref().unwrap_or("[DONE]"))));
    sse(framed)
}

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(s: S) -> Response {
    Sse::new(s).into_response()
}
