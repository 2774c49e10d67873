//! The engine's errors. The CLI adds context with `anyhow`; the library names the problem.

// Messages carry their causes (`cannot read X: No such file…`), so a cause is a plain field,
// not an error `source`: printing the chain would say it twice.

use std::path::PathBuf;

/// Everything that can go wrong in the engine outside a single LLM row (row failures are
/// data: they land in the `error` column instead of failing the query).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error(transparent)]
    Llm(#[from] caiflow_llm::LlmError),
    #[error("plan: {0}")]
    Plan(String),
    #[error("{path}: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
}

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EngineError::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<EngineError> for datafusion::error::DataFusionError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::DataFusion(e) => e,
            // Kept whole, with its source, for whoever reports the query's failure.
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
