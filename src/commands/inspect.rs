//! `caiflow inspect RUN`: a run's tables (rows, errors, versions, fingerprints), its usage
//! over every session, its journal, and the statement behind each table.

use caiflow_llm::batch::BatchState;
use caiflow_run::journal::Journal;
use caiflow_run::materialize::{manifests, versions};
use caiflow_run::sessions::RunUsage;
use caiflow_run::store::RunStore;

use super::Exit;
use crate::ui::usage_line;

/// `caiflow inspect RUN`.
pub async fn inspect(run: String) -> anyhow::Result<Exit> {
    let store = RunStore::open_spec(&run)?;
    println!("run {}", store.display);
    let ms = manifests(&store).await?;
    if ms.is_empty() {
        println!("  no committed tables");
    }
    for m in &ms {
        if let Some(why) = &m.damaged {
            println!(
                "  table {:<14} DAMAGED: {why} (the next run, `--from {}` or `repair`, recomputes it; the journal makes that free)",
                m.table, m.table
            );
            continue;
        }
        println!(
            "  table {:<14} {:>8} rows {:>6} errors  partitioned by [{}]  data {} (Delta, version {})  fingerprint {}  finished {}",
            m.table,
            m.rows,
            m.error_rows
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            m.partition_by.join(", "),
            m.data,
            m.version,
            m.fingerprint,
            m.finished_unix
        );
        for v in versions(&store, &m.table).await? {
            let by = match v.record.as_ref() {
                Some(r) => format!(
                    "fingerprint {} by caiflow {}",
                    r["fingerprint"].as_str().unwrap_or("?"),
                    r["caiflow_version"].as_str().unwrap_or("?")
                ),
                None => "not written by caiflow".to_string(),
            };
            println!(
                "    v{:<4} {} at {}  {by}",
                v.version,
                v.operation.as_deref().unwrap_or("?"),
                v.timestamp_ms
                    .map(|t| (t / 1000).to_string())
                    .unwrap_or_default()
            );
        }
    }
    let sessions = caiflow_run::sessions::sessions(&store).await?;
    if let Some(last) = sessions.last() {
        let usage = RunUsage::of(&sessions);
        let this = RunUsage::of_stages(&last.stages);
        println!(
            "  usage: last session ({}) {}; the run, {} session(s): {} (journal hits are free)",
            last.end,
            usage_line(&this),
            usage.sessions,
            usage_line(&usage.total())
        );
        for line in caiflow_engine::progress::usage_table(&usage.as_stats()).lines() {
            println!("    {line}");
        }
    }
    let journal = Journal::open(store.clone()).await?;
    let s = journal.stats();
    let bytes: u64 = store.list("journal").await?.iter().map(|(_, n)| n).sum();
    println!(
        "  journal: {} results, {} failures recorded, {} segment(s), {} bytes",
        s.results, s.failures, s.segments, bytes
    );
    let batches = caiflow_run::journal::batches::list(&store).await?;
    if !batches.is_empty() {
        let in_flight = batches
            .iter()
            .filter(|b| b.state == BatchState::InFlight)
            .count();
        println!(
            "  batches: {} submitted, {in_flight} in flight (the next run polls them)",
            batches.len()
        );
        const SHOWN: usize = 50;
        for b in batches.iter().rev().take(SHOWN).rev() {
            let state = match b.state {
                BatchState::InFlight => format!("in flight ({})", b.status),
                BatchState::Collected => format!(
                    "{}: {} answered, {} failed, {} unfinished",
                    b.status, b.succeeded, b.errored, b.unfinished
                ),
            };
            println!(
                "    endpoint {}  {} {}  {} requests  {state}",
                b.endpoint,
                b.provider,
                b.id,
                b.requests.len()
            );
        }
        if batches.len() > SHOWN {
            println!("    … and {} older", batches.len() - SHOWN);
        }
    }
    for m in &ms {
        println!(
            "\n-- {} ({} inputs: {})\n{}",
            m.table,
            m.inputs.len(),
            m.inputs.keys().cloned().collect::<Vec<_>>().join(", "),
            m.sql
        );
    }
    Ok(Exit::Success)
}
