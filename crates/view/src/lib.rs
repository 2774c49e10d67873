//! `caiflow view RUN`: a local web server over a run's committed tables, for reading rows
//! as a CAI team judges them: an SL-CAI row as the conversation it was (prompt → response →
//! critique under its principle → revision, with a word diff of response and revision), an
//! RL-CAI row as its candidates side by side with the chosen and rejected marked.
//!
//! Why a server and not a static page: tables of millions of rows are read through
//! DataFusion a page at a time (filters pushed into the scan, keyset pagination on the
//! table's key, `LIMIT`), from local or S3 stores alike, so the first page costs the same on
//! any size. Pages are rendered on the server with maud, which escapes every value (model
//! answers and inputs are text, never markup); there is no JavaScript and nothing is loaded
//! from the network.
//!
//! | concern | module |
//! |---|---|
//! | the run's tables, filters and pages as DataFusion queries | [`query`] |
//! | the HTML of each page | [`pages`] |
//! | the word diff of a response and its revision | [`diff`] |
//! | the HTTP server and its routes | [`server`] |
//! | `caiflow run --ui`: the live page, kept current by server-sent events | [`live`] |
//! | the report's refusal and unchanged-revision judgements as SQL functions | [`udf`] |
//!
//! It depends on the report (for its judgements) and the run layer (CLI → view → report →
//! run → engine).

pub mod diff;
pub mod live;
pub mod pages;
pub mod query;
pub mod server;
pub mod udf;

pub use query::Viewer;
pub use server::serve;

/// What can go wrong opening or serving a run.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Run(#[from] caiflow_run::RunError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A filter of the page's query that cannot apply (said in one line).
    #[error("{0}")]
    BadFilter(String),
}

pub type Result<T, E = ViewError> = std::result::Result<T, E>;
