//! Live per-stage counters, shared through the session so the CLI can print progress and a
//! summary while stages stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use caiflow_llm::Usage;

#[derive(Debug)]
pub struct StageProgress {
    pub name: String,
    pub started: Instant,
    /// Input rows taken up.
    pub rows_started: AtomicU64,
    /// Input rows finished (successfully or with a row error).
    pub rows_done: AtomicU64,
    /// The stage's input streams (one per partition) begun and read to their end: once
    /// every one begun has ended, `rows_started` is all the rows the stage will get.
    pub inputs_begun: AtomicU64,
    pub inputs_ended: AtomicU64,
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
    /// Completion tokens (`tokens`) and prompt tokens of the answers, journalled ones too.
    pub tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Of `tokens`, a reasoning model's thinking.
    pub reasoning_tokens: AtomicU64,
    /// Final answers cut off by `max_tokens` (`finish_reason = length`), journalled ones
    /// too; and answers cut off that were asked again (`retry_truncated`).
    pub truncated: AtomicU64,
    pub truncated_retried: AtomicU64,
    /// Sum of `max_tokens` over the requests sent: the completion tokens they may use.
    pub max_completion_tokens: AtomicU64,
    /// Requests a judge may still add by asking again when a verdict does not parse.
    pub possible_reasks: AtomicU64,
    /// What the requests sent used, by endpoint (journal hits are free).
    spent: Mutex<BTreeMap<String, Usage>>,
    /// Latency of the requests sent (not of journal hits), in ms.
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    /// Output rows with an error, by reason (the first [`MAX_REASONS`] distinct ones).
    errors: Mutex<BTreeMap<String, u64>>,
    /// Whether the stage sends LLM requests (a source that reads files does not).
    pub llm: bool,
    /// What the end-of-run summary must warn about (e.g. an input with no records).
    warnings: Mutex<Vec<String>>,
    /// The newest answers (the last user turn and the answer, cut short), for a live view:
    /// at most [`RECENT_ANSWERS`], whatever the run's size.
    recent: Mutex<std::collections::VecDeque<(String, String)>>,
    /// Whether a live view shows the newest answers (set by [`Progress::keep_answers`]):
    /// without one, answers are not copied.
    keep_recent: Arc<AtomicBool>,
}

/// Answers kept per stage for a live view, and the characters kept of each text.
pub const RECENT_ANSWERS: usize = 5;
const RECENT_CHARS: usize = 400;

impl StageProgress {
    /// Keep an answer as one of the stage's newest (see [`RECENT_ANSWERS`]).
    pub fn note_answer(&self, asked: &str, answer: &str) {
        if !self.keep_recent.load(Ordering::Relaxed) {
            return;
        }
        let cut = |t: &str| t.chars().take(RECENT_CHARS).collect::<String>();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_ANSWERS {
            recent.pop_front();
        }
        recent.push_back((cut(asked), cut(answer)));
    }

    /// The stage's newest answers, newest first: (the last user turn, the answer).
    pub fn recent_answers(&self) -> Vec<(String, String)> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    fn new(name: &str, llm: bool, keep_recent: Arc<AtomicBool>) -> Self {
        StageProgress {
            llm,
            keep_recent,
            warnings: Mutex::new(vec![]),
            recent: Mutex::new(std::collections::VecDeque::new()),
            name: name.to_string(),
            started: Instant::now(),
            rows_started: AtomicU64::new(0),
            rows_done: AtomicU64::new(0),
            inputs_begun: AtomicU64::new(0),
            inputs_ended: AtomicU64::new(0),
            row_errors: AtomicU64::new(0),
            records_skipped: AtomicU64::new(0),
            rows_dropped: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            journal_hits: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            reasoning_tokens: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            truncated_retried: AtomicU64::new(0),
            max_completion_tokens: AtomicU64::new(0),
            possible_reasks: AtomicU64::new(0),
            spent: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(new_histogram()),
            errors: Mutex::new(BTreeMap::new()),
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

    /// Record the latency of a request that was sent.
    pub fn latency(&self, ms: u64) {
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(ms.max(1));
    }

    /// Add what a request sent to `endpoint` used.
    pub fn spend(&self, endpoint: &str, usage: &Usage) {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        spent.entry(endpoint.to_string()).or_default().add(usage);
    }

    /// Count an output row's error under its reason.
    pub fn error(&self, message: &str) {
        Self::add(&self.row_errors, 1);
        let reason = error_reason(message);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let key = if errors.len() < MAX_REASONS || errors.contains_key(&reason) {
            reason
        } else {
            "(other reasons)".to_string()
        };
        *errors.entry(key).or_default() += 1;
    }

    /// The stage's figures, as recorded in a run's session file.
    pub fn stats(&self) -> StageStats {
        let get = Self::get;
        let requests = get(&self.requests);
        let hits = get(&self.journal_hits);
        let latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let sent = requests.saturating_sub(hits);
        StageStats {
            name: self.name.clone(),
            llm: self.llm,
            rows: get(&self.rows_done),
            requests,
            journal_hits: hits,
            sent,
            retries: get(&self.attempts).saturating_sub(sent),
            errors: get(&self.row_errors),
            errors_by_reason: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.tokens),
            reasoning_tokens: get(&self.reasoning_tokens),
            truncated: get(&self.truncated),
            truncated_retried: get(&self.truncated_retried),
            max_completion_tokens: get(&self.max_completion_tokens),
            possible_reasks: get(&self.possible_reasks),
            usage: self.spent.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            latency_p50_ms: (!latency.is_empty()).then(|| latency.value_at_quantile(0.5)),
            latency_p95_ms: (!latency.is_empty()).then(|| latency.value_at_quantile(0.95)),
            dropped: get(&self.rows_dropped),
            skipped: get(&self.records_skipped),
            seconds: self.started.elapsed().as_secs_f64(),
        }
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

    /// The counts a progress line shows (rows done, started, errors, skipped, dropped):
    /// equal states need not be printed again.
    pub fn state(&self) -> [u64; 5] {
        [
            &self.rows_done,
            &self.rows_started,
            &self.row_errors,
            &self.records_skipped,
            &self.rows_dropped,
        ]
        .map(Self::get)
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

/// One line over all stages: rows done, requests sent and their rate, elapsed time, and an
/// ETA once it can be guessed.
///
/// The ETA takes the prompts as the rows the sources (stages that send no requests) read —
/// or, once an LLM stage has read its whole input, the fewest rows such a stage took (a
/// LIMIT or filter after the source passes fewer than it read) — and for each LLM stage as many units per prompt as it has started (rounds, candidates);
/// the share done is the mean over LLM stages, and the time left is elapsed × (1 − share) /
/// share. It is a guess while the sources are still reading, and says so.
pub fn overall_line(stages: &[Arc<StageProgress>], elapsed: std::time::Duration) -> String {
    let get = StageProgress::get;
    let secs = elapsed.as_secs_f64().max(1e-3);
    let llm: Vec<&Arc<StageProgress>> = stages.iter().filter(|s| s.llm).collect();
    let sent: u64 = llm
        .iter()
        .map(|s| get(&s.requests).saturating_sub(get(&s.journal_hits)))
        .sum();
    let read: u64 = stages
        .iter()
        .filter(|s| !s.llm)
        .map(|s| get(&s.rows_done))
        .max()
        .unwrap_or(0);
    // A LIMIT or a filter between the sources and the first LLM stage passes fewer rows
    // than were read: once an LLM stage has read its whole input, the fewest rows any such
    // stage took are the prompts.
    let entered = llm
        .iter()
        .filter(|s| {
            let begun = get(&s.inputs_begun);
            begun > 0 && get(&s.inputs_ended) >= begun && get(&s.rows_started) > 0
        })
        .map(|s| get(&s.rows_started))
        .min();
    let prompts = match entered {
        Some(n) if read > 0 => n.min(read),
        Some(n) => n,
        None => read,
    };
    let shares: Vec<f64> = llm
        .iter()
        .map(|s| {
            let started = get(&s.rows_started);
            let units = prompts.max(1) * started.div_ceil(prompts.max(1)).max(1);
            get(&s.rows_done) as f64 / units as f64
        })
        .collect();
    let share = if shares.is_empty() || prompts == 0 {
        0.0
    } else {
        (shares.iter().sum::<f64>() / shares.len() as f64).min(1.0)
    };
    let eta = if (0.01..1.0).contains(&share) {
        let left = secs * (1.0 - share) / share;
        format!("ETA ~{}m{:02}s", (left / 60.0) as u64, (left % 60.0) as u64)
    } else if share >= 1.0 {
        "finishing".to_string()
    } else {
        "ETA unknown yet".to_string()
    };
    format!(
        "overall: {:.0}% of {prompts} prompts through {} LLM stage(s), {sent} requests sent ({:.1}/s), {:.0}s elapsed, {eta}",
        share * 100.0,
        llm.len(),
        sent as f64 / secs,
        secs
    )
}

/// Distinct error reasons kept per stage; further ones are counted together.
pub const MAX_REASONS: usize = 20;

/// Latencies from 1 ms to 1 hour at 2 significant digits (a few KiB).
fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 2)
        .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).expect("2 significant digits"))
}

/// An error's reason: its first line with URLs and quoted parts (which differ per row)
/// elided, cut to 80 characters: "HTTP 500 from …" and "HTTP 503 from …" stay apart, two
/// rows' timeouts against different URLs are one reason.
pub fn error_reason(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let mut out = String::new();
    // The quote character of a quoted part still open.
    let mut open: Option<char> = None;
    for word in first.split_whitespace() {
        let w = if let Some(q) = open {
            // Inside a quoted part: skip to its closing quote, keep what follows it.
            match word.find(q) {
                Some(end) => {
                    open = None;
                    let rest = &word[end + 1..];
                    if rest.is_empty() {
                        continue;
                    }
                    out.push_str(rest);
                    continue;
                }
                None => continue,
            }
        } else if word.contains("://") {
            "URL".to_string()
        } else if let Some(q) = word.chars().next().filter(|c| *c == '\'' || *c == '"') {
            // A quoted part: elided; punctuation after its closing quote stays.
            match word[1..].find(q) {
                Some(end) => format!("'…'{}", &word[end + 2..]),
                None => {
                    open = Some(q);
                    "'…'".to_string()
                }
            }
        } else {
            word.to_string()
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
        if out.chars().count() >= 80 {
            break;
        }
    }
    out.chars().take(80).collect()
}

/// One stage's figures for a session (what `caiflow run` records in the run's
/// `sessions/` folder and `caiflow report` reads).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageStats {
    pub name: String,
    pub llm: bool,
    pub rows: u64,
    /// Requests the stage made: `sent` + `journal_hits`.
    pub requests: u64,
    pub journal_hits: u64,
    pub sent: u64,
    /// Attempts beyond the first of the requests sent.
    pub retries: u64,
    /// Output rows with an error, and by reason.
    pub errors: u64,
    pub errors_by_reason: BTreeMap<String, u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `completion_tokens`, a reasoning model's thinking (journalled answers too).
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Final answers cut off by `max_tokens`, and cut-off answers asked again.
    pub truncated: u64,
    #[serde(default)]
    pub truncated_retried: u64,
    /// Sum of `max_tokens` over the requests sent (a dry run's completion upper bound).
    #[serde(default)]
    pub max_completion_tokens: u64,
    /// Requests a judge could have added by asking again (verdicts read at the first try
    /// leave `attempts - 1` each).
    #[serde(default)]
    pub possible_reasks: u64,
    /// What the requests sent used (requests, tokens, cost), by endpoint. Journal hits are
    /// free and not in it.
    #[serde(default)]
    pub usage: BTreeMap<String, Usage>,
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
    /// Rows dropped as duplicates; input records skipped.
    pub dropped: u64,
    pub skipped: u64,
    pub seconds: f64,
}

/// The end-of-run table: per stage rows, requests (journal hits among them), retries,
/// errors, truncated answers, tokens and cost of the requests sent, wall time.
pub fn summary_table(stages: &[StageStats]) -> String {
    let mut out = format!(
        "{:<18} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>11} {:>10} {:>8}\n",
        "stage",
        "rows",
        "requests",
        "journal",
        "retries",
        "errors",
        "truncated",
        "tokens",
        "cost $",
        "wall s"
    );
    for s in stages {
        let spent = s.spent();
        out.push_str(&format!(
            "{:<18} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>11} {:>10.4} {:>8.1}\n",
            s.name,
            s.rows,
            s.requests,
            s.journal_hits,
            s.retries,
            s.errors,
            s.truncated,
            spent.tokens(),
            spent.cost,
            s.seconds
        ));
    }
    out
}

impl StageStats {
    /// What the stage's requests used, all endpoints together.
    pub fn spent(&self) -> Usage {
        self.usage.values().sum()
    }
}

/// Usage by stage and by endpoint: `requests, prompt tokens, completion tokens, cost`.
pub fn usage_table(stages: &[StageStats]) -> String {
    let mut by_endpoint: BTreeMap<&str, Usage> = BTreeMap::new();
    let mut out = format!(
        "{:<18} {:<10} {:>9} {:>13} {:>13} {:>10}\n",
        "stage", "endpoint", "requests", "prompt tok", "completion", "cost $"
    );
    let row = |out: &mut String, stage: &str, endpoint: &str, u: &Usage| {
        out.push_str(&format!(
            "{stage:<18} {endpoint:<10} {:>9} {:>13} {:>13} {:>10.4}\n",
            u.requests, u.prompt_tokens, u.completion_tokens, u.cost
        ));
    };
    for s in stages {
        for (endpoint, u) in &s.usage {
            row(&mut out, &s.name, endpoint, u);
            by_endpoint.entry(endpoint).or_default().add(u);
        }
    }
    let mut total = Usage::default();
    for (endpoint, u) in &by_endpoint {
        row(&mut out, "(all stages)", endpoint, u);
        total.add(u);
    }
    row(&mut out, "(total)", "", &total);
    out
}

/// All stages of a session, by name (two `respond(...)` calls share one entry).
#[derive(Debug, Default)]
pub struct Progress {
    stages: Mutex<BTreeMap<String, Arc<StageProgress>>>,
    /// Shared with every stage: whether their newest answers are kept.
    keep_recent: Arc<AtomicBool>,
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
            .or_insert_with(|| Arc::new(StageProgress::new(name, llm, self.keep_recent.clone())))
            .clone()
    }

    /// Keep each stage's newest answers from now on (a live view shows them).
    pub fn keep_answers(&self) {
        self.keep_recent.store(true, Ordering::Relaxed);
    }

    /// Every stage's figures.
    pub fn stats(&self) -> Vec<StageStats> {
        self.snapshot().iter().map(|s| s.stats()).collect()
    }

    pub fn snapshot(&self) -> Vec<Arc<StageProgress>> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        stages.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overall_line_counts_the_prompts_past_a_limit() {
        let p = Progress::default();
        let source = p.stage("red_team_prompts");
        StageProgress::add(&source.rows_done, 50);
        let respond = p.llm_stage("respond");
        StageProgress::add(&respond.inputs_begun, 1);
        StageProgress::add(&respond.rows_started, 5);
        StageProgress::add(&respond.rows_done, 2);
        let ten = std::time::Duration::from_secs(10);
        // Still reading its input: the sources' rows are the guess.
        let line = overall_line(&p.snapshot(), ten);
        assert!(line.contains("of 50 prompts"), "{line}");
        StageProgress::add(&respond.inputs_ended, 1);
        let line = overall_line(&p.snapshot(), ten);
        assert!(line.contains("40% of 5 prompts"), "{line}");
        assert!(line.contains("ETA ~0m15s"), "{line}");
    }

    #[test]
    fn error_reasons_elide_what_differs_per_row() {
        assert_eq!(
            error_reason(
                "respond: HTTP 500 from http://127.0.0.1:8080/v1: 'boom went the server'\nmore"
            ),
            "respond: HTTP 500 from URL '…'"
        );
        assert_eq!(
            error_reason("respond: HTTP 500 from http://10.0.0.1/v1: \"x\""),
            "respond: HTTP 500 from URL '…'"
        );
        assert_eq!(
            error_reason(
                "llm: endpoint 'policy': HTTP 400 from 'x y': bad request after 1 attempt(s)"
            ),
            "llm: endpoint '…': HTTP 400 from '…': bad request after 1 attempt(s)"
        );
        let long = "a ".repeat(100);
        assert_eq!(error_reason(&long).chars().count(), 80);
    }

    #[test]
    fn newest_answers_are_kept_only_while_a_live_view_shows_them() {
        let p = Progress::default();
        let respond = p.llm_stage("respond");
        respond.note_answer("asked", "unseen");
        assert!(respond.recent_answers().is_empty());
        p.keep_answers();
        for i in 0..7 {
            respond.note_answer("asked", &format!("answer {i}"));
        }
        let kept = respond.recent_answers();
        assert_eq!(kept.len(), RECENT_ANSWERS);
        assert_eq!(kept[0].1, "answer 6", "newest first");
    }

    #[test]
    fn stats_count_reasons_latency_and_tokens() {
        let p = StageProgress::new("respond", true, Arc::default());
        for i in 0..30 {
            p.error(&format!("reason {i}"));
        }
        p.error("reason 3");
        for ms in [10, 20, 30, 40, 1000] {
            p.latency(ms);
        }
        let s = p.stats();
        assert_eq!(s.errors, 31);
        assert_eq!(s.errors_by_reason.len(), MAX_REASONS + 1);
        assert_eq!(s.errors_by_reason["reason 3"], 2);
        assert_eq!(s.errors_by_reason["(other reasons)"], 10);
        assert_eq!(s.latency_p50_ms, Some(30));
        assert!(s.latency_p95_ms.is_some_and(|v| v >= 990), "{s:?}");
    }
}
