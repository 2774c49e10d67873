//! Driving a plan run to its end: the journal opened and flushed, the run stopped gracefully
//! when its stop token is cancelled (requests in flight get a grace period to finish and be
//! journalled; nothing is committed), the journal compacted after a successful run.

use std::sync::Arc;
use std::time::Duration;

use caiflow_engine::CaiSession;
use caiflow_llm::{CancellationToken, Endpoints};

use crate::error::{Result, RunError};
use crate::journal::Journal;
use crate::materialize::{RunOptions, Runner, TableOutcome};
use crate::plan::StatementOutcome;
use crate::store::RunStore;
use caiflow_engine::journal::RequestJournal;

/// A run's journal that serves what it holds and records nothing (a dry run's view).
#[derive(Debug)]
struct ReadOnly(Journal);

#[async_trait::async_trait]
impl RequestJournal for ReadOnly {
    async fn lookup(&self, hash: &caiflow_llm::RequestHash) -> Option<caiflow_llm::Completion> {
        self.0.lookup(hash).await
    }

    fn record(
        &self,
        _hash: &caiflow_llm::RequestHash,
        _result: &std::result::Result<caiflow_llm::Completion, caiflow_llm::LlmError>,
    ) {
    }
}

/// A run's journal opened at its first request (`caiflow sql --run RUN`: reading a large
/// journal's index takes a while, and most queries send nothing), read only when the run's
/// store cannot be written. A journal that cannot be opened is a warning: requests are then
/// sent without it.
#[derive(Debug)]
pub struct OnDemandJournal {
    store: RunStore,
    opened: tokio::sync::OnceCell<Option<Opened>>,
}

#[derive(Debug)]
enum Opened {
    Writing(Arc<Journal>, tokio::task::JoinHandle<()>),
    ReadOnly(Box<Journal>),
}

impl OnDemandJournal {
    pub fn new(store: RunStore) -> Arc<OnDemandJournal> {
        Arc::new(OnDemandJournal {
            store,
            opened: tokio::sync::OnceCell::new(),
        })
    }

    async fn opened(&self) -> Option<&Opened> {
        let open = async {
            let journal = Journal::open(self.store.clone()).await?;
            if self.store.check_writable().await.is_err() {
                tracing::warn!("the run's store is read only: new answers are not journalled");
                return Ok(Opened::ReadOnly(Box::new(journal)));
            }
            journal.prepare_for_writing().await?;
            let journal = Arc::new(journal);
            let flusher = journal.spawn_flusher();
            Ok::<_, RunError>(Opened::Writing(journal, flusher))
        };
        self.opened
            .get_or_init(|| async {
                open.await
                    .map_err(|e| {
                        tracing::warn!(
                            "the run's journal is not used ({e}): answers are not journalled"
                        )
                    })
                    .ok()
            })
            .await
            .as_ref()
    }

    /// Write what is still buffered.
    pub async fn close(&self) -> Result<()> {
        if let Some(Some(Opened::Writing(journal, flusher))) = self.opened.get() {
            flusher.abort();
            journal.flush().await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl RequestJournal for OnDemandJournal {
    async fn lookup(&self, hash: &caiflow_llm::RequestHash) -> Option<caiflow_llm::Completion> {
        match self.opened().await? {
            Opened::Writing(j, _) => j.lookup(hash).await,
            Opened::ReadOnly(j) => j.lookup(hash).await,
        }
    }

    fn record(
        &self,
        hash: &caiflow_llm::RequestHash,
        result: &std::result::Result<caiflow_llm::Completion, caiflow_llm::LlmError>,
    ) {
        // A request is looked up (and the journal opened) before it is sent.
        if let Some(Some(Opened::Writing(j, _))) = self.opened.get() {
            j.record(hash, result);
        }
    }
}

/// A run being executed: its store, journal and session (whose progress a caller may show
/// while it runs).
pub struct PlanRun {
    pub store: RunStore,
    pub journal: Arc<Journal>,
    pub session: CaiSession,
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// Every statement ran; the tables were committed (or reused).
    Finished,
    /// Stopped by its stop token: completed requests are journalled, nothing half-done is
    /// committed; running it again continues.
    Interrupted,
    /// A statement failed; what completed before is kept.
    Failed(RunError),
}

impl PlanRun {
    /// Open a run for writing: the store must be writable (checked before anything is sent)
    /// and its journal readable.
    pub async fn open(store: RunStore, endpoints: Endpoints) -> Result<PlanRun> {
        store.check_writable().await?;
        let journal = Arc::new(Journal::open(store.clone()).await?);
        journal.prepare_for_writing().await?;
        endpoints
            .batches()
            .set_store(Arc::new(crate::journal::batches::JournalBatches {
                store: store.clone(),
                journal: journal.clone(),
            }));
        let session = CaiSession::with_journal(endpoints, Some(journal.clone()));
        Ok(PlanRun {
            store,
            journal,
            session,
        })
    }

    /// A dry run (`caiflow run --dry-run`, with dry endpoints): tables are written to
    /// `scratch` (a temporary store the caller deletes), requests the run at `journal_of`
    /// journalled are served from its journal, and nothing is recorded there or anywhere.
    pub async fn dry(
        scratch: RunStore,
        endpoints: Endpoints,
        journal_of: Option<RunStore>,
    ) -> Result<PlanRun> {
        let journal = Arc::new(Journal::open(scratch.clone()).await?);
        journal.prepare_for_writing().await?;
        let lookup: Option<Arc<dyn RequestJournal>> = match journal_of {
            Some(store) => Some(Arc::new(ReadOnly(Journal::open(store).await?))),
            None => None,
        };
        Ok(PlanRun {
            store: scratch,
            journal,
            session: CaiSession::with_journal(endpoints, lookup),
        })
    }

    /// Run `sql`'s statements in order. When `options.stop` is cancelled, the run is driven
    /// for up to `grace` more (or until `hard_stop` is cancelled) so requests in flight finish
    /// and are journalled; then the journal is flushed and the run ends `Interrupted`.
    /// Returns how it ended and what happened to each materialized table.
    pub async fn execute(
        &self,
        sql: &str,
        options: RunOptions,
        grace: Duration,
        hard_stop: CancellationToken,
        on_done: impl FnMut(&StatementOutcome),
    ) -> (RunEnd, Vec<(String, TableOutcome)>) {
        let stop = options.stop.clone();
        let flusher = self.journal.spawn_flusher();
        let mut runner = Runner::new(&self.session, &self.store, options);
        let finished = {
            let run = runner.run(sql, on_done);
            tokio::pin!(run);
            let first = tokio::select! {
                r = &mut run => Some(r),
                _ = stop.cancelled() => None,
            };
            if first.is_none() {
                tokio::select! {
                    _ = &mut run => {}
                    _ = tokio::time::sleep(grace) => {}
                    _ = hard_stop.cancelled() => {}
                }
            }
            first
        };
        flusher.abort();
        let tables = std::mem::take(&mut runner.tables);
        let flushed = self.journal.flush().await;
        let end = match (finished, flushed) {
            (None, _) => RunEnd::Interrupted,
            (Some(Err(_)), _) if stop.is_cancelled() => RunEnd::Interrupted,
            (Some(Err(e)), _) => RunEnd::Failed(e),
            (Some(Ok(())), Err(e)) => RunEnd::Failed(e),
            (Some(Ok(())), Ok(())) => {
                if let Err(e) = self.journal.compact().await {
                    tracing::warn!("journal compaction failed (the journal stays valid): {e}");
                }
                RunEnd::Finished
            }
        };
        (end, tables)
    }
}
