//! Live per-stage counters, shared through the session so the CLI can print progress and a
//! summary while stages stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug)]
pub struct StageProgress {
    pub name: String,
    pub started: Instant,
    /// Input rows taken up.
    pub rows_started: AtomicU64,
    /// Input rows finished (successfully or with a row error).
    pub rows_done: AtomicU64,
    /// Output rows whose `error` is set.
    pub row_errors: AtomicU64,
    /// Input records a source could not turn into rows (reported, never silent).
    pub records_skipped: AtomicU64,
    /// Rows dropped as (near) duplicates.
    pub rows_dropped: AtomicU64,
    /// LLM requests of this stage, their attempts, journal hits and tokens.
    pub requests: AtomicU64,
    pub attempts: AtomicU64,
    pub journal_hits: AtomicU64,
    pub tokens: AtomicU64,
    /// Whether the stage sends LLM requests (a source that reads files does not).
    pub llm: bool,
    /// What the end-of-run summary must warn about (e.g. an input with no records).
    warnings: Mutex<Vec<String>>,
}

impl StageProgress {
    fn new(name: &str, llm: bool) -> Self {
        StageProgress {
            llm,
            warnings: Mutex::new(vec![]),
            name: name.to_string(),
            started: Instant::now(),
            rows_started: AtomicU64::new(0),
            rows_done: AtomicU64::new(0),
            row_errors: AtomicU64::new(0),
            records_skipped: AtomicU64::new(0),
            rows_dropped: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            journal_hits: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
        }
    }

    /// Keep a warning for the end-of-run summary.
    pub fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    /// The stage's warnings, and "received 0 rows" for an LLM stage that ran on nothing.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if self.llm && Self::get(&self.rows_started) == 0 {
            out.push(format!(
                "{} received 0 rows: nothing was generated",
                self.name
            ));
        }
        out
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Rates and counts for a progress bar's message.
    pub fn message(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let requests = Self::get(&self.requests);
        let mut m = format!(
            "{:.1} req/s {:.0} tok/s {} errors",
            requests.saturating_sub(Self::get(&self.journal_hits)) as f64 / secs,
            Self::get(&self.tokens) as f64 / secs,
            Self::get(&self.row_errors)
        );
        let hits = Self::get(&self.journal_hits);
        if hits > 0 {
            m.push_str(&format!(" {hits} from journal"));
        }
        m
    }

    pub fn line(&self) -> String {
        let done = self.rows_done.load(Ordering::Relaxed);
        let started = self.rows_started.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let mut s = format!(
            "{:<18} {done:>7} done {:>5} in flight {:>5} errors {:>8.2} rows/s",
            self.name,
            started.saturating_sub(done),
            self.row_errors.load(Ordering::Relaxed),
            done as f64 / secs
        );
        let skipped = self.records_skipped.load(Ordering::Relaxed);
        if skipped > 0 {
            s.push_str(&format!(" ({skipped} input records skipped)"));
        }
        let dropped = self.rows_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            s.push_str(&format!(" ({dropped} duplicates dropped)"));
        }
        s
    }
}

/// The end-of-run table: per stage rows, requests, retries, errors, tokens, wall time.
pub fn summary_table(stages: &[Arc<StageProgress>]) -> String {
    let get = StageProgress::get;
    let mut out = format!(
        "{:<18} {:>8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>8}\n",
        "stage", "rows", "requests", "retries", "errors", "journal", "tokens", "wall s"
    );
    for s in stages {
        let requests = get(&s.requests);
        let sent = requests.saturating_sub(get(&s.journal_hits));
        out.push_str(&format!(
            "{:<18} {:>8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>8.1}\n",
            s.name,
            get(&s.rows_done),
            requests,
            get(&s.attempts).saturating_sub(sent),
            get(&s.row_errors),
            get(&s.journal_hits),
            get(&s.tokens),
            s.started.elapsed().as_secs_f64()
        ));
    }
    out
}

/// All stages of a session, by name (two `respond(...)` calls share one entry).
#[derive(Debug, Default)]
pub struct Progress {
    stages: Mutex<BTreeMap<String, Arc<StageProgress>>>,
}

impl Progress {
    /// The counters of a source stage (one that reads data, sends no requests).
    pub fn stage(&self, name: &str) -> Arc<StageProgress> {
        self.entry(name, false)
    }

    /// The counters of a stage that sends LLM requests.
    pub fn llm_stage(&self, name: &str) -> Arc<StageProgress> {
        self.entry(name, true)
    }

    fn entry(&self, name: &str, llm: bool) -> Arc<StageProgress> {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(StageProgress::new(name, llm)))
            .clone()
    }

    pub fn snapshot(&self) -> Vec<Arc<StageProgress>> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages.values().cloned().collect()
    }
}
