//! Rolling a session's small object-store segments up into one, and merging them at the end
//! of a run (without failures).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::core::{Journal, Written, lock, read, write};
use super::format::{Lines, line_key};
use super::index::{index_record, index_records, location};
use crate::error::{Result, RunError};

impl Journal {
    /// Write `segments` as one (with its index) and delete them (best effort: on failure
    /// they stay as they are, still valid).
    pub(super) async fn roll_up(&self, segments: &mut Vec<Written>) {
        let mut data = Vec::with_capacity(segments.iter().map(|w| w.data.len()).sum());
        let mut index = Vec::with_capacity(segments.iter().map(|w| w.index.len()).sum());
        for w in segments.iter() {
            let base = data.len() as u64;
            for (key, offset, ok) in index_records(&w.index) {
                index.extend_from_slice(&index_record(key, base + offset, ok));
            }
            data.extend_from_slice(&w.data);
        }
        let name = self.next_name();
        let put = async {
            self.store
                .put(&format!("{name}.jsonl"), Bytes::from(data))
                .await?;
            self.store
                .put(&format!("{name}.idx"), Bytes::from(index.clone()))
                .await
        };
        if let Err(e) = put.await {
            tracing::warn!("journal roll-up failed (its segments stay): {e}");
            return;
        }
        let id = self.add_segment(name);
        for (key, offset, ok) in index_records(&index) {
            if ok {
                write(&self.recent).insert(key, location(id, offset));
            }
        }
        let rolled: Vec<u32> = segments.iter().map(|w| w.segment).collect();
        {
            let mut written = lock(&self.written);
            written.retain(|s| !rolled.contains(s));
            written.push(id);
        }
        for w in segments.drain(..) {
            self.delete_segment(w.segment).await;
        }
    }

    pub(super) async fn delete_segment(&self, segment: u32) {
        let Some(name) = read(&self.names).get(segment as usize).cloned() else {
            return;
        };
        let _ = self.store.delete_one(&format!("{name}.idx")).await;
        if self
            .store
            .delete_one(&format!("{name}.jsonl"))
            .await
            .is_ok()
        {
            self.segments.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Merge the segments this session wrote to an object store into one, without their
    /// failures (they were retried, or are visible in the tables' `error` column). Streamed:
    /// neither the segments nor the merge are held in memory. Earlier sessions' segments
    /// are left as they are; a local session's segment already is one.
    pub async fn compact(&self) -> Result<()> {
        self.flush().await?;
        let mut unrolled = self.unrolled.lock().await;
        let written: Vec<u32> = lock(&self.written).clone();
        if written.len() <= 1 {
            return Ok(());
        }
        let names: Vec<String> = {
            let all = read(&self.names);
            written
                .iter()
                .filter_map(|s| all.get(*s as usize).cloned())
                .collect()
        };
        let merged = self.next_name();
        let mut data = self.store.writer(&format!("{merged}.jsonl"));
        let mut index = self.store.writer(&format!("{merged}.idx"));
        let mut offset = 0u64;
        let io = |e: std::io::Error| RunError::StoreOp {
            what: "writing the merged journal segment".into(),
            cause: Box::new(e),
        };
        for name in &names {
            let mut chunks = self.store.get_stream(&format!("{name}.jsonl"), 0).await?;
            let mut lines = Lines::default();
            while let Some(chunk) = chunks.next().await {
                let (mut kept, mut records) = (vec![], vec![]);
                lines.feed(&chunk?, |_, raw| {
                    if let Some((key, true)) = line_key(raw) {
                        records.extend_from_slice(&index_record(key, offset, true));
                        kept.extend_from_slice(raw);
                        kept.push(b'\n');
                        offset += raw.len() as u64 + 1;
                    }
                });
                data.write_all(&kept).await.map_err(io)?;
                index.write_all(&records).await.map_err(io)?;
            }
        }
        data.shutdown().await.map_err(io)?;
        index.shutdown().await.map_err(io)?;
        self.add_segment(merged);
        for s in written {
            self.delete_segment(s).await;
        }
        unrolled.clear();
        lock(&self.written).clear();
        self.failures.store(0, Ordering::Relaxed);
        Ok(())
    }
}
