//! What each session of a run did: `caiflow run` (and `repair`) records one JSON file per
//! session in the run's `sessions/` folder, with every stage's figures (rows, requests sent
//! and served from the journal, retries, errors by reason, tokens, latency, truncated
//! answers). The report reads them; they are a few KiB per session, whatever the run's size.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use caiflow_engine::progress::StageStats;
use caiflow_llm::Usage;

use crate::error::{Result, RunError};
use crate::store::RunStore;

/// The folder of session files, in the run.
const FOLDER: &str = "sessions";

/// `end` of a `caiflow sql --run` session: its requests count toward the run's usage, its
/// stages are not the plan's.
pub const SQL_SESSION: &str = "sql";

/// One session of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    /// `finished`, `failed`, `interrupted`, `budget` (a budget stopped it), `running`
    /// (written while it runs; a session killed outright keeps its last one) or `sql` (a
    /// `caiflow sql --run` session that sent requests).
    pub end: String,
    /// On a cluster the executors count the requests: the stages' figures are the client's.
    pub cluster: bool,
    pub caiflow_version: String,
    pub stages: Vec<StageStats>,
}

impl SessionRecord {
    /// The record of a session that started at `started_unix_ms` and ended (so far) now.
    pub fn now(started_unix_ms: u64, end: &str, cluster: bool, stages: Vec<StageStats>) -> Self {
        SessionRecord {
            started_unix_ms,
            finished_unix_ms: unix_ms(),
            end: end.to_string(),
            cluster,
            caiflow_version: env!("CARGO_PKG_VERSION").to_string(),
            stages,
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write `record` as `sessions/{started}-{pid}.json`.
pub async fn record(store: &RunStore, record: &SessionRecord) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|cause| RunError::Json {
        what: "session record".into(),
        cause,
    })?;
    let name = format!(
        "{FOLDER}/{:013}-{}.json",
        record.started_unix_ms,
        std::process::id()
    );
    store.put(&name, bytes.into()).await
}

/// The run's sessions, oldest first (unreadable files are skipped, with a warning).
pub async fn sessions(store: &RunStore) -> Result<Vec<SessionRecord>> {
    let mut names: Vec<String> = store
        .list(FOLDER)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut out = vec![];
    for name in names {
        let Some(bytes) = store.get(&name).await? else {
            continue;
        };
        match serde_json::from_slice::<SessionRecord>(&bytes) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("{name}: not a session record ({e}); skipped"),
        }
    }
    out.sort_by_key(|r| r.started_unix_ms);
    Ok(out)
}

/// What a run's sessions spent, added up: per stage and endpoint, requests sent, tokens and
/// cost. Journal hits are free, so a request counts once however often the run resumed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunUsage {
    pub sessions: usize,
    /// Stage name → endpoint → usage.
    pub stages: BTreeMap<String, BTreeMap<String, Usage>>,
}

impl RunUsage {
    /// The sum over `sessions`.
    pub fn of(sessions: &[SessionRecord]) -> RunUsage {
        let mut out = RunUsage {
            sessions: sessions.len(),
            ..Default::default()
        };
        for s in sessions {
            out.add(&s.stages);
        }
        out
    }

    /// Add one session's stages.
    pub fn add(&mut self, stages: &[StageStats]) {
        for stage in stages {
            let into = self.stages.entry(stage.name.clone()).or_default();
            for (endpoint, u) in &stage.usage {
                into.entry(endpoint.clone()).or_default().add(u);
            }
        }
    }

    /// What one session's `stages` used, all together.
    pub fn of_stages(stages: &[StageStats]) -> Usage {
        stages.iter().flat_map(|s| s.usage.values()).sum()
    }

    /// Everything, all stages and endpoints.
    pub fn total(&self) -> Usage {
        self.stages.values().flat_map(|e| e.values()).sum()
    }

    /// Per endpoint, all stages.
    pub fn by_endpoint(&self) -> BTreeMap<String, Usage> {
        let mut out: BTreeMap<String, Usage> = BTreeMap::new();
        for (endpoint, u) in self.stages.values().flat_map(|e| e.iter()) {
            out.entry(endpoint.clone()).or_default().add(u);
        }
        out
    }

    /// As stage figures with only their usage set (for [`usage_table`]).
    ///
    /// [`usage_table`]: caiflow_engine::progress::usage_table
    pub fn as_stats(&self) -> Vec<StageStats> {
        self.stages
            .iter()
            .map(|(name, usage)| StageStats {
                name: name.clone(),
                usage: usage.clone(),
                ..Default::default()
            })
            .collect()
    }
}

/// How a session ended, as its record says (`end`).
pub fn session_end(end: &crate::execute::RunEnd, budget_stopped: bool) -> &'static str {
    use crate::execute::RunEnd;
    match (end, budget_stopped) {
        (RunEnd::Failed(_), true) => "budget",
        (RunEnd::Finished, _) => "finished",
        (RunEnd::Failed(_), false) => "failed",
        (RunEnd::Interrupted, _) => "interrupted",
    }
}

/// Write the running session's record every few seconds (`end = "running"`), so a process
/// killed outright leaves its spend of up to the last few seconds on record. Abort the
/// returned task when the session ends (and record its end).
pub fn spawn_recorder(
    store: RunStore,
    progress: std::sync::Arc<caiflow_engine::progress::Progress>,
    started_unix_ms: u64,
    cluster: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let running = SessionRecord::now(started_unix_ms, "running", cluster, progress.stats());
            let _ = record(&store, &running).await;
        }
    })
}

/// Charge every request of `endpoints` to the run-wide `budget` and to the endpoints' own,
/// counting what the run's earlier sessions spent; returns that earlier usage.
pub async fn charge_budgets(
    endpoints: &caiflow_llm::Endpoints,
    store: &RunStore,
    budget: caiflow_llm::Budget,
) -> Result<RunUsage> {
    let before = RunUsage::of(&sessions(store).await?);
    endpoints.charge_to_budgets(budget, before.total(), &before.by_endpoint());
    Ok(before)
}

/// Record a `caiflow sql --run` session in the run (`end = "sql"`) when it sent requests;
/// returns whether it did.
pub async fn record_sql_session(
    store: &RunStore,
    progress: &caiflow_engine::progress::Progress,
    started_unix_ms: u64,
) -> Result<bool> {
    let stages = progress.stats();
    if !stages.iter().any(|s| s.sent > 0) {
        return Ok(false);
    }
    let session = SessionRecord::now(started_unix_ms, SQL_SESSION, false, stages);
    record(store, &session).await?;
    Ok(true)
}
