//! The stage machinery: how a CAI stage becomes a DataFusion table function and streams
//! rows. The stages themselves, one SQL function each, are in [`crate::stages`].
//!
//! | concern | module |
//! |---|---|
//! | the contract a stage implements ([`RowStage`], [`StageFactory`], its output schema) | [`contract`] |
//! | the LLM-stage framework ([`LlmStage`], typed rows, `{stage}_lineage`/`error`) | [`llm_stage`] |
//! | a call's named arguments | [`args`] |
//! | LLM options and the request of a row | [`options`] |
//! | one request: journal, endpoint, lineage | [`llm_call`] |
//! | a task's endpoint, journal and progress | [`env`] |
//! | the table function and provider | [`table`] |
//! | the physical node that streams rows | [`exec`] |
//! | grouping rows (a prompt's candidates) | [`group`] |
//! | reading input cells / writing output cells | [`row`], [`columns`], [`cells`], [`lineage`] |
//! | a stage's input (a table, a file, a query) | [`input`] |
//! | source functions that remember their call | [`source`] |
//! | spreading a stage's units over partitions | [`spread`] |
//!
//! A new LLM stage implements [`LlmStage`] and is listed in [`crate::stages`]; see
//! `crates/engine/examples/custom_stage.rs` for one outside the crate.

pub mod args;
pub mod cells;
pub mod columns;
pub mod contract;
pub mod env;
pub mod exec;
pub mod group;
pub mod input;
pub mod lineage;
pub mod llm_call;
pub mod llm_stage;
pub mod options;
pub mod row;
pub mod source;
pub mod spread;
pub mod table;

pub use args::StageArgs;
pub use cells::{CandidateCell, Cell, ComparisonCell, OutRow};
pub use contract::{Grouping, RowStage, StageCall, StageFactory};
pub use datafusion::arrow::datatypes::Field;
pub use env::StageEnv;
pub use lineage::Lineage;
pub use llm_stage::{
    CellValue, Emit, Llm, LlmFactory, LlmRowStage, LlmStage, Missing, OutputRow, Reply, llm_stage,
};
pub use options::{LlmDefaults, LlmOptions, base_turns};
pub use row::InputRow;
pub use table::StageFunction;
