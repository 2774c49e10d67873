//! caiflow's LLM layer: the request and completion types, one [`Backend`] trait, the HTTP
//! backends (OpenAI-compatible, NeMo), and [`Endpoint`], which adds what every stage relies
//! on: the shared concurrency budget and scheduler, per-attempt timeouts, retries, the fault
//! policy and the canonical request hash. Endpoint configuration (`[endpoints]` of
//! `caiflow.toml`) lives here; the file's other sections belong to the crates that use them.
//!
//! It owns talking to models and must not know about tables: no DataFusion, no Arrow, no
//! runs or journals. Other backends (the embedded llama.cpp engine) plug in through
//! [`BackendFactory`]; a run's stop is a [`CancellationToken`] handed to [`Endpoints`].

pub mod anthropic;
pub mod batch;
pub mod chat_template;
pub mod config;
pub mod dry;
pub mod endpoint;
pub mod error;
pub mod gate;
pub mod hash;
pub mod models;
pub mod nemo;
pub mod openai;
pub mod reasoning;
pub mod retry;
pub mod spend;

use std::fmt::Debug;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use endpoint::{BackendFactory, CallOutcome, Endpoint, Endpoints};
pub use error::LlmError;
pub use hash::{REQUEST_HASH_SCHEME, RequestHash};
pub use spend::{Budget, Price, Usage};
pub use tokio_util::sync::CancellationToken;

/// One chat turn. Roles are lower-case OpenAI roles: `system`, `user`, `assistant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Sampling parameters. `None` leaves the server's default in place; only set fields are sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Ask for this many most likely tokens (with log-probabilities) at each position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Sent as the OpenAI `response_format` (e.g. a JSON schema the answer must follow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
}

/// A request as the stages build it: backend-neutral.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub params: SamplingParams,
}

impl ChatRequest {
    /// The turns' contents separated by blank lines: the single prompt a completions-style
    /// endpoint (a base model without a chat template) gets.
    pub fn joined_text(&self) -> String {
        let parts: Vec<&str> = self.messages.iter().map(|m| m.content.as_str()).collect();
        parts.join("\n\n")
    }
}

/// What a backend returns for one successful attempt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Per generated token, its most likely alternatives as (token text, log-probability);
    /// present when the request asked for `top_logprobs` and the server returned them.
    pub top_logprobs: Option<Vec<Vec<(String, f64)>>>,
    /// A reasoning model's thinking, never part of `text` (see [`reasoning`]).
    pub reasoning: Option<String>,
    /// How many of `completion_tokens` were thinking (the server's count, else estimated).
    pub reasoning_tokens: Option<u64>,
    /// How many of `prompt_tokens` were read from the provider's prompt cache (Anthropic
    /// `cache_read_input_tokens`, OpenAI `prompt_tokens_details.cached_tokens`).
    pub cached_tokens: Option<u64>,
}

/// Why one attempt failed, and whether another attempt may succeed.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptError {
    pub message: String,
    pub retryable: bool,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// The server refused us (401/403: a bad or missing key): no request to it can succeed.
    pub refused: bool,
    /// The server pushed back (429, timeout): a signal for adaptive concurrency.
    pub overloaded: bool,
}

impl AttemptError {
    pub fn retryable(message: impl Into<String>) -> Self {
        AttemptError {
            message: message.into(),
            retryable: true,
            retry_after: None,
            refused: false,
            overloaded: false,
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        AttemptError {
            retryable: false,
            ..Self::retryable(message)
        }
    }
}

/// A model server protocol. Implementations do exactly one attempt; retries, timeouts and
/// concurrency live in [`Endpoint`] so every backend gets them alike.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + Debug {
    /// Get ready before the first request (an in-process model loads here), so a missing
    /// model fails the query once, with its reason, instead of failing every row.
    async fn prepare(&self) -> Result<(), LlmError> {
        Ok(())
    }

    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError>;

    /// The request's prompt tokens, exactly, when this backend has the model's tokenizer at
    /// hand (the embedded model); `None` for servers.
    async fn count_prompt_tokens(&self, _request: &ChatRequest) -> Option<u64> {
        None
    }
}

/// Classify an HTTP status the way DESIGN §4 says: 408, 429 and 5xx are worth retrying,
/// any other 4xx is the caller's fault and is not.
pub(crate) fn status_error(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> AttemptError {
    let snippet: String = body.chars().take(300).collect();
    let message = format!("HTTP {}: {}", status.as_u16(), snippet.trim());
    let code = status.as_u16();
    let retryable = code == 408 || code == 429 || status.is_server_error();
    AttemptError {
        message,
        retryable,
        retry_after: retry::parse_retry_after(headers),
        refused: code == 401 || code == 403,
        // 529: Anthropic's "overloaded".
        overloaded: code == 429 || code == 503 || code == 529,
    }
}

/// Default cap on one response body (`max_response_mib`): far above any real completion,
/// low enough that an endless or hostile body cannot exhaust memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// The most tokens one request can plausibly report (prompt or completion). Servers that
/// report more are wrong or hostile: the count is dropped (recorded as unknown), never stored.
pub const MAX_PLAUSIBLE_TOKENS: u64 = 1 << 31;

/// A token count from a server, or None (with a warning) when it is absurd.
pub fn plausible_tokens(what: &str, n: Option<u64>) -> Option<u64> {
    match n {
        Some(n) if n > MAX_PLAUSIBLE_TOKENS => {
            tracing::warn!(
                "a server reported {n} {what} for one request (more than {MAX_PLAUSIBLE_TOKENS}): recorded as unknown"
            );
            None
        }
        n => n,
    }
}

/// Read a response's status, headers and body, at most `limit` bytes of body: a body that is
/// longer (or endless) fails the attempt once the limit is reached, without being kept.
pub(crate) async fn read_response(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, String), AttemptError> {
    let status = response.status();
    let headers = response.headers().clone();
    let too_large = |n: u64| {
        AttemptError::fatal(format!(
            "response body larger than {} MiB (at least {n} bytes): raise the endpoint's max_response_mib if its answers really are this large",
            limit >> 20
        ))
    };
    if let Some(n) = response.content_length().filter(|n| *n > limit) {
        return Err(too_large(n));
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        let total = (body.len() as u64).saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(too_large(total));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Turn a transport error into an attempt error; all of them are retryable (connection
/// refused, reset, body cut short), except a request we could not even build.
pub(crate) fn transport_error(e: reqwest::Error) -> AttemptError {
    // The URL may carry credentials (user-info): the endpoint's name says which server it is.
    let e = e.without_url();
    if e.is_builder() {
        AttemptError::fatal(format!("invalid request: {e}"))
    } else {
        AttemptError::retryable(error_chain(&e))
    }
}

/// An error and its sources, `outer: inner: …` (reqwest hides the useful part in sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
