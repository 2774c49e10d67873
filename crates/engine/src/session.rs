//! A DataFusion session with caiflow's functions, endpoints, progress and (in a run) the
//! request journal registered.

use std::sync::Arc;

use datafusion::catalog::TableFunctionImpl;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::journal::{JournalHandle, RequestJournal};
use crate::progress::Progress;
use crate::sql::NamedArgs;
use crate::stages::blend::{BlendFunction, BlendKind};
use crate::stages::critique::CritiqueFactory;
use crate::stages::exec::StageFunction;
use crate::stages::helpful::{HelpfulPairsFunction, HelpfulSftFunction};
use crate::stages::judge::JudgeFactory;
use crate::stages::prompts::RedTeamPromptsFunction;
use crate::stages::respond::RespondFactory;
use crate::stages::revise::ReviseFactory;
use crate::stages::sample::SampleFactory;
use crate::udf;
use caiflow_llm::Endpoints;

/// The table functions caiflow adds, by SQL name.
pub fn table_functions() -> Vec<(&'static str, Arc<dyn TableFunctionImpl>)> {
    vec![
        ("red_team_prompts", Arc::new(RedTeamPromptsFunction)),
        ("respond", Arc::new(StageFunction(RespondFactory))),
        ("critique", Arc::new(StageFunction(CritiqueFactory))),
        ("revise", Arc::new(StageFunction(ReviseFactory))),
        ("sample", Arc::new(StageFunction(SampleFactory))),
        ("judge", Arc::new(StageFunction(JudgeFactory))),
        ("helpful_sft", Arc::new(HelpfulSftFunction)),
        ("helpful_pairs", Arc::new(HelpfulPairsFunction)),
        ("blend", Arc::new(BlendFunction(BlendKind::Sft))),
        ("blend_pairs", Arc::new(BlendFunction(BlendKind::Pairs))),
    ]
}

#[derive(Clone)]
pub struct CaiSession {
    pub ctx: SessionContext,
    pub progress: Arc<Progress>,
    pub endpoints: Arc<Endpoints>,
    pub journal: Option<Arc<dyn RequestJournal>>,
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
        if let Some(j) = &journal {
            config = config.with_extension(Arc::new(JournalHandle(j.clone())));
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
        CaiSession {
            ctx,
            progress,
            endpoints,
            journal,
        }
    }
}
