//! The run layer's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plan: {0}")]
    Plan(String),
    #[error("store: {0}")]
    Store(String),
    /// A store operation failed: what was being done, and the store's own error.
    #[error("{what}: {source}")]
    StoreOp {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The run was stopped (Ctrl-C): completed requests are journalled, nothing committed.
    #[error("interrupted: the table was not committed")]
    Interrupted,
    #[error(transparent)]
    Engine(#[from] caiflow_engine::EngineError),
    #[error(transparent)]
    Llm(#[from] caiflow_llm::LlmError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
}

impl RunError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;
