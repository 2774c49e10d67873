//! The CAI stages, one SQL table function each (the machinery they run on is
//! [`crate::stage`]), and the registry of them all.
//!
//! | function | module |
//! |---|---|
//! | `red_team_prompts(path, …)` | [`red_team_prompts`] |
//! | `respond(input, …)` | [`respond`] |
//! | `critique(input, …)` | [`critique`] |
//! | `revise(input, …)` | [`revise`] |
//! | `sample(input, …)` | [`sample`] |
//! | `judge(candidates, …)` | [`judge`] |
//! | `helpful_sft(path, …)`, `helpful_pairs(path, …)` | [`helpful`] |
//! | `blend(cai, helpful, …)`, `blend_pairs(…)` | [`blend`] |
//! | `near_dedup(input, …)` | [`near_dedup`] |
//! | `generate(input, template => …, output => …)` | [`generate`] |
//! | `red_team_generate(seed_prompts, n => …)` | [`red_team_generate`] |

use std::sync::Arc;

use datafusion::catalog::{Session, TableFunctionImpl};
use datafusion::common::plan_datafusion_err;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;

use crate::stage::exec::{StageExec, StageExecParts};
use crate::stage::source::{SourceExec, SourceExecParts, SourceFunction, SourceTable};
use crate::stage::table::StageTable;
use crate::stage::{StageCall, StageFactory, StageFunction, llm_stage};

pub mod blend;
pub mod critique;
pub mod generate;
pub mod helpful;
pub mod judge;
pub mod near_dedup;
pub mod red_team_generate;
pub mod red_team_prompts;
pub mod respond;
pub mod revise;
pub mod sample;

/// The row stages, one factory per SQL function.
pub fn row_stages() -> Vec<Arc<dyn StageFactory>> {
    vec![
        llm_stage::<respond::Respond>(),
        llm_stage::<critique::Critique>(),
        llm_stage::<revise::Revise>(),
        llm_stage::<sample::Sample>(),
        llm_stage::<judge::Judge>(),
        llm_stage::<generate::Generate>(),
    ]
}

/// The source functions (they read a file themselves), by SQL name, without the wrapper
/// that makes their tables remember the call.
pub fn sources() -> Vec<(&'static str, Arc<dyn TableFunctionImpl>)> {
    vec![
        (
            "red_team_prompts",
            Arc::new(red_team_prompts::RedTeamPromptsFunction),
        ),
        ("helpful_sft", Arc::new(helpful::HelpfulSftFunction)),
        ("helpful_pairs", Arc::new(helpful::HelpfulPairsFunction)),
    ]
}

/// The other table functions, by SQL name.
pub fn others() -> Vec<(&'static str, Arc<dyn TableFunctionImpl>)> {
    vec![
        (
            "blend",
            Arc::new(blend::BlendFunction(blend::BlendKind::Sft)),
        ),
        (
            "blend_pairs",
            Arc::new(blend::BlendFunction(blend::BlendKind::Pairs)),
        ),
        ("near_dedup", Arc::new(near_dedup::NearDedupFunction)),
        (
            "red_team_generate",
            Arc::new(red_team_generate::RedTeamGenerateFunction),
        ),
    ]
}

/// Every table function caiflow adds, by SQL name, as a session registers them.
pub fn table_functions() -> Vec<(&'static str, Arc<dyn TableFunctionImpl>)> {
    let sources = sources().into_iter().map(|(name, inner)| {
        let f: Arc<dyn TableFunctionImpl> = Arc::new(SourceFunction { name, inner });
        (name, f)
    });
    let stages = row_stages().into_iter().map(|factory| {
        let f: Arc<dyn TableFunctionImpl> = Arc::new(StageFunction(factory.clone()));
        (factory.function_name(), f)
    });
    sources.chain(stages).chain(others()).collect()
}

/// The factory of the row stage called `function` in SQL.
pub fn row_stage(function: &str) -> Result<Arc<dyn StageFactory>> {
    row_stages()
        .into_iter()
        .find(|f| f.function_name() == function)
        .ok_or_else(|| plan_datafusion_err!("no stage function named '{function}'"))
}

/// The source function called `function` in SQL, without its call wrapper.
pub fn source(function: &str) -> Result<Arc<dyn TableFunctionImpl>> {
    sources()
        .into_iter()
        .find(|(n, _)| *n == function)
        .map(|(_, f)| f)
        .ok_or_else(|| plan_datafusion_err!("no source function named '{function}'"))
}

/// The table of a stage `call` over `input` (a plan decoded in another process).
pub fn stage_table(call: StageCall, input: LogicalPlan) -> Result<StageTable> {
    let factory = row_stage(&call.function)?;
    StageTable::from_call(call, factory.as_ref(), input)
}

/// A stage node rebuilt from its parts over `input` (a plan decoded in another process).
pub fn stage_exec(parts: StageExecParts, input: Arc<dyn ExecutionPlan>) -> Result<StageExec> {
    let factory = row_stage(&parts.call.function)?;
    StageExec::from_parts(parts, factory.as_ref(), input)
}

/// The table of a source `call`, the function called again in `session`.
pub fn source_table(call: StageCall, session: &dyn Session) -> Result<SourceTable> {
    let function = source(&call.function)?;
    SourceTable::from_call(call, function, session)
}

/// A source node rebuilt from its parts in a task.
pub fn source_exec(parts: SourceExecParts, context: &TaskContext) -> Result<SourceExec> {
    let function = source(&parts.call.function)?;
    SourceExec::from_parts(parts, function, context)
}
