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
use caiflow_engine::stage::columns::TextColumn;
use caiflow_llm::Endpoints;
use caiflow_run::materialize::register_run_tables;
use caiflow_run::plan::declared_defaults;
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

/// A YAML double-quoted scalar, valid whatever `s` holds: `"` and `\\` escaped, and every
/// character YAML does not allow as it is (C0 and C1 controls, DEL, the line and paragraph
/// separators U+2028/U+2029, the byte-order mark, U+FFFE/U+FFFF) written as `\\uXXXX`.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as a card may publish it: a local path is cut to its file name (a card must not
/// reveal the machine's folders); URLs and other values stay as they are.
fn public(value: &str) -> String {
    if value.contains("://") || !(value.contains('/') || value.contains('\\')) {
        return value.to_string();
    }
    let name = value
        .trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    format!("…/{name}")
}

/// The plan's own variables (those it declares with `-- @var` or uses as `${name}`): its
/// defaults, then the values the run was started with; local paths cut to file names.
/// Other `--set` values are not published.
async fn plan_variables(store: &RunStore) -> Result<BTreeMap<String, String>> {
    let text = match store.get("plan.sql").await? {
        Some(text) => String::from_utf8_lossy(&text).into_owned(),
        None => String::new(),
    };
    let declared = declared_defaults(&text);
    let mut vars = declared.clone();
    if let Some(bytes) = store.get("plan.vars.json").await? {
        let set: BTreeMap<String, String> = serde_json::from_slice(&bytes)?;
        vars.extend(set);
    }
    let used = |name: &str| {
        text.contains(&format!("${{{name}}}")) || text.contains(&format!("${{{name}:-"))
    };
    vars.retain(|k, _| k != "run" && k != "store" && (declared.contains_key(k) || used(k)));
    Ok(vars.into_iter().map(|(k, v)| (k, public(&v))).collect())
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
            export.format,
            public(&report.run)
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
        public(&report.run),
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
                    public(&c.source),
                    ids.len(),
                    ids.join(", ")
                );
            }
            Err(_) => {
                let _ = writeln!(w, "- Constitution: `{}`", public(spec));
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
    if let Some(a) = &report.judge_audit {
        let noisy: Vec<String> = a
            .noisy()
            .map(|p| format!("\"{}\" ({})", p.principle, crate::html::rate(p.consistency)))
            .collect();
        if noisy.is_empty() {
            let _ = writeln!(
                w,
                "- Judge audit: every principle's labels were position-consistent at least {:.0} % of the time",
                crate::depth::NOISY_BELOW * 100.0
            );
        } else {
            let _ = writeln!(
                w,
                "- **Noisy principles** (judge labels position-consistent less than {:.0} % of the time; consider dropping them): {}",
                crate::depth::NOISY_BELOW * 100.0,
                noisy.join(", ")
            );
        }
    }
    if let Some(l) = &report.reasoning_leakage {
        let _ = writeln!(
            w,
            "- Reasoning leakage: {} of {} critiqued rows had harmful thinking behind a safe answer ({})",
            l.leaked,
            l.judged,
            crate::html::rate(l.share)
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_scalars_escape_what_yaml_forbids() {
        let q = quoted("a\u{7f}b\u{2028}c\u{85}\"d\\");
        assert_eq!(q, "\"a\\u007fb\\u2028c\\u0085\\\"d\\\\\"");
        assert!(q.chars().all(|c| !c.is_control() && c != '\u{2028}'));
    }

    #[test]
    fn local_paths_are_cut_to_file_names() {
        assert_eq!(
            public("/home/alice/secret-project/prompts.jsonl"),
            "…/prompts.jsonl"
        );
        assert_eq!(public("s3://bucket/p.jsonl"), "s3://bucket/p.jsonl");
        assert_eq!(public("0.7,1.0"), "0.7,1.0");
    }
}
