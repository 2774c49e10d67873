//! What the terminal shows: live progress, each statement's outcome, the summary of a
//! session; and the signals that stop a run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use caiflow_engine::CaiSession;
use caiflow_engine::progress::{Progress, StageStats};
use caiflow_llm::Usage;
use caiflow_run::journal::Journal;
use caiflow_run::plan::StatementOutcome;
use caiflow_run::sessions::RunUsage;

/// Live progress on stderr: a bar per stage on a terminal (indicatif), plain lines every
/// few seconds otherwise (logs, CI).
pub fn spawn_progress(progress: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        tokio::spawn(async move {
            let bars = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {prefix:<18} {pos:>8} rows {per_sec:>12} | {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            let mut shown: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
            loop {
                for s in progress.snapshot() {
                    let bar = shown.entry(s.name.clone()).or_insert_with(|| {
                        let b = bars.add(indicatif::ProgressBar::new_spinner());
                        b.set_style(style.clone());
                        b.set_prefix(s.name.clone());
                        b
                    });
                    bar.set_position(s.rows_done.load(std::sync::atomic::Ordering::Relaxed));
                    bar.set_message(s.message());
                    bar.tick();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    } else {
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // What each stage looked like when last printed: a stage is printed when it
            // changed, so a finished (idle) stage is printed once.
            let mut last: BTreeMap<String, [u64; 5]> = BTreeMap::new();
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let stages = progress.snapshot();
                let mut changed = false;
                for s in &stages {
                    let state = s.state();
                    if last.get(&s.name) != Some(&state) {
                        eprintln!("{} | {}", s.line(), s.message());
                        last.insert(s.name.clone(), state);
                        changed = true;
                    }
                }
                if changed {
                    eprintln!(
                        "{}",
                        caiflow_engine::progress::overall_line(&stages, started.elapsed())
                    );
                }
            }
        })
    }
}

pub fn print_outcome(o: &StatementOutcome) {
    let head: String = o
        .sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(70)
        .collect();
    eprintln!(
        "[{}] {head}… ({} rows, {:.1}s)",
        o.index + 1,
        o.rows,
        o.seconds
    );
    if let Some(p) = &o.preview {
        println!("{p}");
    }
    if let Some(w) = &o.warning {
        eprintln!("warning: {w}");
    }
}

pub fn print_summary(
    session: &CaiSession,
    journal: &Journal,
    on_cluster: bool,
    stats: &[StageStats],
    before: RunUsage,
) {
    eprintln!("summary:");
    if on_cluster {
        // The requests were sent (and counted) by the executors.
        eprintln!(
            "  requests were sent by the cluster's executors: each row's lineage has its requests (worker, attempts, tokens, latency)"
        );
    } else {
        for line in caiflow_engine::progress::summary_table(stats).lines() {
            eprintln!("  {line}");
        }
    }
    for e in session.endpoints.iter() {
        if e.counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            eprintln!("  {}", e.summary());
        }
    }
    let s = journal.stats();
    eprintln!(
        "  journal: {} requests served from the journal, {} new outcomes recorded ({} results stored)",
        s.served, s.recorded, s.results
    );
    if !on_cluster {
        let mut total = before;
        total.sessions += 1;
        total.add(stats);
        let session = RunUsage::of_stages(stats);
        let run = total.total();
        eprintln!(
            "  usage: this session {}; the run, {} session(s): {} (journal hits are free)",
            usage_line(&session),
            total.sessions,
            usage_line(&run)
        );
        for line in caiflow_engine::progress::usage_table(&total.as_stats()).lines() {
            eprintln!("    {line}");
        }
    }
    for stage in session.progress.snapshot() {
        for w in stage.warnings() {
            eprintln!("  warning: {w}");
        }
    }
}

/// `N requests, T tokens (P prompt[ (K read from the prompt cache)] + C completion[, R of them
/// reasoning]), $X[ (B batched, saving $S)]`.
pub fn usage_line(u: &Usage) -> String {
    let reasoning = if u.reasoning_tokens > 0 {
        format!(", {} of them reasoning", u.reasoning_tokens)
    } else {
        String::new()
    };
    let cached = if u.cached_tokens > 0 {
        format!(" ({} read from the prompt cache)", u.cached_tokens)
    } else {
        String::new()
    };
    let batched = if u.batched_requests > 0 {
        format!(
            " ({} batched, saving ${:.4})",
            u.batched_requests, u.batch_saved
        )
    } else {
        String::new()
    };
    format!(
        "{} requests, {} tokens ({} prompt{cached} + {} completion{reasoning}), ${:.4}{batched}",
        u.requests,
        u.tokens(),
        u.prompt_tokens,
        u.completion_tokens,
        u.cost
    )
}

/// An error message without the wrappers libraries put around the cause ("Generic
/// DeltaTable error: Error during planning: …" says only "…").
pub fn without_wrappers(message: &str) -> String {
    const WRAPPERS: [&str; 10] = [
        "Generic DeltaTable error: ",
        "Error during planning: ",
        "External error: ",
        "Execution error: ",
        "Arrow error: ",
        "Invalid argument error: ",
        "Object Store error: ",
        "Internal error: ",
        "Kernel error: ",
        "Generic error: ",
    ];
    let mut out = message.to_string();
    for w in WRAPPERS {
        out = out.replace(w, "");
    }
    // One line: DataFusion's hints ("Did you mean …?") come on a line of their own.
    out.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ctrl-C or SIGTERM (a service manager's or a container's stop): both stop gracefully.
pub async fn interrupted() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                c = tokio::signal::ctrl_c() => c.is_ok(),
                t = term.recv() => t.is_some(),
            },
            Err(_) => tokio::signal::ctrl_c().await.is_ok(),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
