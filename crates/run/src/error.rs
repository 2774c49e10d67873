//! The run layer's errors.

// Messages carry their causes (`cannot read X: No such file…`), so a cause is a plain field,
// not an error `source`: printing the chain would say it twice.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("plan: {0}")]
    Plan(String),
    #[error("store: {0}")]
    Store(String),
    /// A store operation failed: what was being done, and the store's own error.
    #[error("{what}: {cause}")]
    StoreOp {
        what: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A Delta Lake operation failed (its multi-line messages are put on one line).
    #[error("{what}: {}", cause.to_string().split_whitespace().collect::<Vec<_>>().join(" "))]
    Delta {
        what: String,
        cause: Box<deltalake_core::DeltaTableError>,
    },
    #[error("{what}: {cause}")]
    Json {
        what: String,
        cause: serde_json::Error,
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
            cause: source,
        }
    }
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;
