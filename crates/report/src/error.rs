use thiserror::Error;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("report: {0}")]
    Table(String),
    #[error("{0}")]
    Config(String),
    #[error("report: drawing a chart: {0}")]
    Chart(String),
    #[error("report: writing {path}: {cause}")]
    Write {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Run(#[from] caiflow_run::RunError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("report: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, ReportError>;
