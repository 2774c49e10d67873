//! Batches in flight, recorded beside the journal: one JSON object per submitted batch,
//! `journal/batches/{provider id}.json`, written when it is submitted and again when it is
//! collected. A run that starts reads those still in flight and polls them instead of
//! submitting their requests again ([`caiflow_llm::batch`]). Results of such batches that no
//! row of the new process waits for are journalled as any outcome, so rows reached later
//! are served from the journal.
//!
//! Records come back from storage that anyone could have written: they are bounded in size,
//! their ids checked (they name objects here and go into URLs), their hashes checked; a bad
//! one is skipped with a warning (its requests are then sent again, never lost).

use std::sync::Arc;

use bytes::Bytes;

use caiflow_llm::batch::{BatchRecord, BatchState, BatchStore, checked_id};
use caiflow_llm::{Completion, RequestHash};

use super::Journal;
use crate::error::{Result, RunError};
use crate::store::RunStore;

/// The folder of batch records, in the run.
pub const FOLDER: &str = "journal/batches";

/// The largest record read: 100,000 hashes of 64 hex digits and their quotes.
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// The run's journal as the store of its batches.
#[derive(Debug)]
pub struct JournalBatches {
    pub store: RunStore,
    pub journal: Arc<Journal>,
}

fn valid(record: &BatchRecord) -> bool {
    checked_id("batch", &record.id).is_ok()
        && record
            .requests
            .iter()
            .all(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Every batch recorded in the run, in flight or collected, oldest first.
pub async fn list(store: &RunStore) -> Result<Vec<BatchRecord>> {
    let mut out = vec![];
    for (path, size) in store.list(FOLDER).await? {
        if !path.ends_with(".json") {
            continue;
        }
        if size > MAX_RECORD_BYTES {
            tracing::warn!("{path}: {size} bytes, larger than a batch record can be: skipped");
            continue;
        }
        let Some(bytes) = store.get(&path).await? else {
            continue;
        };
        match serde_json::from_slice::<BatchRecord>(&bytes) {
            Ok(r) if valid(&r) => out.push(r),
            Ok(_) => {
                tracing::warn!("{path}: a batch record with an invalid id or request hash: skipped")
            }
            Err(e) => tracing::warn!("{path}: not a batch record ({e}): skipped"),
        }
    }
    out.sort_by_key(|r| r.submitted_unix_ms);
    Ok(out)
}

async fn save(store: &RunStore, record: &BatchRecord) -> Result<()> {
    let id = checked_id("batch", &record.id).map_err(|e| RunError::Store(e.message))?;
    let bytes = serde_json::to_vec(record).map_err(|e| RunError::Json {
        what: "encoding a batch record".into(),
        cause: e,
    })?;
    store
        .put(&format!("{FOLDER}/{id}.json"), Bytes::from(bytes))
        .await
}

#[async_trait::async_trait]
impl BatchStore for JournalBatches {
    async fn in_flight(&self, endpoint: &str) -> std::result::Result<Vec<BatchRecord>, String> {
        Ok(list(&self.store)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.endpoint == endpoint && r.state == BatchState::InFlight)
            .collect())
    }

    async fn save(&self, record: &BatchRecord) -> std::result::Result<(), String> {
        save(&self.store, record).await.map_err(|e| e.to_string())
    }

    async fn lookup(&self, hash: &RequestHash) -> Option<Completion> {
        self.journal.lookup(hash).await
    }

    fn record(&self, hash: &RequestHash, completion: &Completion) {
        self.journal.record(hash, &Ok(completion.clone()));
    }
}
