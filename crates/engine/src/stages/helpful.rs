//! Helpfulness data to blend with CAI data, read from JSONL (optionally `.gz`) or a Delta
//! table (a folder or `s3://` URL with `_delta_log/`) whose rows have the same fields.
//!
//! - `helpful_sft(path, …)`: conversations in NeMo chat (`conversations` of `{from, value}`,
//!   `system`), TRL (`messages` of `{role, content}`) or HH (`chosen`: every turn) shape.
//!   Output `sample_id`, `source`, `system`, `messages` (`List<Struct{role, content}>`).
//! - `helpful_pairs(path, …)`: HH preference records (`chosen`/`rejected` transcripts that
//!   share their history). Output `prompt_id`, `source`, `prompt`, `chosen`, `rejected`: the
//!   prompt is the history before the last assistant turn (a single human turn as is, longer
//!   histories in HH's `Human:`/`Assistant:` text form); chosen and rejected are the two last
//!   assistant turns.
//!
//! Lines that fit none of these shapes are skipped, counted and reported with their line
//! number. Option `source` labels the rows (default `helpful`).

use std::fmt::Debug;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, ListBuilder, RecordBatch, StringBuilder, StructBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{exec_datafusion_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::streaming::PartitionStream;
use serde_json::Value;

use super::red_team_prompts::{
    append_messages, blocking_rows, blocking_source, io_err, message_fields, message_list_type,
    open,
};
use crate::parse::transcript::parse_turns;
use crate::progress::{Progress, StageProgress};
use crate::stage::args::StageArgs;
use crate::stage::input::{TableRows, delta_table, session_state};
use caiflow_llm::Message;

const BATCH_ROWS: usize = 1024;

pub fn sft_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("system", DataType::Utf8, true),
        Field::new("messages", message_list_type(), true),
    ]))
}

pub fn pairs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("chosen", DataType::Utf8, false),
        Field::new("rejected", DataType::Utf8, false),
    ]))
}

/// One JSONL line format: how a line becomes a row, and rows a batch.
trait LineFormat: Debug + Send + Sync + 'static {
    type Row: Send;
    const FUNCTION: &'static str;
    fn schema() -> SchemaRef;
    fn parse(line: &str) -> std::result::Result<Self::Row, String>;
    fn build(source: &str, rows: Vec<Self::Row>) -> Result<RecordBatch>;
}

#[derive(Debug)]
struct SftFormat;

impl LineFormat for SftFormat {
    type Row = (String, String, Vec<Message>);
    const FUNCTION: &'static str = "helpful_sft";

    fn schema() -> SchemaRef {
        sft_schema()
    }

    fn parse(line: &str) -> std::result::Result<Self::Row, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
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
        let messages: Vec<Message> =
            if let Some(c) = v.get("conversations").and_then(Value::as_array) {
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
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => {
                let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                crate::keys::prompt_id(&text.join("\n"))
            }
        };
        Ok((id, system, messages))
    }

    fn build(source: &str, rows: Vec<Self::Row>) -> Result<RecordBatch> {
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
}

#[derive(Debug)]
struct PairsFormat;

/// HH history as text, the form TRL and the RM template take as one prompt string.
fn history_text(turns: &[Message]) -> String {
    if let [only] = turns {
        return only.content.clone();
    }
    turns
        .iter()
        .map(|t| {
            format!(
                "{}: {}",
                if t.role == "user" {
                    "Human"
                } else {
                    "Assistant"
                },
                t.content
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

impl LineFormat for PairsFormat {
    /// (prompt, chosen, rejected)
    type Row = (String, String, String);
    const FUNCTION: &'static str = "helpful_pairs";

    fn schema() -> SchemaRef {
        pairs_schema()
    }

    fn parse(line: &str) -> std::result::Result<Self::Row, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .ok_or(format!("no string field '{k}'"))
        };
        let mut chosen = parse_turns(field("chosen")?);
        let mut rejected = parse_turns(field("rejected")?);
        let (Some(c), Some(r)) = (chosen.pop(), rejected.pop()) else {
            return Err("empty transcript".into());
        };
        if c.role != "assistant"
            || r.role != "assistant"
            || c.content.is_empty()
            || r.content.is_empty()
        {
            return Err("a transcript does not end with an assistant turn".into());
        }
        if chosen != rejected || chosen.is_empty() {
            return Err("chosen and rejected do not share their history".into());
        }
        Ok((history_text(&chosen), c.content, r.content))
    }

    fn build(source: &str, rows: Vec<Self::Row>) -> Result<RecordBatch> {
        let mut b: Vec<StringBuilder> = (0..5).map(|_| StringBuilder::new()).collect();
        for (prompt, chosen, rejected) in rows {
            b[0].append_value(crate::keys::prompt_id(&format!(
                "{prompt}\n{chosen}\n{rejected}"
            )));
            b[1].append_value(source);
            b[2].append_value(prompt);
            b[3].append_value(chosen);
            b[4].append_value(rejected);
        }
        let columns: Vec<ArrayRef> = b
            .iter_mut()
            .map(|x| Arc::new(x.finish()) as ArrayRef)
            .collect();
        Ok(RecordBatch::try_new(pairs_schema(), columns)?)
    }
}

fn provider<F: LineFormat>(args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
    let a = StageArgs::parse(F::FUNCTION, args.exprs())?;
    let state = session_state(args.session(), F::FUNCTION)?;
    let table = match delta_table(state, a.input()?, F::FUNCTION)? {
        Some(t) => Some(Arc::new(TableRows::plan(state, t, F::FUNCTION)?)),
        None => None,
    };
    let path = PathBuf::from(a.input()?);
    let source = a.str_or("source", "helpful");
    a.finish(&[])?;
    if table.is_none() && !path.is_file() {
        return plan_err!("{}: no such file: {}", F::FUNCTION, path.display());
    }
    let stream = Arc::new(JsonlStream::<F> {
        path,
        table,
        source,
        schema: F::schema(),
        format: std::marker::PhantomData,
    });
    Ok(Arc::new(StreamingTable::try_new(
        F::schema(),
        vec![stream],
    )?))
}

#[derive(Debug)]
pub struct HelpfulSftFunction;

impl TableFunctionImpl for HelpfulSftFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        provider::<SftFormat>(args)
    }
}

#[derive(Debug)]
pub struct HelpfulPairsFunction;

impl TableFunctionImpl for HelpfulPairsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        provider::<PairsFormat>(args)
    }
}

#[derive(Debug)]
struct JsonlStream<F> {
    path: PathBuf,
    /// The rows of `path` when it is a Delta table: each row is read as a JSON record.
    table: Option<Arc<TableRows>>,
    source: String,
    schema: SchemaRef,
    format: std::marker::PhantomData<F>,
}

impl<F: LineFormat> PartitionStream for JsonlStream<F> {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let progress = ctx
            .session_config()
            .get_extension::<Progress>()
            .unwrap_or_default()
            .stage(F::FUNCTION);
        let (path, source) = (self.path.clone(), self.source.clone());
        let table = self.table.as_ref().map(|t| blocking_rows(t, ctx));
        blocking_source(self.schema.clone(), move |tx| {
            let send = |b: Result<RecordBatch>| tx.blocking_send(b).is_ok();
            let lines: Box<dyn Iterator<Item = Result<String>>> = match table {
                Some(Ok((_, batches))) => Box::new(json_lines(batches)),
                Some(Err(e)) => {
                    send(Err(e));
                    return;
                }
                None => match open(&path) {
                    Ok(r) => Box::new(r.lines().map(|l| l.map_err(|e| io_err(&path, e)))),
                    Err(e) => {
                        send(Err(e));
                        return;
                    }
                },
            };
            let mut rows = vec![];
            let mut skipped = vec![];
            let mut skipped_count = 0usize;
            for (i, line) in lines.enumerate() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        send(Err(e));
                        return;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                match F::parse(&line) {
                    Ok(row) => rows.push(row),
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
                    if !send(F::build(&source, std::mem::take(&mut rows))) {
                        return;
                    }
                }
            }
            if !rows.is_empty() {
                StageProgress::add(&progress.rows_done, rows.len() as u64);
                send(F::build(&source, rows));
            }
            if skipped_count > 0 {
                tracing::warn!(
                    "{}: {}: skipped {skipped_count} line(s): {}",
                    F::FUNCTION,
                    path.display(),
                    skipped.join("; ")
                );
            }
        })
    }
}

/// Each row of `batches` as one line of JSON (a record of its columns), so a table's rows go
/// through the same parsing as a JSONL file's lines.
fn json_lines(
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> impl Iterator<Item = Result<String>> {
    batches.flat_map(|batch| {
        let encoded = batch.and_then(|b| {
            let mut writer = LineDelimitedWriter::new(Vec::new());
            writer.write(&b)?;
            writer.finish()?;
            String::from_utf8(writer.into_inner())
                .map_err(|e| exec_datafusion_err!("a table row is not UTF-8 JSON: {e}"))
        });
        let lines: Vec<Result<String>> = match encoded {
            Ok(text) => text.lines().map(|l| Ok(l.to_string())).collect(),
            Err(e) => vec![Err(e)],
        };
        lines
    })
}
