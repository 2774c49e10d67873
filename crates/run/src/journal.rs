//! The request journal: every completed request of a run, keyed by its request hash (model,
//! normalized messages, sampling parameters, seed, prompt-template version).
//!
//! A resume or re-run serves journalled results without calling the endpoint. Failures are
//! journalled as failures (with their reason) and are never served: they are retried.
//!
//! **Layout.** Outcomes are JSON lines in segment objects (`journal/NAME.jsonl`); beside each
//! segment, `journal/NAME.idx` indexes it: one 16-byte record per line (the first 8 bytes of
//! the request hash, then the line's byte offset, whose top bit marks a failure).
//!
//! **Lookups without the results in memory.** Opening a journal reads only the indexes (16
//! bytes an entry, never the answers' text) into one sorted array of (hash prefix, segment and
//! offset): 16 bytes per result resident, so start-up time and memory grow with the number of
//! entries, not with the size of the answers. A lookup binary-searches the array, reads the
//! one line at its offset (a positioned read of a local file, a ranged GET on S3) and checks
//! the full hash. Outcomes recorded in this session are found through a map of the same 16
//! bytes per entry. A segment without an index (a journal written before indexes, or one cut
//! off by a crash between its two writes) is scanned once on open, and its index is written
//! when the run continues.
//!
//! **Durability.** On a local store each outcome is appended to this process's segment and
//! index as it completes (one `write` each; the page cache survives `kill -9`), so a resume
//! repeats at most the requests that were in flight. Object stores have no append: there,
//! outcomes are buffered and written as a new segment and index every 100 ms, or as soon as
//! 256 are waiting, so at most the requests in flight and about 100 ms of completions are
//! repeated (at most 10 PUT pairs a second while outcomes arrive, plus one per 256 outcomes).
//! Every 64 segments of a session are rolled up into one (written before the small ones are
//! deleted: a crash in between leaves duplicates, which are harmless), and at the end of a
//! run the session's segments are merged into one, streamed, without its failures.
//!
//! `journal/SCHEME` names the request-hash scheme the journal's keys were computed with
//! ([`caiflow_llm::REQUEST_HASH_SCHEME`]). Entries of another scheme can never match a request
//! of this one: opening such a journal says how many requests will be sent again, before
//! anything is sent, instead of silently paying twice. Nothing is ever deleted for it: a
//! missing SCHEME file means the current scheme (entries that do not match are never served).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use caiflow_engine::journal::RequestJournal;
use caiflow_llm::{Completion, LlmError, REQUEST_HASH_SCHEME, RequestHash};

use crate::error::{Result, RunError};
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
    fn new(hash: &RequestHash, result: &std::result::Result<Completion, LlmError>) -> Line {
        match result {
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
        }
    }

    fn completion(self) -> Completion {
        Completion {
            text: self.text.unwrap_or_default(),
            finish_reason: self.finish_reason,
            // A journal written before counts were checked may hold absurd ones: never
            // served into a table (they fail its Int64 columns on every resume).
            prompt_tokens: caiflow_llm::plausible_tokens("prompt tokens", self.prompt_tokens),
            completion_tokens: caiflow_llm::plausible_tokens(
                "completion tokens",
                self.completion_tokens,
            ),
            top_logprobs: self.top_logprobs,
        }
    }

    /// The line as JSON with its newline.
    fn encode(&self) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(self).map_err(|e| RunError::Json {
            what: "encoding a journal line".into(),
            cause: e,
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// What an index needs of a line, read without copying its text.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    h: &'a str,
    ok: bool,
}

/// The first 8 bytes of a hex request hash, the key of the index.
fn key_of(hash: &str) -> Option<u64> {
    u64::from_str_radix(hash.get(..16)?, 16).ok()
}

/// Marks an index record's line as a failure.
const FAILURE: u64 = 1 << 63;
/// Bytes of one index record.
const RECORD: usize = 16;
/// Offsets take the low 40 bits of a location, segment ids the 24 above (1 TiB a segment,
/// 16 million segments).
const OFFSET_BITS: u32 = 40;

fn location(segment: u32, offset: u64) -> u64 {
    (u64::from(segment) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
}

fn split_location(loc: u64) -> (u32, u64) {
    ((loc >> OFFSET_BITS) as u32, loc & ((1 << OFFSET_BITS) - 1))
}

fn index_record(key: u64, offset: u64, ok: bool) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&key.to_le_bytes());
    r[8..].copy_from_slice(&(offset | if ok { 0 } else { FAILURE }).to_le_bytes());
    r
}

/// (key, offset, ok) of each whole record of an index (a torn tail is ignored).
fn index_records(bytes: &[u8]) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
    bytes.chunks_exact(RECORD).map(|r| {
        let mut k = [0u8; 8];
        let mut o = [0u8; 8];
        k.copy_from_slice(&r[..8]);
        o.copy_from_slice(&r[8..]);
        let (key, offset) = (u64::from_le_bytes(k), u64::from_le_bytes(o));
        (key, offset & !FAILURE, offset & FAILURE == 0)
    })
}

/// A segment and its index, encoded as lines are added.
#[derive(Default)]
pub struct SegmentWriter {
    data: Vec<u8>,
    index: Vec<u8>,
}

impl SegmentWriter {
    /// Add a successful outcome (public for benchmarks that build synthetic journals).
    pub fn push_ok(&mut self, hash: &RequestHash, completion: Completion) -> Result<()> {
        self.push(&Line::new(hash, &Ok(completion)))
    }

    fn push(&mut self, line: &Line) -> Result<()> {
        self.push_encoded(&line.h, line.ok, &line.encode()?);
        Ok(())
    }

    fn push_encoded(&mut self, hash: &str, ok: bool, encoded: &[u8]) {
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

/// Lines taken from the pending list for a write: put back unless the write completed (also
/// when the flush is dropped mid-write).
struct Taken<'a> {
    pending: &'a Mutex<Vec<Line>>,
    lines: Vec<Line>,
    done: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.done {
            let lines = std::mem::take(&mut self.lines);
            lock(self.pending).splice(0..0, lines);
        }
    }
}

/// This process's local segment, appended to as outcomes complete.
#[derive(Debug)]
struct Append {
    data: std::fs::File,
    index: std::fs::File,
    offset: u64,
    segment: u32,
}

/// A segment this session wrote to an object store, kept until it is rolled up.
#[derive(Debug)]
struct Written {
    segment: u32,
    data: Bytes,
    index: Vec<u8>,
}

#[derive(Debug)]
pub struct Journal {
    store: RunStore,
    /// Segment names (`journal/NAME`, without extension) by id: locations refer to these.
    names: RwLock<Vec<String>>,
    /// The results of the journal as opened: (key, location), sorted by key.
    index: Vec<(u64, u64)>,
    /// Results recorded in this session: key → location.
    recent: RwLock<HashMap<u64, u64>>,
    /// Outcomes waiting to be written (object stores, or a failed local append).
    pending: Mutex<Vec<Line>>,
    /// Wakes the flusher when `FLUSH_LINES` outcomes are waiting.
    full: tokio::sync::Notify,
    /// This session's segments since the last roll-up (one writer at a time).
    unrolled: tokio::sync::Mutex<Vec<Written>>,
    /// Every segment this session wrote to the object store (merged at the end of a run).
    written: Mutex<Vec<u32>>,
    /// Open local segment files, for positioned reads.
    files: Mutex<HashMap<u32, Arc<std::fs::File>>>,
    /// Local stores: this process's segment, opened at its first outcome (so reading a
    /// journal leaves no trace).
    local: Option<std::path::PathBuf>,
    append: Mutex<Option<Append>>,
    /// Indexes of segments that had none, written when the run continues.
    missing: Mutex<Vec<(String, Vec<u8>)>>,
    /// Other writers' segments taken in so far: name → index bytes read.
    seen: Mutex<HashMap<String, u64>>,
    /// Results other writers journalled since this journal was opened: (key, location),
    /// sorted by key.
    others: RwLock<Vec<(u64, u64)>>,
    /// Unique per process, so concurrent or successive writers never overwrite a segment.
    session: String,
    seq: AtomicU64,
    results: AtomicU64,
    failures: AtomicU64,
    segments: AtomicU64,
    served: AtomicU64,
    recorded: AtomicU64,
    stale: usize,
    stale_scheme: Option<String>,
}

const FOLDER: &str = "journal";
const SCHEME_FILE: &str = "journal/SCHEME";
/// How often buffered outcomes are written to an object store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered outcomes that trigger a write at once.
pub const FLUSH_LINES: usize = 256;
/// Segments of one session rolled up into one.
const ROLL_UP_SEGMENTS: usize = 64;
/// Segments (or indexes) read at once when a journal is opened.
const READ_AHEAD: usize = 16;
/// Bytes read at a time when reading a line at its offset.
const LINE_READ: usize = 8 << 10;

/// What opening found in one segment.
struct Indexed {
    results: Vec<(u64, u64)>,
    failures: Vec<u64>,
    /// Bytes of the index taken in (whole records).
    read: u64,
    /// The index built by scanning, when the segment had none.
    built: Option<Vec<u8>>,
}

impl Journal {
    /// Open the run's journal: read every segment's index (scanning segments that have none).
    pub async fn open(store: RunStore) -> Result<Journal> {
        let (names, indexed) = segments(&store).await?;
        let scheme = match store.get(SCHEME_FILE).await? {
            Some(b) => String::from_utf8_lossy(&b).trim().to_string(),
            // A lost SCHEME (a partial copy, a hand clean-up) says nothing about the keys:
            // the entries are kept and served where they match (a key of another scheme can
            // never match a request of this one, so keeping them costs nothing).
            None => {
                if !names.is_empty() {
                    tracing::warn!(
                        "{}/{SCHEME_FILE} is missing: the journal's entries are kept and served where they match",
                        store.display
                    );
                }
                REQUEST_HASH_SCHEME.to_string()
            }
        };
        let reader = &store;
        // Owned names: the reads' futures borrow nothing but the store (so opening is a
        // `Send` future that any task may await).
        let mut reads =
            futures::stream::iter(names.clone().into_iter().enumerate().map(|(id, name)| {
                let has_index = indexed.contains(&name);
                async move {
                    let found = if has_index {
                        read_index(reader, &name, id as u32, 0).await
                    } else {
                        scan_segment(reader, &name, id as u32).await
                    };
                    found.map(|f| (name, f))
                }
            }))
            .buffered(READ_AHEAD);
        let mut index: Vec<(u64, u64)> = vec![];
        let mut failed: Vec<u64> = vec![];
        let mut missing = vec![];
        let mut seen = HashMap::new();
        while let Some(read) = reads.next().await {
            let (name, found) = read?;
            seen.insert(name.clone(), found.read);
            index.extend(found.results);
            failed.extend(found.failures);
            if let Some(built) = found.built {
                missing.push((name.clone(), built));
            }
        }
        drop(reads);
        index.sort_unstable_by_key(|(k, _)| *k);
        index.dedup_by_key(|(k, _)| *k);
        index.shrink_to_fit();
        // Failures that were retried successfully since do not count.
        failed.sort_unstable();
        failed.dedup();
        let failures = failed
            .iter()
            .filter(|k| index.binary_search_by_key(*k, |(key, _)| *key).is_err())
            .count() as u64;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let session = format!("{nanos:x}-{}", std::process::id());
        let (stale, stale_scheme, failures) = if scheme != REQUEST_HASH_SCHEME && !names.is_empty()
        {
            let n = index.len();
            index = vec![];
            missing.clear();
            (n, Some(scheme), 0)
        } else {
            (0, None, failures)
        };
        let local = store
            .local_path(FOLDER)
            .map(|f| f.join(format!("{session}-append")));
        Ok(Journal {
            results: AtomicU64::new(index.len() as u64),
            segments: AtomicU64::new(names.len() as u64),
            names: RwLock::new(names),
            index,
            recent: RwLock::new(HashMap::new()),
            pending: Mutex::new(vec![]),
            full: tokio::sync::Notify::new(),
            unrolled: tokio::sync::Mutex::new(vec![]),
            written: Mutex::new(vec![]),
            files: Mutex::new(HashMap::new()),
            local,
            append: Mutex::new(None),
            missing: Mutex::new(missing),
            seen: Mutex::new(seen),
            others: RwLock::new(vec![]),
            store,
            session,
            seq: AtomicU64::new(0),
            failures: AtomicU64::new(failures),
            served: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            stale,
            stale_scheme,
        })
    }

    /// Get the journal ready for writing: record this caiflow's hash scheme and write the
    /// indexes that opening had to build. Segments of another scheme are never deleted
    /// (paid answers stay on disk, for an older caiflow to serve); no request of this scheme
    /// matches their keys.
    pub async fn prepare_for_writing(&self) -> Result<()> {
        let missing = std::mem::take(&mut *lock(&self.missing));
        for (name, index) in missing {
            self.store
                .put(&format!("{name}.idx"), Bytes::from(index))
                .await?;
        }
        self.store
            .put(SCHEME_FILE, Bytes::from(format!("{REQUEST_HASH_SCHEME}\n")))
            .await
    }

    /// Take in what other processes journalled since this journal was opened or last
    /// refreshed (executors of a cluster write one journal at once: a task re-run elsewhere
    /// finds what the first attempt completed). Reads only what is new: indexes of new
    /// segments, and the records appended to other processes' local segments since.
    /// Returns how many results were added.
    pub async fn refresh(&self) -> Result<usize> {
        // Indexes and their sizes: one whose segment is not listed yet, or that has not
        // grown since it was read, is skipped (taken next time).
        let listed = self.store.list(FOLDER).await?;
        let segments: std::collections::HashSet<&str> = listed
            .iter()
            .filter_map(|(p, _)| p.strip_suffix(".jsonl"))
            .collect();
        let mut indexes: Vec<(String, u64)> = listed
            .iter()
            .filter_map(|(p, size)| Some((p.strip_suffix(".idx")?.to_string(), *size)))
            .filter(|(name, _)| segments.contains(name.as_str()) && !name.contains(&self.session))
            .collect();
        indexes.sort();
        let mut added = 0;
        let mut taken: Vec<(u64, u64)> = vec![];
        for (name, size) in indexes {
            let from = lock(&self.seen).get(&name).copied();
            if from.is_some_and(|read| size <= read) {
                continue;
            }
            let known = read(&self.names).iter().position(|n| *n == name);
            let segment = match known {
                Some(id) => id as u32,
                None => self.add_segment(name.clone()),
            };
            let found = read_index(&self.store, &name, segment, from.unwrap_or(0)).await?;
            lock(&self.seen).insert(name, found.read);
            added += found.results.len();
            taken.extend(found.results);
        }
        if !taken.is_empty() {
            // 16 bytes a result, sorted, as the journal opened (a map would take three
            // times that); refreshes come when tasks start, so merges are few.
            taken.sort_unstable_by_key(|(k, _)| *k);
            let mut others = write(&self.others);
            let merged = merge_sorted(std::mem::take(&mut *others), taken);
            *others = merged;
            self.results.fetch_add(added as u64, Ordering::Relaxed);
        }
        Ok(added)
    }

    /// The journalled result for this request hash, read from its segment.
    pub async fn lookup(&self, hash: &RequestHash) -> Option<Completion> {
        let key = key_of(hash.as_str())?;
        let waiting = lock(&self.pending)
            .iter()
            .rev()
            .find(|l| l.ok && l.h == hash.as_str())
            .cloned();
        if let Some(line) = waiting {
            self.served.fetch_add(1, Ordering::Relaxed);
            return Some(line.completion());
        }
        let recent = read(&self.recent).get(&key).copied();
        let start = self.index.partition_point(|(k, _)| *k < key);
        let stored = self.index[start..]
            .iter()
            .take_while(|(k, _)| *k == key)
            .map(|(_, loc)| *loc);
        let others: Vec<u64> = {
            let others = read(&self.others);
            let start = others.partition_point(|(k, _)| *k < key);
            others[start..]
                .iter()
                .take_while(|(k, _)| *k == key)
                .map(|(_, loc)| *loc)
                .collect()
        };
        for loc in recent.into_iter().chain(stored).chain(others) {
            match self.read_line(loc).await {
                Ok(line) if line.ok && line.h == hash.as_str() => {
                    self.served.fetch_add(1, Ordering::Relaxed);
                    return Some(line.completion());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("journal: {e}; the request is sent again"),
            }
        }
        None
    }

    /// The line at `loc`.
    async fn read_line(&self, loc: u64) -> Result<Line> {
        let (segment, offset) = split_location(loc);
        let name = read(&self.names)
            .get(segment as usize)
            .cloned()
            .ok_or_else(|| RunError::Store(format!("journal segment {segment} is unknown")))?;
        let path = format!("{name}.jsonl");
        let raw = match self.store.local_path(&path) {
            Some(local) => self.read_local(segment, &local, offset)?,
            None => self.read_remote(&path, offset).await?,
        };
        let Some(end) = raw.iter().position(|b| *b == b'\n') else {
            return Err(RunError::Store(format!(
                "{path}: the line at {offset} is cut off"
            )));
        };
        serde_json::from_slice(&raw[..end]).map_err(|e| RunError::Json {
            what: format!("a line of {path} at {offset}"),
            cause: e,
        })
    }

    /// A local segment's bytes from `offset` to the end of that line (or of the file): a
    /// positioned read, from the page cache when the segment was just written.
    fn read_local(&self, segment: u32, local: &std::path::Path, offset: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = {
            let mut files = lock(&self.files);
            match files.get(&segment) {
                Some(f) => f.clone(),
                None => {
                    let f =
                        Arc::new(std::fs::File::open(local).map_err(|e| RunError::io(local, e))?);
                    files.insert(segment, f.clone());
                    f
                }
            }
        };
        let mut buf = vec![];
        let mut chunk = vec![0u8; LINE_READ];
        loop {
            let n = file
                .read_at(&mut chunk, offset + buf.len() as u64)
                .map_err(|e| RunError::io(local, e))?;
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || chunk[..n].contains(&b'\n') {
                return Ok(buf);
            }
        }
    }

    /// An object-store segment's bytes from `offset` to the end of that line: a GET from the
    /// offset, dropped once the line is in.
    async fn read_remote(&self, path: &str, offset: u64) -> Result<Vec<u8>> {
        let mut chunks = self.store.get_stream(path, offset).await?;
        let mut buf = vec![];
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            buf.extend_from_slice(&chunk);
            if chunk.contains(&b'\n') {
                break;
            }
        }
        Ok(buf)
    }

    pub fn record(&self, hash: &RequestHash, result: &std::result::Result<Completion, LlmError>) {
        let line = Line::new(hash, result);
        self.recorded.fetch_add(1, Ordering::Relaxed);
        if !line.ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(base) = &self.local {
            match self.append_line(base, &line) {
                Ok(loc) => {
                    if let Some(key) = key_of(&line.h).filter(|_| line.ok) {
                        self.remember(key, loc);
                    }
                    return;
                }
                Err(e) => tracing::warn!(
                    "journal append failed, keeping the entry for the next flush: {e}"
                ),
            }
        }
        let mut pending = lock(&self.pending);
        pending.push(line);
        if pending.len() >= FLUSH_LINES {
            self.full.notify_one();
        }
    }

    /// Register a new segment name; returns its id.
    fn add_segment(&self, name: String) -> u32 {
        let mut names = write(&self.names);
        names.push(name);
        self.segments.fetch_add(1, Ordering::Relaxed);
        (names.len() - 1) as u32
    }

    /// Append `line` to this process's local segment and its index; returns its location.
    fn append_line(&self, base: &std::path::Path, line: &Line) -> Result<u64> {
        use std::io::Write;
        let bytes = line.encode()?;
        let mut append = lock(&self.append);
        if append.is_none() {
            let open = |ext: &str| {
                let path = base.with_extension(ext);
                if let Some(folder) = path.parent() {
                    std::fs::create_dir_all(folder).map_err(|e| RunError::io(folder, e))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| RunError::io(&path, e))
            };
            let (data, index) = (open("jsonl")?, open("idx")?);
            let name = format!("{FOLDER}/{}-append", self.session);
            let segment = self.add_segment(name);
            *append = Some(Append {
                data,
                index,
                offset: 0,
                segment,
            });
        }
        let a = append
            .as_mut()
            .ok_or_else(|| RunError::Store("journal file not open".into()))?;
        let offset = a.offset;
        // One write per line, then one per index record: a killed process leaves whole lines
        // behind, and an index that lags its segment by at most the line being written.
        a.data
            .write_all(&bytes)
            .map_err(|e| RunError::io(base, e))?;
        a.offset += bytes.len() as u64;
        if let Some(key) = key_of(&line.h) {
            a.index
                .write_all(&index_record(key, offset, line.ok))
                .map_err(|e| RunError::io(base, e))?;
        }
        Ok(location(a.segment, offset))
    }

    fn next_name(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{FOLDER}/{}-{seq:08}", self.session)
    }

    /// Make this process's local appends durable (fsync of its segment and index): called by
    /// the flusher every [`FLUSH_EVERY`] and at every flush, so a power loss costs at most
    /// that much of the outcomes, not what the page cache held.
    pub async fn sync_local(&self) -> Result<()> {
        let files = {
            let append = lock(&self.append);
            append
                .as_ref()
                .map(|a| (a.data.try_clone(), a.index.try_clone()))
        };
        let Some((data, index)) = files else {
            return Ok(());
        };
        let base = self.local.clone().unwrap_or_default();
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            data?.sync_data()?;
            index?.sync_data()
        })
        .await
        .map_err(|e| RunError::Store(format!("journal sync: {e}")))?;
        synced.map_err(|e| RunError::io(base, e))
    }

    /// Write what is pending as a new segment (and its index). The lines leave the pending
    /// list only once written: a flush cut short (an error, or its task aborted mid-PUT by a
    /// stop) puts them back for the next one.
    pub async fn flush(&self) -> Result<()> {
        self.sync_local().await?;
        let mut taken = Taken {
            pending: &self.pending,
            lines: std::mem::take(&mut *lock(&self.pending)),
            done: false,
        };
        if taken.lines.is_empty() {
            return Ok(());
        }
        let lines = &taken.lines;
        let mut segment = SegmentWriter::default();
        for l in lines {
            segment.push(l)?;
        }
        let (data, index) = segment.finish();
        // One writer at a time: segments and roll-ups of this session keep their order.
        let mut unrolled = self.unrolled.lock().await;
        let name = self.next_name();
        let data = Bytes::from(data);
        let written = async {
            self.store
                .put(&format!("{name}.jsonl"), data.clone())
                .await?;
            self.store
                .put(&format!("{name}.idx"), Bytes::from(index.clone()))
                .await
        };
        // On an error the lines stay for the next flush (`taken` puts them back): nothing
        // completed is lost to a hiccup.
        written.await?;
        taken.done = true;
        let id = self.add_segment(name);
        lock(&self.written).push(id);
        for (key, offset, ok) in index_records(&index) {
            if ok {
                self.remember(key, location(id, offset));
            }
        }
        unrolled.push(Written {
            segment: id,
            data,
            index,
        });
        if unrolled.len() >= ROLL_UP_SEGMENTS {
            self.roll_up(&mut unrolled).await;
        }
        Ok(())
    }

    /// Remember where this session put a result.
    fn remember(&self, key: u64, loc: u64) {
        let known = self.index.binary_search_by_key(&key, |(k, _)| *k).is_ok();
        if write(&self.recent).insert(key, loc).is_none() && !known {
            self.results.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Write `segments` as one (with its index) and delete them (best effort: on failure
    /// they stay as they are, still valid).
    async fn roll_up(&self, segments: &mut Vec<Written>) {
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

    async fn delete_segment(&self, segment: u32) {
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

    pub fn stats(&self) -> JournalStats {
        JournalStats {
            results: self.results.load(Ordering::Relaxed) as usize,
            failures: self.failures.load(Ordering::Relaxed) as usize,
            segments: self.segments.load(Ordering::Relaxed) as usize,
            served: self.served.load(Ordering::Relaxed),
            recorded: self.recorded.load(Ordering::Relaxed),
            stale: self.stale,
            stale_scheme: self.stale_scheme.clone(),
        }
    }
}

#[async_trait::async_trait]
impl RequestJournal for Journal {
    async fn lookup(&self, hash: &RequestHash) -> Option<Completion> {
        Journal::lookup(self, hash).await
    }

    fn record(&self, hash: &RequestHash, result: &std::result::Result<Completion, LlmError>) {
        Journal::record(self, hash, result)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Splits a segment's bytes, arriving in chunks, into lines with their offsets.
#[derive(Default)]
struct Lines {
    carry: Vec<u8>,
    /// Offset of the first byte of `carry` in the segment.
    offset: u64,
}

impl Lines {
    /// Feed a chunk; `line` gets each whole line (without its newline) and its offset.
    fn feed(&mut self, chunk: &[u8], mut line: impl FnMut(u64, &[u8])) {
        self.carry.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.carry[start..].iter().position(|b| *b == b'\n') {
            line(self.offset + start as u64, &self.carry[start..start + end]);
            start += end + 1;
        }
        self.carry.drain(..start);
        self.offset += start as u64;
    }
}

/// The index key of a line and whether it is a success, when the line is readable.
fn line_key(raw: &[u8]) -> Option<(u64, bool)> {
    let head = serde_json::from_slice::<Head>(raw).ok()?;
    Some((key_of(head.h)?, head.ok))
}

/// Two lists sorted by key, merged into one.
fn merge_sorted(a: Vec<(u64, u64)>, b: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        if x.0 <= y.0 {
            out.extend(a.next());
        } else {
            out.extend(b.next());
        }
    }
    out.extend(a);
    out.extend(b);
    out
}

/// The journal's segments (`journal/NAME` for each `journal/NAME.jsonl`, sorted), and the
/// names of those that have an index (`journal/NAME.idx`).
async fn segments(store: &RunStore) -> Result<(Vec<String>, std::collections::HashSet<String>)> {
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

/// The entries of a segment's index from byte `from` on (streamed: a torn last record is
/// ignored).
async fn read_index(store: &RunStore, name: &str, segment: u32, from: u64) -> Result<Indexed> {
    let mut found = Indexed {
        results: vec![],
        failures: vec![],
        read: from,
        built: None,
    };
    let mut chunks = store.get_stream(&format!("{name}.idx"), from).await?;
    let mut carry: Vec<u8> = vec![];
    while let Some(chunk) = chunks.next().await {
        carry.extend_from_slice(&chunk?);
        let whole = carry.len() - carry.len() % RECORD;
        found.read += whole as u64;
        for (key, offset, ok) in index_records(&carry[..whole]) {
            if ok {
                found.results.push((key, location(segment, offset)));
            } else {
                found.failures.push(key);
            }
        }
        carry.drain(..whole);
    }
    Ok(found)
}

/// Index a segment that has no index by reading it (streamed).
async fn scan_segment(store: &RunStore, name: &str, segment: u32) -> Result<Indexed> {
    let mut found = Indexed {
        results: vec![],
        failures: vec![],
        read: 0,
        built: Some(vec![]),
    };
    let mut built = vec![];
    let mut chunks = store.get_stream(&format!("{name}.jsonl"), 0).await?;
    let mut lines = Lines::default();
    while let Some(chunk) = chunks.next().await {
        lines.feed(&chunk?, |offset, raw| match line_key(raw) {
            Some((key, ok)) => {
                built.extend_from_slice(&index_record(key, offset, ok));
                if ok {
                    found.results.push((key, location(segment, offset)));
                } else {
                    found.failures.push(key);
                }
            }
            // A torn line (a crash mid-write) is skipped, and said.
            None if !raw.is_empty() => tracing::warn!(
                "journal {name}: skipped an unreadable line ({} bytes)",
                raw.len()
            ),
            None => {}
        });
    }
    if !lines.carry.is_empty() {
        tracing::warn!(
            "journal {name}: skipped an unreadable last line ({} bytes)",
            lines.carry.len()
        );
    }
    found.read = built.len() as u64;
    found.built = Some(built);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> RequestHash {
        RequestHash::from_hex(format!("{i:016x}{:048x}", i * 7))
    }

    fn answer(i: u64) -> Completion {
        Completion {
            text: format!("answer {i} {}", "x".repeat((i % 5000) as usize)),
            finish_reason: Some("stop".into()),
            prompt_tokens: Some(i),
            completion_tokens: Some(1),
            top_logprobs: None,
        }
    }

    /// A stop that aborts the flusher in the middle of its PUT to an object store loses no
    /// outcome: the next flush writes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_aborted_mid_put_loses_no_outcome() {
        use object_store::throttle::{ThrottleConfig, ThrottledStore};
        let slow = ThrottledStore::new(
            object_store::memory::InMemory::new(),
            ThrottleConfig {
                wait_put_per_call: Duration::from_millis(400),
                ..Default::default()
            },
        );
        let store = RunStore::in_object_store(Arc::new(slow), "memory://", "r").expect("store");
        let journal = Arc::new(Journal::open(store.clone()).await.expect("open"));
        for i in 1..=20 {
            journal.record(&hash(i), &Ok(answer(i)));
        }
        let flusher = journal.spawn_flusher();
        // The flusher wakes after 100 ms and is then in its 400 ms PUT: stopped there.
        tokio::time::sleep(Duration::from_millis(250)).await;
        flusher.abort();
        let _ = flusher.await;
        journal.flush().await.expect("the next flush");
        let reopened = Journal::open(store).await.expect("reopen");
        for i in 1..=20 {
            assert!(
                reopened.lookup(&hash(i)).await.is_some(),
                "outcome {i} lost"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_takes_in_what_another_writer_journalled_since() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RunStore::open(dir.path().to_str().expect("path"), "r").expect("store");
        let writer = Journal::open(store.clone()).await.expect("open");
        writer.record(&hash(1), &Ok(answer(1)));
        let reader = Journal::open(store.clone()).await.expect("open");
        assert_eq!(
            reader.refresh().await.expect("refresh"),
            0,
            "nothing new yet"
        );
        assert!(reader.lookup(&hash(2)).await.is_none());
        // The other writer goes on (as an executor does, appending to its segment).
        writer.record(&hash(2), &Ok(answer(2)));
        writer.record(&hash(3), &Err(LlmError::Backend("failed".into())));
        assert_eq!(
            reader.refresh().await.expect("refresh"),
            1,
            "the new success"
        );
        assert_eq!(
            reader.lookup(&hash(2)).await.map(|c| c.text),
            Some(answer(2).text)
        );
        assert!(
            reader.lookup(&hash(3)).await.is_none(),
            "failures are never served"
        );
        assert_eq!(reader.refresh().await.expect("refresh"), 0, "read once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_are_found_through_the_index_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_str().expect("path");
        let store = RunStore::open(root, "r").expect("store");
        let journal = Journal::open(store.clone()).await.expect("open");
        journal.prepare_for_writing().await.expect("prepare");
        for i in 0..300 {
            let result = if i % 10 == 3 {
                Err(LlmError::Backend(format!("failed {i}")))
            } else {
                Ok(answer(i))
            };
            journal.record(&hash(i), &result);
        }
        // Found in this session, from the appended segment.
        assert_eq!(
            journal.lookup(&hash(5)).await.map(|c| c.text),
            Some(answer(5).text)
        );
        assert!(
            journal.lookup(&hash(3)).await.is_none(),
            "failures are never served"
        );
        drop(journal);

        // A torn last line (kill -9 mid-write) and an index that lags by one record.
        let folder = dir.path().join("r/journal");
        let data = std::fs::read_dir(&folder)
            .expect("folder")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .expect("a segment");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&data)
            .expect("segment");
        f.write_all(b"{\"h\":\"00ff").expect("torn line");

        let journal = Journal::open(store.clone()).await.expect("reopen");
        let stats = journal.stats();
        assert_eq!(stats.results, 270, "{stats:?}");
        assert_eq!(stats.failures, 30, "{stats:?}");
        for i in [0u64, 1, 2, 4, 150, 299] {
            let got = journal.lookup(&hash(i)).await.expect("journalled");
            assert_eq!(got.text, answer(i).text);
            assert_eq!(got.prompt_tokens, Some(i));
        }
        assert!(journal.lookup(&hash(13)).await.is_none());
        assert!(journal.lookup(&hash(100_000)).await.is_none());
        // Same 8-byte prefix, another hash: not served.
        let twin = RequestHash::from_hex(format!("{:016x}{:048x}", 7, 1));
        assert!(journal.lookup(&twin).await.is_none());

        // An index lost: the segment is scanned, and the index written back when writing.
        let index = data.with_extension("idx");
        std::fs::remove_file(&index).expect("remove index");
        let journal = Journal::open(store.clone()).await.expect("reopen");
        assert_eq!(journal.stats().results, 270);
        assert_eq!(
            journal.lookup(&hash(42)).await.map(|c| c.text),
            Some(answer(42).text)
        );
        journal.prepare_for_writing().await.expect("prepare");
        assert!(index.exists());
    }
}
