//! Exports of a run's tables for trainers. One set of files per split (the table's `split`
//! column, or the whole table as split `all`), streamed batch by batch.
//!
//! SFT (from the `sft` table):
//! - `nemo-sft`: NeMo chat JSONL `{"system", "conversations": [{"from": "User"|"Assistant",
//!   "value"}], "mask": "User", "dataset"}` in `{split}.jsonl`;
//! - `trl-sft`: TRL conversational JSONL `{"messages": [{"role", "content"}]}` in `{split}.jsonl`.
//!
//! Preferences (from the `preferences` table):
//! - `nemo-rm`: `{prefix}_{split}_comparisons_with_chat_prompt.jsonl` (line 2i = prompt +
//!   chosen, line 2i+1 = prompt + rejected, each `{"text": …}`) and
//!   `{prefix}_{split}_prompts_with_chat_prompt.jsonl` (`{"text": prompt}`), rendered with a
//!   chat template (NeMo's `<extra_id_*>` by default). Every text ends the same way: the
//!   template's turn suffix after each turn, then its end-of-turn marker after the response;
//!   prompts end with the open assistant marker;
//! - `trl-dpo`: `prompt`, `chosen`, `rejected` and the soft label `chosen_prob` (null for
//!   hard labels) in `{split}.jsonl` and `{split}.parquet`;
//! - `trl-reward`: `prompt`, `chosen`, `rejected` and `margin` for TRL's `RewardTrainer`
//!   (which adds it to the Bradley-Terry loss, `-log σ(r_c - r_r - margin)`): the log-odds
//!   of the soft label, `ln(p / (1 - p))` with p clamped to [0.01, 0.99], so a judge 90 %
//!   sure asks for a reward gap of 2.2 and a 50/50 call for none; hard labels get 0 (the
//!   plain loss). In `{split}.jsonl` and `{split}.parquet`;
//! - `pm-soft`: JSONL `{"prompt", "chosen", "rejected", "target"}` for preference models
//!   trained on probability targets (the CAI paper's soft labels): `target` is
//!   `chosen_prob`, or 1.0 for a hard label.
//!
//! The preference formats read `chosen_prob` when the table has it (`judge`'s tables and
//! the blended `preferences`); SL pairs and other tables without it are hard labels.
//!
//! Rows that are not usable (an `error`; for preferences, a `label` other than `ok`) are
//! skipped and counted by reason; nothing is dropped silently.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::dataframe::DataFrame;
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;
use serde_json::json;

use crate::error::{EngineError, Result};
use crate::stage::row::{InputBatch, InputRow};
use caiflow_llm::Message;
use caiflow_llm::chat_template::ChatTemplate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    NemoSft,
    TrlSft,
    NemoRm,
    TrlDpo,
    TrlReward,
    PmSoft,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown export format '{s}' (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 6] = [
        ExportFormat::NemoSft,
        ExportFormat::TrlSft,
        ExportFormat::NemoRm,
        ExportFormat::TrlDpo,
        ExportFormat::TrlReward,
        ExportFormat::PmSoft,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::NemoSft => "nemo-sft",
            ExportFormat::TrlSft => "trl-sft",
            ExportFormat::NemoRm => "nemo-rm",
            ExportFormat::TrlDpo => "trl-dpo",
            ExportFormat::TrlReward => "trl-reward",
            ExportFormat::PmSoft => "pm-soft",
        }
    }

    /// The run table each format reads by default.
    pub fn default_table(self) -> &'static str {
        match self {
            ExportFormat::NemoSft | ExportFormat::TrlSft => "sft",
            _ => "preferences",
        }
    }

    fn is_preference(self) -> bool {
        !matches!(self, ExportFormat::NemoSft | ExportFormat::TrlSft)
    }

    /// The extra column of the Parquet file (`trl-dpo`, `trl-reward`).
    fn label_field(self) -> Option<Field> {
        match self {
            ExportFormat::TrlDpo => Some(Field::new("chosen_prob", DataType::Float64, true)),
            ExportFormat::TrlReward => Some(Field::new("margin", DataType::Float64, false)),
            _ => None,
        }
    }

    fn required_columns(self) -> &'static [&'static str] {
        if self.is_preference() {
            &["prompt", "chosen", "rejected", "label", "error"]
        } else {
            &["messages", "error"]
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// File-name prefix of `nemo-rm` files.
    pub prefix: String,
    /// Template of `nemo-rm` texts.
    pub template: ChatTemplate,
    /// Export rows whose final answer was cut off by `max_tokens` (`truncated`); by
    /// default they are skipped (reason `truncated`).
    pub keep_truncated: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            prefix: "rlaif".into(),
            template: ChatTemplate::default(),
            keep_truncated: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct ExportReport {
    /// Rows (SFT samples or preference pairs) written, per split.
    pub written: BTreeMap<String, usize>,
    /// Rows skipped, by reason (`error`, `tie`, …).
    pub skipped: BTreeMap<String, usize>,
    pub files: Vec<PathBuf>,
    /// Split → the file a dataset loader reads for it (its name in the export folder): the
    /// JSONL file, the comparisons file (`nemo-rm`), the Parquet file (`trl-dpo`).
    pub data_files: BTreeMap<String, String>,
}

impl ExportReport {
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }
}

/// `dataset` value of NeMo rows: NeMo-Aligner's name for CAI rows, the source otherwise.
fn nemo_dataset(source: &str) -> &str {
    if source == "sl_cai" {
        "sl_cai_samples"
    } else {
        source
    }
}

fn sft_line(format: ExportFormat, row: &InputRow) -> Option<serde_json::Value> {
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
                "dataset": nemo_dataset(row.str("source").unwrap_or_default()),
            })
        }
        _ => {
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

/// Why a row is not exported, if it is not.
fn skip_reason(format: ExportFormat, row: &InputRow, keep_truncated: bool) -> Option<String> {
    if row.str("error").is_some() {
        return Some("error".into());
    }
    // A Boolean column read as a number: 1 is true.
    if !keep_truncated && row.u64("truncated") == Some(1) {
        return Some("truncated".into());
    }
    if format.is_preference() {
        let label = row.str("label").unwrap_or("no label");
        if label != "ok" {
            return Some(label.to_string());
        }
        if row.str("chosen").is_none() || row.str("rejected").is_none() {
            return Some("missing chosen or rejected".into());
        }
    } else if row.messages("messages").is_none() {
        return Some("no messages".into());
    }
    None
}

/// Writers of one split.
struct SplitWriters {
    files: Vec<(PathBuf, BufWriter<File>)>,
    parquet: Option<(PathBuf, ArrowWriter<File>)>,
}

fn create(path: PathBuf, report: &mut ExportReport) -> Result<(PathBuf, BufWriter<File>)> {
    let file = File::create(&path).map_err(|e| EngineError::io(&path, e))?;
    report.files.push(path.clone());
    Ok((path, BufWriter::new(file)))
}

/// The Parquet schema of a pairwise export with `label` (`chosen_prob` or `margin`).
fn pairs_schema(label: Field) -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::Utf8, false),
        Field::new("chosen", DataType::Utf8, false),
        Field::new("rejected", DataType::Utf8, false),
        label,
    ]))
}

/// The soft label of a row: P(chosen preferred), when the judge gave one.
fn chosen_prob(row: &InputRow) -> Option<f64> {
    row.f64("chosen_prob")
        .filter(|p| p.is_finite() && (0.0..=1.0).contains(p))
}

/// TRL's reward margin of a soft label (see the module docs): 0 for a hard label.
pub fn margin(chosen_prob: Option<f64>) -> f64 {
    match chosen_prob {
        Some(p) => {
            let p = p.clamp(0.01, 0.99);
            (p / (1.0 - p)).ln()
        }
        None => 0.0,
    }
}

/// One split's Parquet rows, built per input batch.
#[derive(Default)]
struct PairColumns {
    text: [StringBuilder; 3],
    label: datafusion::arrow::array::Float64Builder,
}

impl SplitWriters {
    fn open(
        format: ExportFormat,
        options: &ExportOptions,
        split: &str,
        out: &Path,
        report: &mut ExportReport,
    ) -> Result<Self> {
        let mut files = vec![];
        let mut parquet = None;
        match format {
            ExportFormat::NemoSft | ExportFormat::TrlSft => {
                files.push(create(out.join(format!("{split}.jsonl")), report)?)
            }
            ExportFormat::NemoRm => {
                let p = &options.prefix;
                files.push(create(
                    out.join(format!("{p}_{split}_comparisons_with_chat_prompt.jsonl")),
                    report,
                )?);
                files.push(create(
                    out.join(format!("{p}_{split}_prompts_with_chat_prompt.jsonl")),
                    report,
                )?);
            }
            ExportFormat::PmSoft => files.push(create(out.join(format!("{split}.jsonl")), report)?),
            ExportFormat::TrlDpo | ExportFormat::TrlReward => {
                files.push(create(out.join(format!("{split}.jsonl")), report)?);
                if let Some(label) = format.label_field() {
                    let path = out.join(format!("{split}.parquet"));
                    let file = File::create(&path).map_err(|e| EngineError::io(&path, e))?;
                    let writer = ArrowWriter::try_new(file, pairs_schema(label), None)?;
                    report.files.push(path.clone());
                    parquet = Some((path, writer));
                }
            }
        }
        let main = match &parquet {
            Some((path, _)) => Some(path),
            None => files.first().map(|(path, _)| path),
        };
        if let Some(name) = main.and_then(|p| p.file_name()) {
            report
                .data_files
                .insert(split.to_string(), name.to_string_lossy().to_string());
        }
        Ok(SplitWriters { files, parquet })
    }

    fn line(&mut self, index: usize, value: &serde_json::Value) -> Result<()> {
        let (path, w) = &mut self.files[index];
        serde_json::to_writer(&mut *w, value).map_err(|e| EngineError::Json {
            path: path.clone(),
            cause: e,
        })?;
        w.write_all(b"\n")
            .map_err(|e| EngineError::io(path.as_path(), e))
    }

    fn finish(self) -> Result<()> {
        for (path, mut w) in self.files {
            w.flush().map_err(|e| EngineError::io(&path, e))?;
        }
        if let Some((path, w)) = self.parquet {
            w.close()
                .map_err(|e| EngineError::Plan(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// Whether `name` (a value of a table's `split` column) can name export files inside the
/// output folder: letters, digits, `-`, `_` and `.` (not first), at most 64 characters. A
/// split holding `/`, `..` or a leading `.` would write outside the folder or hide files.
pub fn is_split_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Export a table (a run's `sft` or `preferences`) into `out` in `format`, one set of files
/// per value of its `split` column (or `all` without one), streaming batch by batch.
pub async fn export(
    df: DataFrame,
    format: ExportFormat,
    options: &ExportOptions,
    out: &Path,
) -> Result<ExportReport> {
    for needed in format.required_columns() {
        if df.schema().as_arrow().index_of(needed).is_err() {
            return Err(EngineError::Plan(format!(
                "no column '{needed}': not a table {} can export",
                format.name()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| EngineError::io(out, e))?;
    let mut report = ExportReport::default();
    let mut writers: BTreeMap<String, SplitWriters> = BTreeMap::new();
    let mut pairs: BTreeMap<String, PairColumns> = BTreeMap::new();
    let mut stream = df.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        for row in InputBatch::new(batch?).rows() {
            if let Some(reason) = skip_reason(format, &row, options.keep_truncated) {
                *report.skipped.entry(reason).or_default() += 1;
                continue;
            }
            let split = row.str("split").unwrap_or("all").to_string();
            if !writers.contains_key(&split) {
                if !is_split_name(&split) {
                    let shown: String = split.chars().take(80).collect();
                    return Err(EngineError::Plan(format!(
                        "split {shown:?} cannot name an export file (letters, digits, '-', '_' and '.' only): change the table's split values (the plan's `splits` variable)"
                    )));
                }
                let w = SplitWriters::open(format, options, &split, out, &mut report)?;
                writers.insert(split.clone(), w);
            }
            let Some(w) = writers.get_mut(&split) else {
                continue;
            };
            match format {
                ExportFormat::NemoSft | ExportFormat::TrlSft => {
                    let Some(value) = sft_line(format, &row) else {
                        continue;
                    };
                    w.line(0, &value)?;
                }
                _ => {
                    let (prompt, chosen, rejected) = (
                        row.str("prompt").unwrap_or_default(),
                        row.str("chosen").unwrap_or_default(),
                        row.str("rejected").unwrap_or_default(),
                    );
                    let soft = chosen_prob(&row);
                    match format {
                        ExportFormat::NemoRm => {
                            let t = &options.template;
                            let text = |reply: &str| {
                                let mut s = t.render(
                                    &[Message::user(prompt), Message::assistant(reply)],
                                    false,
                                );
                                s.push_str(&t.eos);
                                s
                            };
                            w.line(0, &json!({"text": text(chosen)}))?;
                            w.line(0, &json!({"text": text(rejected)}))?;
                            w.line(
                                1,
                                &json!({"text": t.render(&[Message::user(prompt)], true)}),
                            )?;
                        }
                        ExportFormat::PmSoft => w.line(
                            0,
                            &json!({"prompt": prompt, "chosen": chosen, "rejected": rejected, "target": soft.unwrap_or(1.0)}),
                        )?,
                        _ => {
                            let label = if format == ExportFormat::TrlReward {
                                w.line(
                                    0,
                                    &json!({"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin(soft)}),
                                )?;
                                Some(margin(soft))
                            } else {
                                w.line(
                                    0,
                                    &json!({"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_prob": soft}),
                                )?;
                                soft
                            };
                            let b = pairs.entry(split.clone()).or_default();
                            b.text[0].append_value(prompt);
                            b.text[1].append_value(chosen);
                            b.text[2].append_value(rejected);
                            b.label.append_option(label);
                        }
                    }
                }
            }
            *report.written.entry(split).or_default() += 1;
        }
        // Parquet rows go out once per input batch, per split.
        for (split, builders) in pairs.iter_mut() {
            if let (Some((path, pw)), Some(label)) = (
                writers.get_mut(split).and_then(|w| w.parquet.as_mut()),
                format.label_field(),
            ) {
                let mut columns: Vec<ArrayRef> = builders
                    .text
                    .iter_mut()
                    .map(|b| Arc::new(b.finish()) as ArrayRef)
                    .collect();
                columns.push(Arc::new(builders.label.finish()));
                let batch = RecordBatch::try_new(pairs_schema(label), columns)?;
                if batch.num_rows() > 0 {
                    pw.write(&batch)
                        .map_err(|e| EngineError::Plan(format!("{}: {e}", path.display())))?;
                }
            }
        }
    }
    for (_, w) in writers {
        w.finish()?;
    }
    Ok(report)
}
