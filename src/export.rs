//! Exports of a run's SFT table for trainers.
//!
//! - `nemo-sft`: NeMo chat JSONL, one object per line:
//!   `{"system": "", "conversations": [{"from": "User", "value": …}, {"from": "Assistant",
//!   "value": …}], "mask": "User", "dataset": …}`.
//! - `trl-sft`: TRL conversational JSONL: `{"messages": [{"role": "user", "content": …}, …]}`.
//!
//! One file per split (`{out}/{split}.jsonl`). Rows whose `error` is set are skipped and
//! counted; nothing is dropped silently.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use serde_json::json;

use crate::error::{CaiError, Result};
use crate::stages::row::InputRow;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    NemoSft,
    TrlSft,
}

#[derive(Debug, Default)]
pub struct ExportReport {
    /// Rows written, per split.
    pub written: BTreeMap<String, usize>,
    /// Rows skipped because their `error` is set.
    pub skipped_errors: usize,
    pub files: Vec<PathBuf>,
}

/// `dataset` value of NeMo rows: NeMo-Aligner's name for CAI rows, the source otherwise.
fn nemo_dataset(source: &str) -> &str {
    if source == "sl_cai" {
        "sl_cai_samples"
    } else {
        source
    }
}

fn line(format: ExportFormat, row: &InputRow) -> Option<serde_json::Value> {
    let messages = row.messages("messages")?;
    let system = row.str("system").unwrap_or_default();
    Some(match format {
        ExportFormat::NemoSft => {
            let conversations: Vec<_> = messages
                .iter()
                .filter(|m| m.role != "system")
                .map(|m| json!({"from": if m.role == "assistant" { "Assistant" } else { "User" }, "value": m.content}))
                .collect();
            json!({
                "system": system,
                "conversations": conversations,
                "mask": "User",
                "dataset": nemo_dataset(&row.str("source").unwrap_or_default()),
            })
        }
        ExportFormat::TrlSft => {
            let mut out = vec![];
            if !system.is_empty() {
                out.push(json!({"role": "system", "content": system}));
            }
            out.extend(
                messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content})),
            );
            json!({ "messages": out })
        }
    })
}

/// The table's parts: `split=NAME` sub-folders (as `COPY … PARTITIONED BY (split)` writes
/// them), or the folder itself as split `all`.
fn split_parts(table_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(table_dir).map_err(|e| CaiError::io(table_dir, e))?;
    let mut parts = vec![];
    for entry in entries {
        let entry = entry.map_err(|e| CaiError::io(table_dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(split) = name.strip_prefix("split=")
            && entry.path().is_dir()
        {
            parts.push((split.to_string(), entry.path()));
        }
    }
    parts.sort();
    if parts.is_empty() {
        parts.push(("all".to_string(), table_dir.to_path_buf()));
    }
    Ok(parts)
}

/// Export the Parquet table at `table_dir` (partitioned by `split`, or not) into `out`,
/// one JSONL file per split, streaming batch by batch.
pub async fn export_sft(
    table_dir: &Path,
    format: ExportFormat,
    out: &Path,
) -> Result<ExportReport> {
    let ctx = SessionContext::new();
    std::fs::create_dir_all(out).map_err(|e| CaiError::io(out, e))?;
    let mut report = ExportReport::default();
    for (split, dir) in split_parts(table_dir)? {
        let location = format!("{}/", dir.display().to_string().trim_end_matches('/'));
        let df = ctx
            .read_parquet(&location, ParquetReadOptions::default())
            .await
            .map_err(|e| CaiError::Plan(format!("cannot read table {}: {e}", dir.display())))?;
        for needed in ["messages", "error"] {
            if df.schema().as_arrow().index_of(needed).is_err() {
                return Err(CaiError::Plan(format!(
                    "{}: no column '{needed}': not an SFT table",
                    table_dir.display()
                )));
            }
        }
        let path = out.join(format!("{split}.jsonl"));
        let file = File::create(&path).map_err(|e| CaiError::io(&path, e))?;
        let mut writer = BufWriter::new(file);
        let mut written = 0;
        let mut stream = df.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch: Arc<RecordBatch> = Arc::new(batch?);
            for index in 0..batch.num_rows() {
                let row = InputRow {
                    batch: batch.clone(),
                    index,
                };
                let value = if row.str("error").is_some() {
                    None
                } else {
                    line(format, &row)
                };
                let Some(value) = value else {
                    report.skipped_errors += 1;
                    continue;
                };
                serde_json::to_writer(&mut writer, &value)
                    .map_err(|e| CaiError::Plan(e.to_string()))?;
                writer
                    .write_all(b"\n")
                    .map_err(|e| CaiError::io(&path, e))?;
                written += 1;
            }
        }
        writer.flush().map_err(|e| CaiError::io(&path, e))?;
        report.written.insert(split, written);
        report.files.push(path);
    }
    Ok(report)
}
