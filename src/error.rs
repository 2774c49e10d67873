//! Library error type. The CLI adds context with `anyhow`; the library names the problem.

use std::path::PathBuf;

/// Everything that can go wrong in caiflow outside a single LLM row (row failures are data:
/// they land in the `error` column instead of failing the query).
#[derive(Debug, thiserror::Error)]
pub enum CaiError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("unknown endpoint '{0}' (define it under [endpoints.{0}] in caiflow.toml)")]
    UnknownEndpoint(String),
    #[error("environment variable {var} (API key of endpoint '{endpoint}') is not set")]
    MissingApiKey { endpoint: String, var: String },
    #[error("plan: {0}")]
    Plan(String),
    #[error("store: {0}")]
    Store(String),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
}

impl CaiError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CaiError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        CaiError::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<CaiError> for datafusion::error::DataFusionError {
    fn from(e: CaiError) -> Self {
        match e {
            CaiError::DataFusion(e) => e,
            other => datafusion::error::DataFusionError::Plan(other.to_string()),
        }
    }
}

pub type Result<T, E = CaiError> = std::result::Result<T, E>;
