//! The LLM layer's errors. Row failures are values ([`crate::CallOutcome::result`]); the
//! stages turn them into the `error` column, so they are `Clone` and keep their causes.

// Messages carry their causes (`cannot read X: No such file…`), so a cause is a plain field,
// not an error `source`: printing the chain would say it twice.

use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: Arc<std::io::Error>,
    },
    #[error("{path}: {cause}")]
    ConfigFile { path: PathBuf, cause: Box<LlmError> },
    #[error("configuration: {0}")]
    Config(String),
    #[error("unknown endpoint '{0}' (define it under [endpoints.{0}] in caiflow.toml)")]
    UnknownEndpoint(String),
    #[error("environment variable {var} (API key of endpoint '{endpoint}') is not set")]
    MissingApiKey { endpoint: String, var: String },
    #[error("HTTP client: {0}")]
    HttpClient(Arc<reqwest::Error>),
    /// The endpoint cannot take requests at all (server unreachable, model not loadable).
    #[error("endpoint '{endpoint}'{}", match at { Some(url) => format!(" at {url} {reason}: start its server, or change its base_url in the configuration"), None => format!(": {reason}") })]
    Unavailable {
        endpoint: String,
        at: Option<String>,
        reason: String,
    },
    /// A backend could not get ready (e.g. an in-process model failed to load).
    #[error("{0}")]
    Backend(String),
    /// The run is stopping: the request was not sent.
    #[error("interrupted before sending (Ctrl-C)")]
    Interrupted,
    /// A budget (`--max-tokens`, `--max-cost`, `--max-requests` or an endpoint's `budget`)
    /// has no room for the request: it was not sent.
    #[error("{0}")]
    Budget(String),
    /// The endpoint gave up on every request (refused key, error rate above the maximum).
    #[error("{0}")]
    Aborted(String),
    /// Every attempt of one request failed, or one failed in a way not worth retrying.
    #[error("endpoint '{endpoint}': {message} after {attempts} attempt(s) ({})", if *retryable { "gave up" } else { "not retryable" })]
    Failed {
        endpoint: String,
        message: String,
        attempts: u32,
        retryable: bool,
    },
}

impl LlmError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LlmError::Io {
            path: path.into(),
            cause: Arc::new(source),
        }
    }
}

pub type Result<T, E = LlmError> = std::result::Result<T, E>;
