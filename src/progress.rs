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
}

impl StageProgress {
    fn new(name: &str) -> Self {
        StageProgress {
            name: name.to_string(),
            started: Instant::now(),
            rows_started: AtomicU64::new(0),
            rows_done: AtomicU64::new(0),
            row_errors: AtomicU64::new(0),
            records_skipped: AtomicU64::new(0),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
        s
    }
}

/// All stages of a session, by name (two `respond(...)` calls share one entry).
#[derive(Debug, Default)]
pub struct Progress {
    stages: Mutex<BTreeMap<String, Arc<StageProgress>>>,
}

impl Progress {
    pub fn stage(&self, name: &str) -> Arc<StageProgress> {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(StageProgress::new(name)))
            .clone()
    }

    pub fn snapshot(&self) -> Vec<Arc<StageProgress>> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages.values().cloned().collect()
    }
}
