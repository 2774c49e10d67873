//! What the LLM stages need of a run's request journal: serve a request completed before,
//! record a new outcome. The run layer implements it over its store; the engine never sees
//! how outcomes are kept.

use std::fmt::Debug;
use std::sync::Arc;

use caiflow_llm::{Completion, LlmError, RequestHash};

#[async_trait::async_trait]
pub trait RequestJournal: Send + Sync + Debug {
    /// The completion journalled for `hash`, if one succeeded before (failures are never
    /// served: they are retried). Async: a journal may read the result from storage.
    async fn lookup(&self, hash: &RequestHash) -> Option<Completion>;

    /// Record the outcome of a request that was sent.
    fn record(&self, hash: &RequestHash, result: &Result<Completion, LlmError>);
}

/// The session-config extension that carries a run's journal to the stages.
#[derive(Clone, Debug)]
pub struct JournalHandle(pub Arc<dyn RequestJournal>);
