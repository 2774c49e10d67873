//! Errors of cluster processes and clients.

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "the cluster scheduler {url} is unreachable ({cause}); start it with `caiflow cluster scheduler --bind HOST:PORT`, or check the address"
    )]
    Unreachable { url: String, cause: String },
    #[error("{0}")]
    Address(String),
    #[error(
        "the cluster scheduler {url} has no executors; start one with `caiflow cluster executor --scheduler HOST:PORT --bind HOST:PORT`"
    )]
    NoExecutors { url: String },
    #[error("asking the cluster scheduler {url} for its executors: {cause}")]
    Executors { url: String, cause: String },
    #[error(transparent)]
    Ballista(#[from] ballista_core::error::BallistaError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Run(#[from] caiflow_run::RunError),
    #[error(transparent)]
    Llm(#[from] caiflow_llm::LlmError),
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
