//! A DataFusion session with caiflow's functions, endpoints, progress and (in a run) the
//! request journal registered.

use std::sync::{Arc, Mutex};

use datafusion::catalog::TableFunctionImpl;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::journal::{JournalHandle, RequestJournal};
use crate::llm_udf::{FailedCalls, llm_udf};
use crate::progress::Progress;
use crate::sql::NamedArgs;
use crate::stages::blend::{BlendFunction, BlendKind};
use crate::stages::critique::CritiqueFactory;
use crate::stages::exec::{StageFactory, StageFunction};
use crate::stages::generate::GenerateFactory;
use crate::stages::helpful::{HelpfulPairsFunction, HelpfulSftFunction};
use crate::stages::judge::JudgeFactory;
use crate::stages::near_dedup::NearDedupFunction;
use crate::stages::prompts::RedTeamPromptsFunction;
use crate::stages::red_team_generate::RedTeamGenerateFunction;
use crate::stages::respond::RespondFactory;
use crate::stages::revise::ReviseFactory;
use crate::stages::sample::SampleFactory;
use crate::stages::source::SourceFunction;
use crate::udf;
use caiflow_llm::Endpoints;

/// The row stages' factories (one per SQL function).
fn stage_factories() -> Vec<Arc<dyn StageFactory>> {
    vec![
        Arc::new(RespondFactory),
        Arc::new(CritiqueFactory),
        Arc::new(ReviseFactory),
        Arc::new(SampleFactory),
        Arc::new(JudgeFactory),
        Arc::new(GenerateFactory),
    ]
}

/// The factory of the row stage called `function` in SQL.
pub fn stage_factory(function: &str) -> Option<Arc<dyn StageFactory>> {
    stage_factories()
        .into_iter()
        .find(|f| f.function_name() == function)
}

/// The source functions (they read a file themselves), without their call wrapper.
fn sources() -> [(&'static str, Arc<dyn TableFunctionImpl>); 3] {
    [
        ("red_team_prompts", Arc::new(RedTeamPromptsFunction)),
        ("helpful_sft", Arc::new(HelpfulSftFunction)),
        ("helpful_pairs", Arc::new(HelpfulPairsFunction)),
    ]
}

/// The source function called `name` in SQL, without its call wrapper.
pub fn source_function(name: &str) -> Option<Arc<dyn TableFunctionImpl>> {
    sources()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f)
}

/// The table functions caiflow adds, by SQL name.
pub fn table_functions() -> Vec<(&'static str, Arc<dyn TableFunctionImpl>)> {
    let [prompts, sft, pairs] = sources().map(|(name, inner)| {
        (
            name,
            Arc::new(SourceFunction { name, inner }) as Arc<dyn TableFunctionImpl>,
        )
    });
    let mut functions = vec![prompts];
    for factory in stage_factories() {
        functions.push((factory.function_name(), Arc::new(StageFunction(factory))));
    }
    functions.extend::<[(&'static str, Arc<dyn TableFunctionImpl>); 6]>([
        sft,
        pairs,
        ("blend", Arc::new(BlendFunction(BlendKind::Sft))),
        ("blend_pairs", Arc::new(BlendFunction(BlendKind::Pairs))),
        ("near_dedup", Arc::new(NearDedupFunction)),
        ("red_team_generate", Arc::new(RedTeamGenerateFunction)),
    ]);
    functions
}

#[derive(Clone)]
pub struct CaiSession {
    pub ctx: SessionContext,
    pub progress: Arc<Progress>,
    pub endpoints: Arc<Endpoints>,
    pub journal: Option<Arc<dyn RequestJournal>>,
    /// `llm()` calls that failed, as last reported ([`CaiSession::failed_llm_calls`]).
    llm_failures: Arc<Mutex<FailedCalls>>,
}

impl CaiSession {
    pub fn new(endpoints: Endpoints) -> Self {
        Self::with_journal(endpoints, None)
    }

    /// A session whose LLM stages serve and record requests through `journal`.
    pub fn with_journal(endpoints: Endpoints, journal: Option<Arc<dyn RequestJournal>>) -> Self {
        let endpoints = Arc::new(endpoints);
        let progress = Arc::new(Progress::default());
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_extension(endpoints.clone())
            .with_extension(progress.clone());
        let handle = journal.as_ref().map(|j| Arc::new(JournalHandle(j.clone())));
        if let Some(h) = &handle {
            config = config.with_extension(h.clone());
        }
        let functions = table_functions();
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_relation_planners(vec![Arc::new(NamedArgs::new(
                functions.iter().map(|(n, _)| *n),
            ))])
            .build();
        let ctx = SessionContext::new_with_state(state);
        for (name, f) in functions {
            ctx.register_udtf(name, f);
        }
        ctx.register_udf(udf::split_of_udf());
        ctx.register_udf(udf::unit_hash_udf());
        ctx.register_udf(llm_udf(endpoints.clone(), handle, progress.clone()));
        CaiSession {
            ctx,
            progress,
            endpoints,
            journal,
            llm_failures: Default::default(),
        }
    }

    /// A warning when `llm()` calls failed (and returned NULL) since the last call of this
    /// method: a SQL client prints it after each statement.
    pub fn failed_llm_calls(&self) -> Option<String> {
        self.llm_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since_last(&self.progress)
    }
}
