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
use crate::stage::{StageFactory, StageFunction};
use crate::stages::table_functions;
use crate::udf;
use caiflow_llm::Endpoints;

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
        Self::with_stages(endpoints, journal, vec![])
    }

    /// A session that also has the row stages of `extra` (stages written outside caiflow,
    /// e.g. with [`crate::stage::LlmStage`]), as SQL table functions with named arguments.
    /// They run in this process: a cluster rebuilds stages only from caiflow's own registry.
    pub fn with_stages(
        endpoints: Endpoints,
        journal: Option<Arc<dyn RequestJournal>>,
        extra: Vec<Arc<dyn StageFactory>>,
    ) -> Self {
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
        let mut functions = table_functions();
        for factory in extra {
            let function: Arc<dyn TableFunctionImpl> = Arc::new(StageFunction(factory.clone()));
            functions.push((factory.function_name(), function));
        }
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
