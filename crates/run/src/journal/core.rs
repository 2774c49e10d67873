//! [`Journal`]: opening a run's journal, serving lookups, recording outcomes, appending
//! (local) or flushing (object stores).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use caiflow_engine::journal::RequestJournal;
use caiflow_llm::{Completion, LlmError, REQUEST_HASH_SCHEME, RequestHash};

use super::format::{Line, key_of};
use super::index::{
    index_record, index_records, location, merge_sorted, read_index, scan_segment, split_location,
};
use super::segments::{FOLDER, SegmentWriter, segments};
use crate::error::{Result, RunError};
use crate::store::RunStore;

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
pub(super) struct Taken<'a> {
    pub(super) pending: &'a Mutex<Vec<Line>>,
    pub(super) lines: Vec<Line>,
    pub(super) done: bool,
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
pub(super) struct Append {
    pub(super) data: std::fs::File,
    pub(super) index: std::fs::File,
    pub(super) offset: u64,
    pub(super) segment: u32,
}

/// A segment this session wrote to an object store, kept until it is rolled up.
#[derive(Debug)]
pub(super) struct Written {
    pub(super) segment: u32,
    pub(super) data: Bytes,
    pub(super) index: Vec<u8>,
}

#[derive(Debug)]
pub struct Journal {
    pub(super) store: RunStore,
    /// Segment names (`journal/NAME`, without extension) by id: locations refer to these.
    pub(super) names: RwLock<Vec<String>>,
    /// The results of the journal as opened: (key, location), sorted by key.
    pub(super) index: Vec<(u64, u64)>,
    /// Results recorded in this session: key → location.
    pub(super) recent: RwLock<HashMap<u64, u64>>,
    /// Outcomes waiting to be written (object stores, or a failed local append).
    pub(super) pending: Mutex<Vec<Line>>,
    /// Wakes the flusher when `FLUSH_LINES` outcomes are waiting.
    pub(super) full: tokio::sync::Notify,
    /// This session's segments since the last roll-up (one writer at a time).
    pub(super) unrolled: tokio::sync::Mutex<Vec<Written>>,
    /// Every segment this session wrote to the object store (merged at the end of a run).
    pub(super) written: Mutex<Vec<u32>>,
    /// Open local segment files, for positioned reads.
    pub(super) files: Mutex<HashMap<u32, Arc<std::fs::File>>>,
    /// Local stores: this process's segment, opened at its first outcome (so reading a
    /// journal leaves no trace).
    pub(super) local: Option<std::path::PathBuf>,
    pub(super) append: Mutex<Option<Append>>,
    /// Indexes of segments that had none, written when the run continues.
    pub(super) missing: Mutex<Vec<(String, Vec<u8>)>>,
    /// Other writers' segments taken in so far: name → index bytes read.
    pub(super) seen: Mutex<HashMap<String, u64>>,
    /// Results other writers journalled since this journal was opened: (key, location),
    /// sorted by key.
    pub(super) others: RwLock<Vec<(u64, u64)>>,
    /// Unique per process, so concurrent or successive writers never overwrite a segment.
    pub(super) session: String,
    pub(super) seq: AtomicU64,
    pub(super) results: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) segments: AtomicU64,
    pub(super) served: AtomicU64,
    pub(super) recorded: AtomicU64,
    pub(super) stale: usize,
    pub(super) stale_scheme: Option<String>,
}

pub(super) const SCHEME_FILE: &str = "journal/SCHEME";
/// How often buffered outcomes are written to an object store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered outcomes that trigger a write at once.
pub const FLUSH_LINES: usize = 256;
/// Segments of one session rolled up into one.
pub(super) const ROLL_UP_SEGMENTS: usize = 64;
/// Segments (or indexes) read at once when a journal is opened.
pub(super) const READ_AHEAD: usize = 16;
/// Bytes read at a time when reading a line at its offset.
pub(super) const LINE_READ: usize = 8 << 10;

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
    pub(super) async fn read_line(&self, loc: u64) -> Result<Line> {
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
    pub(super) fn add_segment(&self, name: String) -> u32 {
        let mut names = write(&self.names);
        names.push(name);
        self.segments.fetch_add(1, Ordering::Relaxed);
        (names.len() - 1) as u32
    }

    /// Append `line` to this process's local segment and its index; returns its location.
    pub(super) fn append_line(&self, base: &std::path::Path, line: &Line) -> Result<u64> {
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

    pub(super) fn next_name(&self) -> String {
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
    pub(super) fn remember(&self, key: u64, loc: u64) {
        let known = self.index.binary_search_by_key(&key, |(k, _)| *k).is_ok();
        if write(&self.recent).insert(key, loc).is_none() && !known {
            self.results.fetch_add(1, Ordering::Relaxed);
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
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
            ..Default::default()
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
