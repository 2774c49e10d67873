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

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
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
    if source == "sl_cai" { "sl_cai_samples" } else { source }
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
            out.extend(messages.iter().map(|m| json!({"role": m.role, "content": m.content})));
            json!({ "messages": out })
        }
    })
}

/// Export the Parquet table at `table_dir` (partitioned by `split`, or not) into `out`.
pub async fn export_sft(table_dir: &Path, format: ExportFormat, out: &Path) -> Result<ExportReport> {
    let ctx = SessionContext::new();
    let location = format!("{}/", table_dir.display().to_string().trim_end_matches('/'));
    let df = ctx
        .read_parquet(&location, ParquetReadOptions::default())
        .await
        .map_err(|e| CaiError::Plan(format!("cannot read table {}: {e}", table_dir.display())))?;
    for needed in ["messages", "error"] {
        if df.schema().as_arrow().index_of(needed).is_err() {
            return Err(CaiError::Plan(format!("{}: no column '{needed}': not an SFT table", table_dir.display())));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| CaiError::io(out, e))?;
    let mut writers: BTreeMap<String, BufWriter<File>> = BTreeMap::new();
    let mut report = ExportReport::default();
    let mut stream = df.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch: RecordBatch = batch?;
        let splits = match batch.column_by_name("split") {
            Some(c) => Some(datafusion::arrow::compute::cast(c, &DataType::Utf8)?),
            None => None,
        };
        let batch = std::sync::Arc::new(batch);
        for index in 0..batch.num_rows() {
            let row = InputRow { batch: batch.clone(), index };
            if row.str("error").is_some() {
                report.skipped_errors += 1;
                continue;
            }
            let Some(value) = line(format, &row) else {
                report.skipped_errors += 1;
                continue;
            };
            let split = splits
                .as_ref()
                .map(|s| s.as_string::<i32>())
                .filter(|s| s.is_valid(index))
                .map(|s| s.value(index).to_string())
                .unwrap_or_else(|| "all".to_string());
            let writer = match writers.get_mut(&split) {
                Some(w) => w,
                None => {
                    let path = out.join(format!("{split}.jsonl"));
                    let file = File::create(&path).map_err(|e| CaiError::io(&path, e))?;
                    report.files.push(path);
                    writers.entry(split.clone()).or_insert(BufWriter::new(file))
                }
            };
            serde_json::to_writer(&mut *writer, &value).map_err(|e| CaiError::Plan(e.to_string()))?;
            writer.write_all(b"\n").map_err(|e| CaiError::io(out, e))?;
            *report.written.entry(split).or_default() += 1;
        }
    }
    for (split, mut w) in writers {
        w.flush().map_err(|e| CaiError::io(out.join(format!("{split}.jsonl")), e))?;
    }
    Ok(report)
}
