//! `red_team_prompts(path, …)`: prompts from red-teaming data.
//!
//! Reads, by content and extension:
//! - HH-RLHF red-team records (`transcript`; JSONL or one JSON array; `.gz` too), with the
//!   harmlessness score under either spelling (`task_descripton_…` as in the real data, or
//!   `task_description_…`);
//! - HH preference records (`chosen`/`rejected`): the first human turn of `chosen`;
//! - plain JSONL, CSV or Parquet with a prompt column (`column => 'prompt'`);
//! - a Delta table (a folder or `s3://` URL with `_delta_log/`), read like Parquet.
//!
//! Without `column` (or with `column => 'auto'`, the shipped plans' default) the format is
//! detected: per JSON record `transcript`, then `chosen`, then `prompt`; for CSV, Parquet
//! and Delta the first of the columns `prompt`, `transcript`, `chosen` (transcripts are cut
//! to their first human turn). A named column is read as plain text and wins over detection.
//!
//! A file with records of which none can be read is an error (naming the file, the count and
//! the first reasons), so a wrong format never turns into an empty, "successful" run.
//! Output: `prompt_id` (hash of the normalized prompt, or `id_column`), `prompt`, `source`,
//! `harmlessness_score`, and with `turns => 'all'` a `conversation` column holding every
//! turn up to the last human one. A record whose prompt cannot be extracted is skipped,
//! counted and reported with its line number.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{exec_datafusion_err, plan_datafusion_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use serde_json::Value;

use crate::dedup::{NearDuplicates, check_threshold};
use crate::keys;
use crate::parse::transcript::{conversation_until_last_human, first_human_turn};
use crate::progress::{Progress, StageProgress};
use crate::stage::args::StageArgs;
use crate::stage::input::{TableRows, delta_table, session_state};
use caiflow_llm::Message;

const BATCH_ROWS: usize = 1024;
/// Skipped records listed by line in the warning (all are counted).
const REPORTED_SKIPS: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Turns {
    First,
    All,
}

#[derive(Clone, Debug)]
struct PromptOptions {
    path: PathBuf,
    /// The rows of `path` when it is a Delta table.
    table: Option<Arc<TableRows>>,
    column: Option<String>,
    id_column: Option<String>,
    source: Option<String>,
    turns: Turns,
    dedup: bool,
    /// Drop prompts at least this similar to an earlier one ([`super::near_dedup`]).
    near_dedup: Option<f64>,
}

#[derive(Debug)]
pub struct RedTeamPromptsFunction;

pub fn message_list_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(message_fields()),
        true,
    )))
}

pub fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ])
}

fn schema(turns: &Turns) -> SchemaRef {
    let mut fields = vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("harmlessness_score", DataType::Float64, true),
    ];
    if *turns == Turns::All {
        fields.push(Field::new("conversation", message_list_type(), true));
    }
    Arc::new(Schema::new(fields))
}

impl TableFunctionImpl for RedTeamPromptsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        const NAME: &str = "red_team_prompts";
        let a = StageArgs::parse(NAME, args.exprs())?;
        let state = session_state(args.session(), NAME)?;
        let table = match delta_table(state, a.input()?, NAME)? {
            Some(t) => Some(Arc::new(TableRows::plan(state, t, NAME)?)),
            None => None,
        };
        let path = PathBuf::from(a.input()?);
        let turns = match a.str_or("turns", "first").as_str() {
            "first" => Turns::First,
            "all" => Turns::All,
            other => {
                return plan_err!(
                    "red_team_prompts: turns => '{other}' (expected 'first' or 'all')"
                );
            }
        };
        let options = PromptOptions {
            // 'auto' (or '') means: detect the format, as if no column were named.
            column: a
                .str("column")
                .map(str::trim)
                .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("auto"))
                .map(str::to_string),
            id_column: a.str("id_column").map(str::to_string),
            source: a.str("source").map(str::to_string),
            dedup: a.bool_or("dedup", true)?,
            near_dedup: match a.parsed::<f64>("near_dedup")? {
                None => None,
                Some(t) => Some(check_threshold(NAME, "near_dedup", t)?),
            },
            turns,
            path,
            table,
        };
        a.finish(&[])?;
        if options.table.is_none() && !options.path.is_file() {
            return plan_err!("red_team_prompts: no such file: {}", options.path.display());
        }
        let stream = Arc::new(PromptStream {
            schema: schema(&options.turns),
            options,
        });
        Ok(Arc::new(StreamingTable::try_new(
            stream.schema.clone(),
            vec![stream],
        )?))
    }
}

#[derive(Debug)]
struct PromptStream {
    schema: SchemaRef,
    options: PromptOptions,
}

impl PartitionStream for PromptStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let progress = ctx
            .session_config()
            .get_extension::<Progress>()
            .unwrap_or_default()
            .stage("red_team_prompts");
        let options = self.options.clone();
        let schema = self.schema.clone();
        let rows = options.table.as_ref().map(|t| blocking_rows(t, ctx));
        blocking_source(self.schema.clone(), move |tx| {
            let mut reader = Reader::new(schema, options, progress, tx.clone());
            let read = match rows {
                Some(rows) => rows.and_then(|(schema, rows)| reader.run_table(&schema, rows)),
                None => reader.run(),
            };
            if let Err(e) = read {
                let _ = tx.blocking_send(Err(e));
            }
        })
    }
}

/// A record batch stream fed by blocking work (file reading and parsing) on a blocking
/// thread, with room for two batches in between so the reader stays just ahead.
pub(crate) fn blocking_source(
    schema: SchemaRef,
    work: impl FnOnce(tokio::sync::mpsc::Sender<Result<RecordBatch>>) + Send + 'static,
) -> SendableRecordBatchStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(2);
    tokio::task::spawn_blocking(move || work(tx));
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

/// The rows of `table` as a blocking iterator (for a blocking thread), with their schema.
pub(crate) fn blocking_rows(
    table: &TableRows,
    ctx: Arc<TaskContext>,
) -> Result<(
    SchemaRef,
    impl Iterator<Item = Result<RecordBatch>> + Send + 'static,
)> {
    let handle = tokio::runtime::Handle::current();
    let mut stream = table.execute(ctx)?;
    Ok((
        table.schema(),
        std::iter::from_fn(move || handle.block_on(stream.next())),
    ))
}

/// How a CSV or Parquet text column is read.
#[derive(Clone, Copy, Debug)]
enum TextKind {
    Plain,
    /// An HH transcript, with the `source` its rows get.
    Transcript(&'static str),
}

/// One extracted record.
struct Record {
    prompt: String,
    id: Option<String>,
    source: String,
    score: Option<f64>,
    conversation: Option<Vec<Message>>,
}

struct Reader {
    schema: SchemaRef,
    options: PromptOptions,
    progress: Arc<StageProgress>,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    /// 128 bits of the SHA-256 of each id seen (dedup): 16 bytes a prompt, not its id.
    seen: HashSet<u128>,
    /// MinHash signatures of the prompts kept, with `near_dedup`.
    near: Option<NearDuplicates>,
    pending: Vec<Record>,
    skipped: Vec<(usize, String)>,
    skipped_count: usize,
    /// Records whose prompt was extracted (duplicates included).
    read: usize,
    duplicates: usize,
    near_duplicates: usize,
    /// Set when the consumer went away (a LIMIT was reached): stop reading.
    closed: bool,
}

impl Reader {
    fn new(
        schema: SchemaRef,
        options: PromptOptions,
        progress: Arc<StageProgress>,
        tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    ) -> Self {
        let near_dedup = options.near_dedup;
        Reader {
            schema,
            options,
            progress,
            tx,
            seen: HashSet::new(),
            near: near_dedup.map(NearDuplicates::new),
            pending: vec![],
            skipped: vec![],
            skipped_count: 0,
            read: 0,
            duplicates: 0,
            near_duplicates: 0,
            closed: false,
        }
    }

    fn run(&mut self) -> Result<()> {
        let path = self.options.path.clone();
        let name = path.to_string_lossy().to_ascii_lowercase();
        let plain = name.trim_end_matches(".gz");
        if plain.ends_with(".parquet") {
            self.read_parquet(&path)?;
        } else if plain.ends_with(".csv") {
            self.read_csv(open(&path)?)?;
        } else {
            self.read_json(open(&path)?)?;
        }
        self.flush()?;
        self.report()
    }

    /// Read the rows of a table (a Delta table's scan), like a Parquet file's.
    fn run_table(
        &mut self,
        schema: &Schema,
        rows: impl Iterator<Item = Result<RecordBatch>>,
    ) -> Result<()> {
        self.read_batches(schema, rows, "delta")?;
        self.flush()?;
        self.report()
    }

    fn read_json(&mut self, reader: Box<dyn BufRead>) -> Result<()> {
        let mut reader = reader;
        let first = loop {
            let buf = reader
                .fill_buf()
                .map_err(|e| io_err(&self.options.path, e))?;
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break Some(buf[i]),
                None if buf.is_empty() => break None,
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        if first == Some(b'[') {
            // A single JSON array (as the HH red-team attempts file ships): streamed element by
            // element (memory does not grow with the file); records are numbered from 1 in
            // array order.
            let path = self.options.path.clone();
            let mut de = serde_json::Deserializer::from_reader(reader);
            let mut failed = None;
            let streamed =
                serde::Deserializer::deserialize_seq(&mut de, EachRecord(self, &mut failed));
            return match (failed, streamed) {
                (Some(e), _) => Err(e),
                // Stopped early (a LIMIT was reached): the rest is never read.
                (None, _) if self.closed => Ok(()),
                (None, Ok(())) => Ok(()),
                (None, Err(e)) => Err(exec_datafusion_err!(
                    "{}: invalid JSON array: {e}",
                    path.display()
                )),
            };
        }
        // Lines as bytes: a line that is not UTF-8 is one skipped record, not a failed file.
        let mut line_no = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| io_err(&self.options.path, e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let record = match std::str::from_utf8(&buf) {
                Err(e) => Err(format!("not UTF-8 text ({e})")),
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => serde_json::from_str::<Value>(line)
                    .map_err(|e| format!("invalid JSON: {e}"))
                    .and_then(|v| self.extract_json(&v)),
            };
            self.accept(line_no, record)?;
            if self.closed {
                break;
            }
        }
        Ok(())
    }

    fn extract_json(&self, v: &Value) -> std::result::Result<Record, String> {
        let obj = v.as_object().ok_or("record is not a JSON object")?;
        let field = |k: &str| obj.get(k).and_then(Value::as_str);
        let id = self
            .options
            .id_column
            .as_deref()
            .and_then(|c| obj.get(c))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        let score = obj
            .get("task_descripton_harmlessness_score")
            .or_else(|| obj.get("task_description_harmlessness_score"))
            .and_then(Value::as_f64);
        if let Some(column) = &self.options.column {
            let prompt = field(column).ok_or_else(|| format!("no string field '{column}'"))?;
            return self.plain(prompt, id, "jsonl", score);
        }
        let (transcript, source) = if let Some(t) = field("transcript") {
            (t, "hh-red-team")
        } else if let Some(t) = field("chosen") {
            (t, "hh-preference")
        } else if let Some(p) = field("prompt") {
            return self.plain(p, id, "jsonl", score);
        } else {
            return Err("no 'transcript', 'chosen' or 'prompt' field (name the prompt field with column => '…')".into());
        };
        self.transcript_record(transcript, id, source, score)
    }

    /// A record from an HH transcript: its first human turn (and the turns, if asked).
    fn transcript_record(
        &self,
        transcript: &str,
        id: Option<String>,
        source: &'static str,
        score: Option<f64>,
    ) -> std::result::Result<Record, String> {
        let prompt = first_human_turn(transcript)?;
        let conversation = match self.options.turns {
            Turns::First => None,
            Turns::All => Some(conversation_until_last_human(transcript)?),
        };
        Ok(Record {
            prompt,
            id,
            source: source.to_string(),
            score,
            conversation,
        })
    }

    /// The column a CSV or Parquet file's prompts come from, and how to read it: the named
    /// column as plain text, else the first of `prompt`, `transcript`, `chosen`.
    fn text_column(&self, columns: &[&str]) -> Result<(usize, TextKind)> {
        let find = |name: &str| columns.iter().position(|c| *c == name);
        if let Some(column) = &self.options.column {
            return match find(column) {
                Some(i) => Ok((i, TextKind::Plain)),
                None => plan_err!(
                    "red_team_prompts: {} has no column '{column}' (columns: {})",
                    self.options.path.display(),
                    columns.join(", ")
                ),
            };
        }
        for (name, kind) in [
            ("prompt", TextKind::Plain),
            ("transcript", TextKind::Transcript("hh-red-team")),
            ("chosen", TextKind::Transcript("hh-preference")),
        ] {
            if let Some(i) = find(name) {
                return Ok((i, kind));
            }
        }
        plan_err!(
            "red_team_prompts: {} has no column 'prompt' (nor 'transcript' or 'chosen'; columns: {}); name the prompt column with column => '…'",
            self.options.path.display(),
            columns.join(", ")
        )
    }

    /// A record from one cell of a CSV or Parquet text column.
    fn cell_record(
        &self,
        kind: TextKind,
        text: &str,
        id: Option<String>,
        format: &'static str,
    ) -> std::result::Result<Record, String> {
        match kind {
            TextKind::Plain => self.plain(text, id, format, None),
            TextKind::Transcript(source) => self.transcript_record(text, id, source, None),
        }
    }

    fn plain(
        &self,
        prompt: &str,
        id: Option<String>,
        source: &'static str,
        score: Option<f64>,
    ) -> std::result::Result<Record, String> {
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err("empty prompt".into());
        }
        Ok(Record {
            prompt: prompt.to_string(),
            id,
            source: source.to_string(),
            score,
            conversation: (self.options.turns == Turns::All).then(|| vec![Message::user(prompt)]),
        })
    }

    fn read_csv(&mut self, reader: Box<dyn BufRead>) -> Result<()> {
        let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
        let headers = csv
            .headers()
            .map_err(|e| exec_datafusion_err!("{}: {e}", self.options.path.display()))?
            .clone();
        let (col, kind) = self.text_column(&headers.iter().collect::<Vec<_>>())?;
        let id_col = match &self.options.id_column {
            Some(c) => Some(headers.iter().position(|h| h == c).ok_or_else(|| {
                plan_datafusion_err!(
                    "red_team_prompts: {} has no column '{c}'",
                    self.options.path.display()
                )
            })?),
            None => None,
        };
        for result in csv.records() {
            let (line, record) = match result {
                Ok(r) => (r.position().map(|p| p.line() as usize).unwrap_or(0), Ok(r)),
                Err(e) => (
                    e.position().map(|p| p.line() as usize).unwrap_or(0),
                    Err(e.to_string()),
                ),
            };
            let extracted = record.and_then(|r| {
                let text = r.get(col).ok_or("row has too few fields")?;
                let id = id_col.and_then(|i| r.get(i)).map(str::to_string);
                self.cell_record(kind, text, id, "csv")
            });
            self.accept(line, extracted)?;
            if self.closed {
                break;
            }
        }
        Ok(())
    }

    fn read_parquet(&mut self, path: &Path) -> Result<()> {
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let arrow_schema = builder.schema().clone();
        let batches = builder.with_batch_size(BATCH_ROWS).build()?;
        self.read_batches(
            &arrow_schema,
            batches.map(|b| b.map_err(DataFusionError::from)),
            "parquet",
        )
    }

    /// Read prompts from the text column of record batches (a Parquet file, a table).
    fn read_batches(
        &mut self,
        arrow_schema: &Schema,
        batches: impl Iterator<Item = Result<RecordBatch>>,
        format: &'static str,
    ) -> Result<()> {
        let path = self.options.path.clone();
        let names: Vec<&str> = arrow_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let (col, kind) = self.text_column(&names)?;
        let id_col = match &self.options.id_column {
            Some(c) => Some(arrow_schema.index_of(c).map_err(|_| {
                plan_datafusion_err!("red_team_prompts: {} has no column '{c}'", path.display())
            })?),
            None => None,
        };
        let mut row = 0;
        for batch in batches {
            let batch = batch?;
            let prompts = datafusion::arrow::compute::cast(batch.column(col), &DataType::Utf8)?;
            let ids: Option<ArrayRef> = match id_col {
                Some(i) => Some(datafusion::arrow::compute::cast(
                    batch.column(i),
                    &DataType::Utf8,
                )?),
                None => None,
            };
            let prompts = prompts.as_string::<i32>();
            for i in 0..batch.num_rows() {
                row += 1;
                let id = ids
                    .as_ref()
                    .map(|a| a.as_string::<i32>())
                    .filter(|a| a.is_valid(i))
                    .map(|a| a.value(i).to_string());
                let record = if prompts.is_valid(i) {
                    self.cell_record(kind, prompts.value(i), id, format)
                } else {
                    Err("null prompt".into())
                };
                self.accept(row, record)?;
                if self.closed {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, line: usize, record: std::result::Result<Record, String>) -> Result<()> {
        match record {
            Err(reason) => {
                self.skipped_count += 1;
                StageProgress::add(&self.progress.records_skipped, 1);
                if self.skipped.len() < REPORTED_SKIPS {
                    self.skipped.push((line, reason));
                }
            }
            Ok(mut r) => {
                self.read += 1;
                if let Some(s) = &self.options.source {
                    r.source = s.clone();
                }
                let id = r.id.clone().unwrap_or_else(|| keys::prompt_id(&r.prompt));
                if self.options.dedup && !self.seen.insert(id_digest(&id)) {
                    self.duplicates += 1;
                    StageProgress::add(&self.progress.rows_dropped, 1);
                    return Ok(());
                }
                if let Some(near) = &mut self.near
                    && near.seen_or_insert(&r.prompt)
                {
                    self.near_duplicates += 1;
                    StageProgress::add(&self.progress.rows_dropped, 1);
                    return Ok(());
                }
                r.id = Some(id);
                self.pending.push(r);
                if self.pending.len() >= BATCH_ROWS {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() || self.closed {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending);
        let batch = build_batch(&self.schema, &records, self.options.turns == Turns::All)?;
        StageProgress::add(&self.progress.rows_done, records.len() as u64);
        if self.tx.blocking_send(Ok(batch)).is_err() {
            self.closed = true;
        }
        Ok(())
    }

    /// The skipped records (the first few by line), or `None` if none were skipped.
    fn skip_summary(&self) -> Option<String> {
        if self.skipped_count == 0 {
            return None;
        }
        let listed: Vec<String> = self
            .skipped
            .iter()
            .map(|(l, r)| format!("line {l}: {r}"))
            .collect();
        let more = self.skipped_count.saturating_sub(self.skipped.len());
        Some(format!(
            "{}{}",
            listed.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ))
    }

    /// Report what was skipped; an error if records were there but none could be read.
    fn report(&self) -> Result<()> {
        let path = self.options.path.display();
        if let Some(listed) = self.skip_summary() {
            if self.read == 0 && !self.closed {
                return plan_err!(
                    "red_team_prompts: {path}: none of its {} record(s) could be read: {listed}{}",
                    self.skipped_count,
                    if self.options.column.is_some() {
                        " (is `column` right? without it the format is detected)"
                    } else {
                        " (name the prompt field with column => '…')"
                    }
                );
            }
            tracing::warn!(
                "red_team_prompts: {path}: skipped {} record(s) whose prompt could not be extracted: {listed}",
                self.skipped_count,
            );
        } else if self.read == 0 {
            self.progress
                .warn(format!("0 prompts read from {path} (it has no records)"));
        }
        if self.duplicates > 0 {
            tracing::info!(
                "red_team_prompts: {path}: dropped {} duplicate prompt(s) (dedup => false keeps them)",
                self.duplicates
            );
        }
        if let (Some(t), n @ 1..) = (self.options.near_dedup, self.near_duplicates) {
            tracing::info!(
                "red_team_prompts: {path}: dropped {n} near-duplicate prompt(s) (similarity >= {t})"
            );
        }
        Ok(())
    }
}

/// The first 128 bits of the SHA-256 of a prompt id.
fn id_digest(id: &str) -> u128 {
    let b = keys::seed_bytes(&[id.as_bytes()]);
    let mut first = [0u8; 16];
    first.copy_from_slice(&b[..16]);
    u128::from_le_bytes(first)
}

/// Takes a JSON array's elements one at a time into the reader (see `read_json`); the
/// reader's own error, if one stops it, is put in the second field.
struct EachRecord<'a>(&'a mut Reader, &'a mut Option<DataFusionError>);

impl<'de> serde::de::Visitor<'de> for EachRecord<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        let mut i = 0usize;
        while let Some(v) = seq.next_element::<Value>()? {
            i += 1;
            let record = self.0.extract_json(&v);
            if let Err(e) = self.0.accept(i, record) {
                *self.1 = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
            if self.0.closed {
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> DataFusionError {
    exec_datafusion_err!("cannot read {}: {e}", path.display())
}

pub(crate) fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let raw: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, raw)))
}

fn build_batch(
    schema: &SchemaRef,
    records: &[Record],
    with_conversation: bool,
) -> Result<RecordBatch> {
    let mut ids = StringBuilder::new();
    let mut prompts = StringBuilder::new();
    let mut sources = StringBuilder::new();
    let mut scores = Float64Builder::new();
    let mut conversations = ListBuilder::new(StructBuilder::from_fields(message_fields(), 0));
    for r in records {
        ids.append_option(r.id.as_deref());
        prompts.append_value(&r.prompt);
        sources.append_value(&r.source);
        scores.append_option(r.score);
        if with_conversation {
            append_messages(&mut conversations, r.conversation.as_deref());
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(prompts.finish()),
        Arc::new(sources.finish()),
        Arc::new(scores.finish()),
    ];
    if with_conversation {
        columns.push(Arc::new(conversations.finish()));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Append one `List<Struct{role, content}>` cell.
pub fn append_messages(list: &mut ListBuilder<StructBuilder>, messages: Option<&[Message]>) {
    let Some(messages) = messages else {
        list.append(false);
        return;
    };
    let items = list.values();
    for m in messages {
        if let Some(b) = items.field_builder::<StringBuilder>(0) {
            b.append_value(&m.role);
        }
        if let Some(b) = items.field_builder::<StringBuilder>(1) {
            b.append_value(&m.content);
        }
        items.append(true);
    }
    list.append(true);
}
