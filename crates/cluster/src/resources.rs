//! An executor's live endpoints and journals, by run.
//!
//! A task's configuration describes its run ([`RunOptions`]); the first task of a run that
//! needs an endpoint or the journal builds it here, and every later task of the run on this
//! executor shares it: one client and one share of each endpoint's limits per executor,
//! one journal writer per executor. A few runs are kept (the oldest is dropped, its journal
//! flushed, when a newer one arrives).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::common::exec_datafusion_err;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionConfig;

use caiflow_engine::journal::JournalHandle;
use caiflow_engine::resources::TaskResources;
use caiflow_llm::config::Config;
use caiflow_llm::{CancellationToken, Endpoints};
use caiflow_run::journal::Journal;
use caiflow_run::store::RunStore;

use crate::options::RunOptions;
use crate::trust::Roots;

/// Runs remembered at once.
const RUNS_KEPT: usize = 4;

#[derive(Debug)]
struct RunJournal {
    journal: Arc<Journal>,
    flusher: tokio::task::JoinHandle<()>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
pub struct ExecutorResources {
    worker: String,
    stop: CancellationToken,
    /// What this executor may serve and touch, and the cluster's token.
    trust: Trust,
    endpoints: Mutex<VecDeque<(String, Arc<Endpoints>)>>,
    journals: tokio::sync::Mutex<VecDeque<(String, Arc<RunJournal>)>>,
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn run_options(config: &SessionConfig) -> Result<&RunOptions> {
    config
        .options()
        .extensions
        .get::<RunOptions>()
        .ok_or_else(|| exec_datafusion_err!("this executor's sessions have no caiflow options"))
}

/// What an executor trusts (see [`crate::trust`]).
#[derive(Debug, Default)]
pub struct Trust {
    /// The endpoints it may serve (`--config`); None serves none.
    pub endpoints: Option<Config>,
    /// Where it may read and write (`--allow`).
    pub roots: Arc<Roots>,
    /// The cluster's shared secret.
    pub token: Option<String>,
}

/// A refusal, as the task's error.
fn refused(why: String) -> DataFusionError {
    DataFusionError::Execution(why)
}

impl ExecutorResources {
    /// `worker` names this executor in lineage; cancelling `stop` halts its endpoints.
    pub fn new(worker: &str, stop: CancellationToken, trust: Trust) -> Self {
        ExecutorResources {
            worker: worker.to_string(),
            stop,
            trust,
            endpoints: Mutex::new(VecDeque::new()),
            journals: tokio::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Flush every journal (on shutdown).
    pub async fn flush(&self) {
        for (_, run) in self.journals.lock().await.iter() {
            if let Err(e) = run.journal.flush().await {
                tracing::warn!("journal flush failed: {e}");
            }
        }
    }
}

#[async_trait]
impl TaskResources for ExecutorResources {
    fn worker(&self) -> &str {
        &self.worker
    }

    async fn endpoints(&self, config: &SessionConfig) -> Result<Arc<Endpoints>> {
        let options = run_options(config)?;
        crate::trust::verify(self.trust.token.as_deref(), options).map_err(refused)?;
        let key = format!("{}\n{}", options.executors, options.endpoints);
        let mut cache = self
            .endpoints
            .lock()
            .map_err(|_| exec_datafusion_err!("endpoint cache poisoned"))?;
        if let Some((_, e)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(e.clone());
        }
        if options.endpoints.trim().is_empty() {
            return Err(exec_datafusion_err!(
                "this task carries no endpoints (caiflow.endpoints is not set): send plans with `caiflow run --cluster` or `caiflow sql --cluster`"
            ));
        }
        let asked = Config::parse(&options.endpoints).map_err(external)?;
        let mut parsed = crate::trust::approve(self.trust.endpoints.as_ref(), &asked, &self.worker)
            .map_err(refused)?;
        for endpoint in parsed.endpoints.values_mut() {
            *endpoint = endpoint.share(options.executors);
        }
        let endpoints =
            Arc::new(caiflow_engine::endpoints(&parsed, self.stop.clone()).map_err(external)?);
        if cache.len() >= RUNS_KEPT {
            cache.pop_front();
        }
        cache.push_back((key, endpoints.clone()));
        Ok(endpoints)
    }

    async fn journal(&self, config: &SessionConfig) -> Result<Option<Arc<JournalHandle>>> {
        let options = run_options(config)?;
        if options.store.is_empty() {
            return Ok(None);
        }
        crate::trust::verify(self.trust.token.as_deref(), options).map_err(refused)?;
        if !self.trust.roots.allows_run(&options.store, &options.run) {
            return Err(refused(format!(
                "executor {} refuses run {} of store {}: outside the folders it was started with (--allow)",
                self.worker, options.run, options.store
            )));
        }
        let key = format!("{}\n{}", options.store, options.run);
        let run = {
            let mut journals = self.journals.lock().await;
            match journals.iter().find(|(k, _)| *k == key) {
                Some((_, run)) => run.clone(),
                None => {
                    let store = RunStore::open(&options.store, &options.run).map_err(external)?;
                    let journal = Arc::new(Journal::open(store).await.map_err(external)?);
                    let run = Arc::new(RunJournal {
                        flusher: journal.spawn_flusher(),
                        journal,
                        refreshing: tokio::sync::Mutex::new(()),
                    });
                    if journals.len() >= RUNS_KEPT
                        && let Some((_, old)) = journals.pop_front()
                    {
                        old.flusher.abort();
                        if let Err(e) = old.journal.flush().await {
                            tracing::warn!("journal flush failed: {e}");
                        }
                    }
                    journals.push_back((key, run.clone()));
                    return Ok(Some(Arc::new(JournalHandle(run.journal.clone()))));
                }
            }
        };
        // A task of a known run: take in what other executors journalled since (a task that
        // failed elsewhere and is re-run here finds the requests its first attempt completed).
        {
            let _one = run.refreshing.lock().await;
            run.journal.refresh().await.map_err(external)?;
        }
        Ok(Some(Arc::new(JournalHandle(run.journal.clone()))))
    }
}
