//! caiflow: Constitutional AI datasets (SL-CAI and RL-CAI) as a DataFusion dataflow.
//!
//! Each CAI stage is a table function over Arrow record batches ([`stages`]); stages call
//! named endpoints through the LLM layer ([`llm`]); plans are SQL files run by [`plan`];
//! results are exported for NeMo-Aligner and TRL by [`export`].

pub mod chat_template;
pub mod config;
pub mod constitution;
pub mod error;
pub mod export;
pub mod journal;
pub mod keys;
pub mod llm;
pub mod models;
pub mod plan;
pub mod progress;
pub mod run;
pub mod session;
pub mod sql;
pub mod stages;
pub mod store;
pub mod testing;
pub mod udf;

pub use error::{CaiError, Result};
pub use session::CaiSession;
