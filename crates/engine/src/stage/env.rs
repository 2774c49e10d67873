//! What a stage's task runs with: its endpoint, journal, progress counters and worker
//! name ([`StageEnv`]), found in the session (one process) or in an executor's [`Resources`]
//! (a cluster).

use std::sync::Arc;

use datafusion::common::{exec_err, plan_datafusion_err};
use datafusion::error::Result;
use datafusion::execution::TaskContext;

use crate::journal::JournalHandle;
use crate::progress::{Progress, StageProgress};
use crate::resources::{LOCAL_WORKER, Resources};
use caiflow_llm::{Endpoint, Endpoints};

/// What a stage needs at execution time, looked up from the session by name.
#[derive(Debug, Clone)]
pub struct StageEnv {
    pub endpoint: Option<Arc<Endpoint>>,
    /// Who sends this stage's requests (lineage `worker`).
    pub worker: Arc<str>,
    pub progress: Arc<StageProgress>,
    /// The run's request journal, when the session has one.
    pub journal: Option<Arc<crate::journal::JournalHandle>>,
    /// Scheduling priority of this stage's requests (deeper stages first).
    pub priority: u32,
    /// `retry_truncated`: ask again with this `max_tokens` when an answer is cut off.
    pub retry_truncated: Option<u32>,
    /// Set when a budget refused one of this stream's requests: the stream then fails once
    /// the requests in flight are answered, so its table is not committed.
    pub budget_refused: Arc<std::sync::atomic::AtomicBool>,
}

impl StageEnv {
    /// Why this stage's work must stop, if it must: the run is stopping (Ctrl-C), the
    /// endpoint gave up (refused key, error rate), or a budget refused one of its requests
    /// (said once no budgeted request is in flight anywhere, so their answers are
    /// journalled first; the caller's own requests must be finished before asking).
    pub async fn stopped(&self) -> Option<String> {
        let endpoint = self.endpoint.as_ref()?;
        if endpoint.stopping() {
            return Some("interrupted: the run is stopping".into());
        }
        if let Some(why) = endpoint.aborted() {
            return Some(why.to_string());
        }
        self.budget_stopped().await
    }

    /// The message of the budget that refused one of this stage's requests, if one did:
    /// said once no budgeted request is in flight anywhere (other streams' answers are
    /// journalled before the query fails and drops them).
    pub async fn budget_stopped(&self) -> Option<String> {
        let endpoint = self.endpoint.as_ref()?;
        if !self
            .budget_refused
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        while endpoint.budget_in_flight() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Some(budget_message(endpoint))
    }
}

/// The environment of a task of the function `name` calling `endpoint` (if any): the
/// endpoint and journal from the session (one process) or from the executor's
/// [`Resources`] (a cluster), and the function's progress counters.
pub async fn task_env(
    name: &str,
    endpoint: Option<&str>,
    context: &TaskContext,
) -> Result<StageEnv> {
    let config = context.session_config();
    let progress = config.get_extension::<Progress>().unwrap_or_default();
    let resources = config.get_extension::<Resources>();
    let found = match endpoint {
        None => None,
        Some(endpoint) => {
            let endpoints = match (config.get_extension::<Endpoints>(), &resources) {
                (Some(e), _) => e,
                (None, Some(r)) => r.0.endpoints(config).await?,
                (None, None) => {
                    return exec_err!("{name}: the session has no endpoints configured");
                }
            };
            Some(
                endpoints
                    .get(endpoint)
                    .map_err(|e| plan_datafusion_err!("{name}: {e}"))?,
            )
        }
    };
    let journal = match (config.get_extension::<JournalHandle>(), &resources) {
        (Some(j), _) => Some(j),
        (None, Some(r)) if found.is_some() => r.0.journal(config).await?,
        _ => None,
    };
    Ok(StageEnv {
        progress: if found.is_some() {
            progress.llm_stage(name)
        } else {
            progress.stage(name)
        },
        endpoint: found,
        journal,
        priority: 0,
        retry_truncated: None,
        budget_refused: Default::default(),
        worker: match &resources {
            Some(r) => r.0.worker().into(),
            None => LOCAL_WORKER.into(),
        },
    })
}

/// The message of the budget that stopped `endpoint`'s requests.
pub(super) fn budget_message(endpoint: &Endpoint) -> String {
    endpoint
        .budget_stop()
        .unwrap_or_else(|| "a budget stopped the run".to_string())
}
