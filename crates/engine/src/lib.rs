//! caiflow's engine: Constitutional AI stages as DataFusion table functions over Arrow record
//! batches ([`stages`], one module per SQL function, on the machinery of [`stage`]), the SQL planner for their named arguments ([`sql`]), scalar UDFs
//! ([`udf`], and `llm()` in [`llm_udf`]), constitutions and few-shot files ([`constitution`]), trainer exports
//! ([`export`]) and the session that registers all of it ([`CaiSession`]).
//!
//! It owns turning rows into requests and answers back into rows. It must not know how runs
//! are stored or resumed: a run hands it a [`journal::RequestJournal`] to serve and record
//! requests, and its endpoints come from `caiflow-llm` (with the embedded backend when the
//! `embedded` feature is on).

pub mod constitution;
pub mod dedup;
pub mod error;
pub mod export;
pub mod journal;
pub mod keys;
pub mod llm_udf;
pub mod parse;
pub mod progress;
pub mod resources;
pub mod session;
pub mod sql;
pub mod stage;
pub mod stages;
pub mod udf;

pub use error::{EngineError, Result};
pub use session::CaiSession;

use caiflow_llm::config::Config;
use caiflow_llm::{CancellationToken, Endpoints, LlmError};

/// The endpoints of `config`, with every backend this build has (the embedded model when the
/// `embedded` feature is on); cancelling `stop` halts them all.
pub fn endpoints(config: &Config, stop: CancellationToken) -> Result<Endpoints, LlmError> {
    build_endpoints(config, Some(stop))
}

/// The endpoints of `config` for a dry run (see [`Endpoints::dry_run`]): nothing is sent; an
/// embedded model is loaded to count prompt tokens exactly.
pub fn dry_run_endpoints(config: &Config) -> Result<Endpoints, LlmError> {
    build_endpoints(config, None)
}

fn build_endpoints(
    config: &Config,
    stop: Option<CancellationToken>,
) -> Result<Endpoints, LlmError> {
    #[cfg(feature = "embedded")]
    let factory = caiflow_embedded::EmbeddedFactory::default();
    #[cfg(feature = "embedded")]
    let factory: Option<&dyn caiflow_llm::BackendFactory> = Some(&factory);
    #[cfg(not(feature = "embedded"))]
    let factory = None;
    match stop {
        Some(stop) => Endpoints::from_config_with(config, factory, stop),
        None => Endpoints::dry_run(config, factory),
    }
}
