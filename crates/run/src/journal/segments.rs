//! Segments (`journal/NAME.jsonl`): encoding a new one with its index, and listing a
//! journal's segments.

use caiflow_llm::{Completion, RequestHash};

use super::format::{Line, key_of};
use super::index::index_record;
use crate::error::Result;
use crate::store::RunStore;

/// A segment and its index, encoded as lines are added.
#[derive(Default)]
pub struct SegmentWriter {
    pub(super) data: Vec<u8>,
    pub(super) index: Vec<u8>,
}

impl SegmentWriter {
    /// Add a successful outcome (public for benchmarks that build synthetic journals).
    pub fn push_ok(&mut self, hash: &RequestHash, completion: Completion) -> Result<()> {
        self.push(&Line::new(hash, &Ok(completion)))
    }

    pub(super) fn push(&mut self, line: &Line) -> Result<()> {
        self.push_encoded(&line.h, line.ok, &line.encode()?);
        Ok(())
    }

    pub(super) fn push_encoded(&mut self, hash: &str, ok: bool, encoded: &[u8]) {
        if let Some(key) = key_of(hash) {
            self.index
                .extend_from_slice(&index_record(key, self.data.len() as u64, ok));
        }
        self.data.extend_from_slice(encoded);
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The segment's bytes and its index's.
    pub fn finish(self) -> (Vec<u8>, Vec<u8>) {
        (self.data, self.index)
    }
}

/// The journal's segments (`journal/NAME` for each `journal/NAME.jsonl`, sorted), and the
/// names of those that have an index (`journal/NAME.idx`).
pub(super) async fn segments(
    store: &RunStore,
) -> Result<(Vec<String>, std::collections::HashSet<String>)> {
    let mut names = vec![];
    let mut indexed = std::collections::HashSet::new();
    for (path, _) in store.list(FOLDER).await? {
        if let Some(name) = path.strip_suffix(".jsonl") {
            names.push(name.to_string());
        } else if let Some(name) = path.strip_suffix(".idx") {
            indexed.insert(name.to_string());
        }
    }
    Ok((names, indexed))
}

/// The journal's folder in a run.
pub(super) const FOLDER: &str = "journal";
