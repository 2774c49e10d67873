//! `helpful_sft(path, …)`: helpfulness SFT conversations to blend with SL-CAI data.
//!
//! Reads JSONL (optionally `.gz`) in any of: NeMo chat (`conversations` of `{from, value}`,
//! `system`), TRL (`messages` of `{role, content}`), or HH transcripts (`chosen`: every turn).
//! Output: `sample_id`, `source`, `system`, `messages` (`List<Struct{role, content}>`).
//! Lines that fit none of these are skipped, counted and reported with their line number.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, ListBuilder, RecordBatch, StringBuilder, StructBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use serde_json::Value;

use super::args::StageArgs;
use super::prompts::{append_messages, io_err, message_fields, message_list_type, open};
use super::transcript::parse_turns;
use crate::llm::Message;
use crate::progress::{Progress, StageProgress};

const BATCH_ROWS: usize = 1024;

pub fn sft_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("system", DataType::Utf8, true),
        Field::new("messages", message_list_type(), true),
    ]))
}

#[derive(Debug)]
pub struct HelpfulSftFunction;

impl TableFunctionImpl for HelpfulSftFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let a = StageArgs::parse("helpful_sft", args.exprs())?;
        let path = PathBuf::from(a.input()?);
        let source = a.str_or("source", "helpful");
        a.finish(&[])?;
        if !path.is_file() {
            return Err(DataFusionError::Plan(format!(
                "helpful_sft: no such file: {}",
                path.display()
            )));
        }
        let stream = Arc::new(HelpfulStream { path, source });
        Ok(Arc::new(StreamingTable::try_new(
            sft_schema(),
            vec![stream],
        )?))
    }
}

#[derive(Debug)]
struct HelpfulStream {
    path: PathBuf,
    source: String,
}

/// One conversation from a line, or why not.
fn parse_line(line: &str) -> std::result::Result<(Option<String>, String, Vec<Message>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let id = v.get("id").map(|i| {
        i.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| i.to_string())
    });
    let system = v
        .get("system")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let turn =
        |t: &Value, role_key: &str, text_key: &str| -> std::result::Result<Message, String> {
            let role = t
                .get(role_key)
                .and_then(Value::as_str)
                .ok_or(format!("a turn has no '{role_key}'"))?;
            let content = t
                .get(text_key)
                .and_then(Value::as_str)
                .ok_or(format!("a turn has no '{text_key}'"))?;
            Ok(Message::new(&role.to_ascii_lowercase(), content))
        };
    let messages: Vec<Message> = if let Some(c) = v.get("conversations").and_then(Value::as_array) {
        c.iter()
            .map(|t| turn(t, "from", "value"))
            .collect::<std::result::Result<_, _>>()?
    } else if let Some(m) = v.get("messages").and_then(Value::as_array) {
        m.iter()
            .map(|t| turn(t, "role", "content"))
            .collect::<std::result::Result<_, _>>()?
    } else if let Some(t) = v.get("chosen").and_then(Value::as_str) {
        parse_turns(t)
    } else {
        return Err("no 'conversations', 'messages' or 'chosen' field".into());
    };
    if !messages
        .iter()
        .any(|m| m.role == "assistant" && !m.content.trim().is_empty())
    {
        return Err("the conversation has no assistant turn".into());
    }
    Ok((id, system, messages))
}

impl PartitionStream for HelpfulStream {
    fn schema(&self) -> &SchemaRef {
        static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(sft_schema)
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let progress = ctx
            .session_config()
            .get_extension::<Progress>()
            .unwrap_or_default()
            .stage("helpful_sft");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
        let (path, source) = (self.path.clone(), self.source.clone());
        tokio::task::spawn_blocking(move || {
            let send = |b: Result<RecordBatch>| tx.blocking_send(b).is_ok();
            let reader = match open(&path) {
                Ok(r) => r,
                Err(e) => {
                    send(Err(e));
                    return;
                }
            };
            let mut rows: Vec<(String, String, Vec<Message>)> = vec![];
            let mut skipped: Vec<String> = vec![];
            let mut skipped_count = 0usize;
            for (i, line) in reader.lines().enumerate() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        send(Err(io_err(&path, e)));
                        return;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                match parse_line(&line) {
                    Ok((id, system, messages)) => {
                        let id = id.unwrap_or_else(|| {
                            let text: Vec<&str> =
                                messages.iter().map(|m| m.content.as_str()).collect();
                            crate::keys::prompt_id(&text.join("\n"))
                        });
                        rows.push((id, system, messages));
                    }
                    Err(reason) => {
                        skipped_count += 1;
                        StageProgress::add(&progress.records_skipped, 1);
                        if skipped.len() < 10 {
                            skipped.push(format!("line {}: {reason}", i + 1));
                        }
                    }
                }
                if rows.len() >= BATCH_ROWS {
                    StageProgress::add(&progress.rows_done, rows.len() as u64);
                    if !send(build(&source, std::mem::take(&mut rows))) {
                        return;
                    }
                }
            }
            if !rows.is_empty() {
                StageProgress::add(&progress.rows_done, rows.len() as u64);
                send(build(&source, rows));
            }
            if skipped_count > 0 {
                tracing::warn!(
                    "helpful_sft: {}: skipped {skipped_count} line(s): {}",
                    path.display(),
                    skipped.join("; ")
                );
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(sft_schema(), stream))
    }
}

fn build(source: &str, rows: Vec<(String, String, Vec<Message>)>) -> Result<RecordBatch> {
    let mut ids = StringBuilder::new();
    let mut sources = StringBuilder::new();
    let mut systems = StringBuilder::new();
    let mut messages = ListBuilder::new(StructBuilder::from_fields(message_fields(), 0));
    for (id, system, turns) in rows {
        ids.append_value(id);
        sources.append_value(source);
        systems.append_value(system);
        append_messages(&mut messages, Some(&turns));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(sources.finish()),
        Arc::new(systems.finish()),
        Arc::new(messages.finish()),
    ];
    Ok(RecordBatch::try_new(sft_schema(), columns)?)
}
