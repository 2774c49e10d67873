//! caiflow's runs: a plan (a SQL file with variables, [`plan`]) run into a run folder of a
//! store (local or S3, [`store`]), where `CREATE TABLE` materializes committed tables and
//! unchanged ones are reused ([`materialize`]; the Delta tables: [`delta`]), every request
//! outcome is journalled so a resumed run sends nothing twice ([`journal`]), and a stop is
//! graceful ([`execute`]). Around a run: its name and resume command ([`naming`]), its
//! sessions, usage and budgets ([`sessions`]), the saved plan `repair` re-runs ([`saved`]),
//! its lease ([`lock`]) and the parts of `caiflow.toml` it reads ([`config`]: endpoints and
//! `[tables]`).
//!
//! It owns durability: what is stored, committed and resumed. It must not know how a stage
//! builds its requests or how a backend talks to a model; it drives the engine's session and
//! hands the stages its journal. Stopping is a [`caiflow_llm::CancellationToken`] passed
//! down, never a global.

pub mod config;
pub mod delta;
pub mod dry_run;
pub mod error;
pub mod execute;
pub mod inputs;
pub mod journal;
pub mod lock;
pub mod materialize;
pub mod naming;
pub mod plan;
pub mod saved;
pub mod sessions;
pub mod store;

pub use error::{Result, RunError};
pub use execute::{OnDemandJournal, PlanRun, RunEnd};
