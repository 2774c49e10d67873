//! The request journal: every completed request of a run, keyed by its request hash (model,
//! normalized messages, sampling parameters, seed, prompt-template version).
//!
//! A resume or re-run serves journalled results without calling the endpoint. Failures are
//! journalled as failures (with their reason) and are never served: they are retried.
//! On a local store each outcome is appended to this process's segment file as it completes
//! (one `write`; the page cache survives `kill -9`), so a resume repeats at most the requests
//! that were in flight. Object stores have no append: there, outcomes are buffered and
//! written as a new segment object (`journal/{session}-{seq}.jsonl`) every 100 ms, or as soon
//! as 256 are waiting, so at most the requests in flight and about 100 ms of completions are
//! repeated (at most 10 PUTs a second while outcomes arrive, plus one per 256 outcomes). So
//! that a long run does not leave tens of thousands of small objects for a resume to read,
//! every 64 segments of a session are rolled up into one (written before the small ones are
//! deleted: a crash in between leaves duplicates, which are harmless). At the end of a run the
//! segments are compacted into one.
//!
//! `journal/SCHEME` names the request-hash scheme the journal's keys were computed with
//! ([`caiflow_llm::REQUEST_HASH_SCHEME`]; a journal without it predates the file). Entries of
//! another scheme can never match a request of this one: opening such a journal says how many
//! requests will be sent again, before anything is sent, instead of silently paying twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use caiflow_engine::journal::RequestJournal;
use caiflow_llm::{Completion, LlmError, REQUEST_HASH_SCHEME, RequestHash};

use crate::error::Result;
use crate::store::RunStore;

/// One journal line.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Line {
    /// Request hash.
    h: String,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<Vec<(String, f64)>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Line {
    fn completion(&self) -> Completion {
        Completion {
            text: self.text.clone().unwrap_or_default(),
            finish_reason: self.finish_reason.clone(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            top_logprobs: self.top_logprobs.clone(),
        }
    }
}

/// Counts for `inspect` and the run summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub results: usize,
    pub failures: usize,
    pub segments: usize,
    pub served: u64,
    pub recorded: u64,
    /// Results keyed by another hash scheme: unusable, their requests are sent again.
    pub stale: usize,
    /// The scheme those stale entries were written with.
    pub stale_scheme: Option<String>,
}

#[derive(Debug)]
pub struct Journal {
    store: RunStore,
    results: RwLock<HashMap<String, Arc<Line>>>,
    failures: AtomicU64,
    segments: AtomicU64,
    pending: Mutex<Vec<Line>>,
    /// Wakes the flusher when `FLUSH_LINES` outcomes are waiting.
    full: tokio::sync::Notify,
    /// This session's segments since the last roll-up, with their bytes.
    unrolled: tokio::sync::Mutex<Vec<(String, Bytes)>>,
    /// Local stores: this process's segment file, appended to as outcomes complete (opened
    /// at the first outcome, so reading a journal leaves no trace).
    append_path: Option<std::path::PathBuf>,
    append: Mutex<Option<std::fs::File>>,
    /// Unique per process, so concurrent or successive writers never overwrite a segment.
    session: String,
    seq: AtomicU64,
    served: AtomicU64,
    recorded: AtomicU64,
    stale: usize,
    stale_scheme: Option<String>,
}

const FOLDER: &str = "journal";
const SCHEME_FILE: &str = "journal/SCHEME";
/// What journals written before `journal/SCHEME` existed were keyed by.
const FIRST_SCHEME: &str = "caiflow-request-v1 (JSON text)";
/// How often buffered outcomes are written to an object store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered outcomes that trigger a write at once.
pub const FLUSH_LINES: usize = 256;
/// Segments of one session rolled up into one.
const ROLL_UP_SEGMENTS: usize = 64;
/// Segments read at once when a journal is opened.
const READ_AHEAD: usize = 16;

impl Journal {
    /// Load every segment of the run's journal.
    pub async fn open(store: RunStore) -> Result<Journal> {
        let mut results = HashMap::new();
        let mut failures = 0u64;
        let objects = segments(&store).await?;
        let scheme = match store.get(SCHEME_FILE).await? {
            Some(b) => String::from_utf8_lossy(&b).trim().to_string(),
            None => FIRST_SCHEME.to_string(),
        };
        let reader = &store;
        let mut reads = futures::stream::iter(
            objects
                .iter()
                .map(|(path, _)| async move { reader.get(path).await.map(|b| (path, b)) }),
        )
        .buffered(READ_AHEAD);
        while let Some(read) = reads.next().await {
            let (path, Some(bytes)) = read? else {
                continue;
            };
            for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                // A torn last line (a crash mid-write) is skipped, and said.
                let Ok(line) = serde_json::from_slice::<Line>(raw) else {
                    tracing::warn!(
                        "journal {path}: skipped an unreadable line ({} bytes)",
                        raw.len()
                    );
                    continue;
                };
                if line.ok {
                    results.insert(line.h.clone(), Arc::new(line));
                } else {
                    failures += 1;
                }
            }
        }
        drop(reads);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let session = format!("{nanos:x}-{}", std::process::id());
        let (stale, stale_scheme) = if scheme != REQUEST_HASH_SCHEME && !objects.is_empty() {
            let n = results.len();
            results.clear();
            failures = 0;
            (n, Some(scheme))
        } else {
            (0, None)
        };
        let append_path = store
            .local_path(FOLDER)
            .map(|f| f.join(format!("{session}-append.jsonl")));
        Ok(Journal {
            append_path,
            append: Mutex::new(None),
            store,
            results: RwLock::new(results),
            failures: AtomicU64::new(failures),
            segments: AtomicU64::new(objects.len() as u64),
            pending: Mutex::new(vec![]),
            full: tokio::sync::Notify::new(),
            unrolled: tokio::sync::Mutex::new(vec![]),
            session,
            seq: AtomicU64::new(0),
            served: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            stale,
            stale_scheme,
        })
    }

    /// Get the journal ready for writing: record this caiflow's hash scheme, and drop the
    /// segments of another scheme (no request of this one can match them).
    pub async fn prepare_for_writing(&self) -> Result<()> {
        if self.stale_scheme.is_some() {
            for (path, _) in segments(&self.store).await? {
                self.store.delete_one(&path).await?;
            }
        }
        self.store
            .put(SCHEME_FILE, Bytes::from(format!("{REQUEST_HASH_SCHEME}\n")))
            .await
    }

    /// A journalled result for this request hash.
    pub fn lookup(&self, hash: &RequestHash) -> Option<Completion> {
        let results = self.results.read().unwrap_or_else(|p| p.into_inner());
        let line = results.get(hash.as_str())?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Some(line.completion())
    }

    pub fn record(&self, hash: &RequestHash, result: &std::result::Result<Completion, LlmError>) {
        let line = match result {
            Ok(c) => Line {
                h: hash.to_string(),
                ok: true,
                text: Some(c.text.clone()),
                finish_reason: c.finish_reason.clone(),
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                top_logprobs: c.top_logprobs.clone(),
                error: None,
            },
            Err(e) => Line {
                h: hash.to_string(),
                ok: false,
                text: None,
                finish_reason: None,
                prompt_tokens: None,
                completion_tokens: None,
                top_logprobs: None,
                error: Some(e.to_string()),
            },
        };
        if line.ok {
            let mut results = self.results.write().unwrap_or_else(|p| p.into_inner());
            results.insert(line.h.clone(), Arc::new(line.clone()));
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.recorded.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = &self.append_path {
            match self.append_line(path, &line) {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    "journal append failed, keeping the entry for the next flush: {e}"
                ),
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.push(line);
        if pending.len() >= FLUSH_LINES {
            self.full.notify_one();
        }
    }

    fn append_line(&self, path: &std::path::Path, line: &Line) -> std::io::Result<()> {
        use std::io::Write;
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut file = self.append.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)?;
            }
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            );
        }
        match file.as_mut() {
            // One write per line: a killed process leaves whole lines behind.
            Some(f) => f.write_all(&bytes),
            None => Err(std::io::Error::other("journal file not open")),
        }
    }

    /// Write what is pending as a new segment.
    pub async fn flush(&self) -> Result<()> {
        let lines = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if lines.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(lines.len() * 256);
        for l in &lines {
            serde_json::to_writer(&mut buf, l).map_err(|e| crate::error::RunError::Json {
                what: "encoding a journal line".into(),
                cause: e,
            })?;
            buf.push(b'\n');
        }
        // One writer at a time: segments and roll-ups of this session keep their order.
        let mut unrolled = self.unrolled.lock().await;
        let path = self.next_segment();
        let bytes = Bytes::from(buf);
        if let Err(e) = self.store.put(&path, bytes.clone()).await {
            // Keep the lines for the next flush: nothing completed is lost to a hiccup.
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .splice(0..0, lines);
            return Err(e);
        }
        self.segments.fetch_add(1, Ordering::Relaxed);
        unrolled.push((path, bytes));
        if unrolled.len() >= ROLL_UP_SEGMENTS {
            self.roll_up(&mut unrolled).await;
        }
        Ok(())
    }

    fn next_segment(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{FOLDER}/{}-{seq:08}.jsonl", self.session)
    }

    /// Write `segments` as one and delete them (best effort: on failure they stay as they
    /// are, still valid).
    async fn roll_up(&self, segments: &mut Vec<(String, Bytes)>) {
        let mut buf = Vec::with_capacity(segments.iter().map(|(_, b)| b.len()).sum());
        for (_, b) in segments.iter() {
            buf.extend_from_slice(b);
        }
        let path = self.next_segment();
        if let Err(e) = self.store.put(&path, Bytes::from(buf)).await {
            tracing::warn!("journal roll-up failed (its segments stay): {e}");
            return;
        }
        self.segments.fetch_add(1, Ordering::Relaxed);
        for (old, _) in segments.drain(..) {
            if self.store.delete_one(&old).await.is_ok() {
                self.segments.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Flush every `FLUSH_EVERY`, or at once when `FLUSH_LINES` outcomes are waiting, until
    /// the returned handle is aborted.
    pub fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let journal = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(FLUSH_EVERY) => {}
                    _ = journal.full.notified() => {}
                }
                if let Err(e) = journal.flush().await {
                    tracing::warn!("journal flush failed (will retry): {e}");
                }
            }
        })
    }

    /// Rewrite the journal as one segment of its results (failures are dropped: they were
    /// retried or are visible in the tables' `error` column).
    pub async fn compact(&self) -> Result<()> {
        self.flush().await?;
        let before = segments(&self.store).await?;
        if before.len() <= 1 {
            return Ok(());
        }
        let mut buf = Vec::new();
        {
            let results = self.results.read().unwrap_or_else(|p| p.into_inner());
            for line in results.values() {
                serde_json::to_writer(&mut buf, line.as_ref()).map_err(|e| {
                    crate::error::RunError::Json {
                        what: "encoding a journal line".into(),
                        cause: e,
                    }
                })?;
                buf.push(b'\n');
            }
        }
        let mut unrolled = self.unrolled.lock().await;
        let compacted = self.next_segment();
        self.store.put(&compacted, Bytes::from(buf)).await?;
        for (path, _) in before {
            if path != compacted {
                let _ = self.store.delete_one(&path).await;
            }
        }
        unrolled.clear();
        self.segments.store(1, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        Ok(())
    }

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            results: self.results.read().unwrap_or_else(|p| p.into_inner()).len(),
            failures: self.failures.load(Ordering::Relaxed) as usize,
            segments: self.segments.load(Ordering::Relaxed) as usize,
            served: self.served.load(Ordering::Relaxed),
            recorded: self.recorded.load(Ordering::Relaxed),
            stale: self.stale,
            stale_scheme: self.stale_scheme.clone(),
        }
    }
}

impl RequestJournal for Journal {
    fn lookup(&self, hash: &RequestHash) -> Option<Completion> {
        Journal::lookup(self, hash)
    }

    fn record(&self, hash: &RequestHash, result: &std::result::Result<Completion, LlmError>) {
        Journal::record(self, hash, result)
    }
}

/// The journal's segment objects (`journal/*.jsonl`).
async fn segments(store: &RunStore) -> Result<Vec<(String, u64)>> {
    Ok(store
        .list(FOLDER)
        .await?
        .into_iter()
        .filter(|(path, _)| path.ends_with(".jsonl"))
        .collect())
}
