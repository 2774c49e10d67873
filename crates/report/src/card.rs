//! Dataset cards: the `README.md` that `caiflow export` writes beside the files, in the
//! Hugging Face dataset-card format. Its YAML front matter lists the files of each split
//! (`configs` / `data_files`), so `datasets.load_dataset(EXPORT_DIR)` loads the splits; its
//! body says how the data was made (models and endpoints by name — never keys or URLs —,
//! the constitution, rounds, temperatures, seed), how many rows each split has and why rows
//! were skipped, and the run's health figures from its report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::DataType;
use futures::StreamExt;

use caiflow_engine::CaiSession;
use caiflow_engine::constitution::Constitution;
use caiflow_engine::stages::row::TextColumn;
use caiflow_llm::Endpoints;
use caiflow_run::plan::declared_defaults;
use caiflow_run::run::register_run_tables;
use caiflow_run::store::RunStore;

use crate::Report;
use crate::error::{ReportError, Result};

/// What an export wrote: its format, table, files (in the export folder) per split, and
/// counts.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    pub format: String,
    pub table: String,
    /// Split → the file `datasets` should load for it (a name inside the export folder).
    pub files: BTreeMap<String, String>,
    pub written: BTreeMap<String, usize>,
    pub skipped: BTreeMap<String, usize>,
}

/// A JSON string: a valid YAML scalar whatever it holds.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The plan's variables: its declared defaults, then those the run was started with.
async fn plan_variables(store: &RunStore) -> Result<BTreeMap<String, String>> {
    let mut vars = match store.get("plan.sql").await? {
        Some(text) => declared_defaults(&String::from_utf8_lossy(&text)),
        None => BTreeMap::new(),
    };
    if let Some(bytes) = store.get("plan.vars.json").await? {
        let set: BTreeMap<String, String> = serde_json::from_slice(&bytes)?;
        vars.extend(set);
    }
    vars.remove("run");
    vars.remove("store");
    Ok(vars)
}

/// (stage, endpoint, model) of every request lineage in the run's committed tables.
async fn models(store: &RunStore) -> Result<BTreeSet<(String, String, String)>> {
    let session = CaiSession::new(Endpoints::default());
    let mut out = BTreeSet::new();
    for table in register_run_tables(&session, store).await? {
        let df = session.ctx.table(table.as_str()).await?;
        let lineages: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .filter(|f| {
                f.name().ends_with("_lineage") && matches!(f.data_type(), DataType::Struct(_))
            })
            .map(|f| f.name().clone())
            .collect();
        for column in lineages {
            let stage = column.trim_end_matches("_lineage").to_string();
            let sql = format!(
                "SELECT DISTINCT \"{column}\"['endpoint'] AS e, \"{column}\"['model'] AS m \
                 FROM \"{table}\" WHERE \"{column}\" IS NOT NULL"
            );
            let mut stream = session.ctx.sql(&sql).await?.execute_stream().await?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let (Some(e), Some(m)) = (
                    TextColumn::of(batch.column(0).as_ref()),
                    TextColumn::of(batch.column(1).as_ref()),
                ) else {
                    continue;
                };
                for i in 0..batch.num_rows() {
                    out.insert((
                        stage.clone(),
                        e.get(i).unwrap_or("?").to_string(),
                        m.get(i).unwrap_or("?").to_string(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// The dataset card of an export of the run in `store`.
pub async fn dataset_card(
    store: &RunStore,
    report: &Report,
    export: &ExportSummary,
) -> Result<String> {
    let vars = plan_variables(store).await?;
    let models = models(store).await?;
    let mut w = String::new();
    let kind = if report.rl.is_some() && export.table != "sft" {
        "rl-cai"
    } else {
        "sl-cai"
    };
    // Front matter: what `datasets` reads.
    let _ = writeln!(w, "---");
    let _ = writeln!(
        w,
        "pretty_name: {}",
        quoted(&format!(
            "caiflow {} export of {}",
            export.format, report.run
        ))
    );
    let _ = writeln!(
        w,
        "tags:\n- constitutional-ai\n- {kind}\n- synthetic\n- caiflow"
    );
    let _ = writeln!(w, "configs:\n- config_name: default\n  data_files:");
    for (split, file) in &export.files {
        let _ = writeln!(
            w,
            "  - split: {}\n    path: {}",
            quoted(split),
            quoted(file)
        );
    }
    let _ = writeln!(w, "---\n");

    let _ = writeln!(
        w,
        "# {}\n\nA {} dataset made with caiflow {}: table \
         `{}` of run `{}`, exported as `{}`.\n",
        export.format,
        if kind == "rl-cai" {
            "preference (RL-CAI / RLAIF)"
        } else {
            "supervised (SL-CAI)"
        },
        report.caiflow_version,
        export.table,
        report.run,
        export.format
    );
    let _ = writeln!(w, "## Splits\n\n| split | rows | file |\n|---|---|---|");
    for (split, file) in &export.files {
        let _ = writeln!(
            w,
            "| {split} | {} | `{file}` |",
            export.written.get(split).copied().unwrap_or(0)
        );
    }
    if !export.skipped.is_empty() {
        let reasons: Vec<String> = export
            .skipped
            .iter()
            .map(|(r, n)| format!("{n} ({r})"))
            .collect();
        let _ = writeln!(w, "\nRows not exported: {}.", reasons.join(", "));
    }

    let _ = writeln!(w, "\n## How it was made\n");
    if models.is_empty() {
        let _ = writeln!(w, "No request lineage was found in the run's tables.");
    } else {
        let _ = writeln!(w, "| stage | endpoint | model |\n|---|---|---|");
        for (stage, endpoint, model) in &models {
            let _ = writeln!(w, "| {stage} | {endpoint} | {model} |");
        }
    }
    let var = |name: &str| vars.get(name).map(String::as_str);
    let _ = writeln!(w);
    if let Some(spec) = var("constitution") {
        match Constitution::resolve(spec) {
            Ok(c) => {
                let ids: Vec<&str> = c.principles.iter().map(|p| p.id.as_str()).collect();
                let _ = writeln!(
                    w,
                    "- Constitution: `{}` ({} principles: {})",
                    c.source,
                    ids.len(),
                    ids.join(", ")
                );
            }
            Err(_) => {
                let _ = writeln!(w, "- Constitution: `{spec}`");
            }
        }
    }
    if let Some(sl) = &report.sl {
        let used: Vec<&str> = sl.principles.keys().map(String::as_str).collect();
        let _ = writeln!(w, "- Principles drawn: {}", used.join(", "));
        let _ = writeln!(w, "- Revision rounds: {}", sl.by_round.len());
    } else if let Some(rounds) = var("rounds") {
        let _ = writeln!(w, "- Revision rounds: {rounds}");
    }
    for (name, label) in [
        ("temperatures", "Candidate temperatures"),
        ("temperature", "Temperature"),
        ("mode", "Judge mode"),
        ("judge_constitution", "Judge constitution"),
        ("seed", "Seed"),
        ("helpful_ratio", "Helpful data ratio"),
        ("splits", "Splits"),
    ] {
        if let Some(v) = var(name) {
            let _ = writeln!(w, "- {label}: `{v}`");
        }
    }
    if !vars.is_empty() {
        let all: Vec<String> = vars.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
        let _ = writeln!(w, "- Plan variables: {}", all.join(", "));
    }

    let _ = writeln!(w, "\n## Health (caiflow report)\n");
    for s in report.stages.iter().filter(|s| s.llm) {
        let _ = writeln!(
            w,
            "- {}: {} requests ({} sent, {} from the journal), {} errors, {} answers cut off by max_tokens",
            s.name, s.requests, s.sent, s.journal_hits, s.errors, s.truncated
        );
    }
    if let Some(sl) = &report.sl {
        let _ = writeln!(
            w,
            "- Refusal rate: {} of initial responses, {} of revisions; unchanged revisions: {}",
            crate::html::rate(sl.refusal_rate.response),
            crate::html::rate(sl.refusal_rate.revision),
            crate::html::rate(sl.unchanged_revision_rate)
        );
    }
    if let Some(rl) = &report.rl {
        let labels: Vec<String> = rl.labels.iter().map(|(l, n)| format!("{l} {n}")).collect();
        let _ = writeln!(w, "- Judge labels: {}", labels.join(", "));
        let position: Vec<String> = rl
            .chosen_position
            .iter()
            .map(|(p, n)| format!("#{p}: {n}"))
            .collect();
        let _ = writeln!(w, "- Chosen by position shown: {}", position.join(", "));
        if let Some(r) = rl.length_ratio {
            let _ = writeln!(w, "- Length ratio (mean chosen / mean rejected): {r:.3}");
        }
    }
    Ok(w)
}

/// Write the card as `README.md` in `out`.
pub fn write_card(out: &Path, card: &str) -> Result<PathBuf> {
    let path = out.join("README.md");
    std::fs::write(&path, card).map_err(|cause| ReportError::Write {
        path: path.clone(),
        cause,
    })?;
    Ok(path)
}
