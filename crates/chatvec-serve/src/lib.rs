//! `chatvec serve`: models behind an OpenAI-compatible API, so the harnesses people already use
//! (the `openai` client, lm-evaluation-harness, LogicKor-style judges) can judge a merge, and a
//! page at `/` that streams two or three models' answers side by side.
//!
//! Each model gets an engine thread ([`engine`]) running a decode loop ([`batch`]); requests
//! reach it over a bounded queue and get their tokens back over a channel of their own. The
//! HTTP layer ([`routes`], [`chat`], [`completions`]) parses and checks each request before it
//! queues anything, and answers errors as OpenAI does ([`error`]).

#![deny(missing_docs)]

pub mod answers;
pub mod batch;
pub mod chat;
pub mod completions;
pub mod engine;
pub mod error;
pub mod model;
pub mod request;
pub mod routes;
pub mod text;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use error::{ApiError, ServeError};
pub use model::{EngineOptions, ServedModel};

/// The page at `/`: self-contained HTML and JS (no CDN); `/*PROMPTS*/[]` is replaced by the
/// bundled prompts.
const PAGE: &str = include_str!("page.html");

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Batch and queue sizes of each engine.
    pub engine: EngineOptions,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Required as `Authorization: Bearer KEY` on `/v1/*` when set.
    pub api_key: Option<String>,
    /// After a shutdown signal, how long in-flight requests may run before they are cancelled.
    pub grace: Duration,
    /// Prompts the page offers.
    pub page_prompts: Vec<String>,
}

/// The application over `models`, ready to serve.
pub fn app(models: Vec<ServedModel>, opts: &ServeOptions) -> Result<axum::Router, ServeError> {
    if models.is_empty() {
        return Err(ServeError::NoModels);
    }
    for (i, m) in models.iter().enumerate() {
        if models[..i].iter().any(|o| o.name == m.name) {
            return Err(ServeError::DuplicateName(m.name.clone()));
        }
    }
    let state = routes::AppState {
        models: models.into_iter().map(Arc::new).collect(),
        api_key: opts.api_key.clone(),
        page: page_with_prompts(&opts.page_prompts),
    };
    Ok(routes::router(Arc::new(state), opts.max_body_bytes))
}

/// The page with `prompts` written into it as a JSON list (`</` escaped, so no prompt can
/// close the script).
fn page_with_prompts(prompts: &[String]) -> String {
    let json = serde_json::to_string(prompts).unwrap_or_else(|_| "[]".into()).replace("</", "<\\/");
    PAGE.replace("/*PROMPTS*/[]", &json)
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets in-flight
/// requests finish for up to `grace`, and returns (what is still running is cancelled when the
/// runtime drops it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping.send(());
    });
    let deadline = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result.map_err(|source| ServeError::Io { what: "the server failed".into(), source }),
        () = deadline => Ok(()),
    }
}

/// Binds `addr` (`host:port`), tells `on_listening` the bound address, and serves `app` until
/// SIGTERM or SIGINT; returns that signal's number once in-flight requests have finished or
/// `grace` has passed.
pub fn run_until_signal(
    addr: &str,
    app: axum::Router,
    grace: Duration,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<i32, ServeError> {
    let io = |what: String| move |source| ServeError::Io { what, source };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime".into()))?;
    let signal = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(io(format!("cannot listen on {addr}")))?;
        on_listening(listener.local_addr().map_err(io("the bound address".into()))?);
        let (got, signal) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            let _ = got.send(termination().await);
        };
        serve(listener, app, shutdown, grace).await?;
        Ok::<_, ServeError>(signal.await.unwrap_or(libc_sigterm()))
    })?;
    // Engine threads and streams still running past the grace period end with the process.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(signal)
}

/// Waits for SIGTERM or SIGINT and returns its number.
async fn termination() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => libc_sigterm(),
        _ = int.recv() => 2,
    }
}

/// SIGTERM's number (15 on every Unix chatvec runs on).
const fn libc_sigterm() -> i32 {
    15
}
