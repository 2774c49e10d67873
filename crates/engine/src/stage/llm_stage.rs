//! The LLM-stage framework: what every stage that calls a model shares, written once.
//!
//! A stage author implements [`LlmStage`]: its SQL name, how it is built from a call's
//! arguments, the input columns it needs, a typed output row ([`output_row!`]) and what one
//! row becomes. The framework ([`LlmRowStage`], made a table function by
//! [`super::StageFunction`]) adds the rest, the same for every stage:
//!
//! - the `{output}_reasoning` column (a reasoning model's thinking, never in the answer),
//!   the `{stage}_lineage` column (the request behind each row) and the `error` column;
//! - rows an upstream stage failed (or whose needed input is null) are skipped with that
//!   error carried, and no request is made ([`Missing`]);
//! - a failed request's error is prefixed with the stage's name (`respond: …`);
//! - every error row is counted in the stage's progress, by reason;
//! - the cells of a row always match the output fields, because both come from the same
//!   typed row.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::error::Result;

use super::args::StageArgs;
use super::cells::{
    CandidateCell, Cell, ComparisonCell, OutRow, candidates_field, comparisons_type,
};
use super::contract::{Grouping, RowStage, StageFactory};
use super::env::StageEnv;
use super::lineage::{Lineage, lineage_field, lineage_fields};
use super::llm_call;
use super::options::LlmOptions;
use super::row::InputRow;
use caiflow_llm::{ChatRequest, Completion};

/// A Rust type an output row's field can have, and the Arrow column it becomes.
pub trait CellValue {
    fn data_type() -> DataType;
    fn into_cell(self) -> Cell;
}

impl CellValue for Option<String> {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn into_cell(self) -> Cell {
        Cell::Str(self)
    }
}

impl CellValue for Option<u32> {
    fn data_type() -> DataType {
        DataType::UInt32
    }
    fn into_cell(self) -> Cell {
        Cell::U32(self)
    }
}

impl CellValue for Option<u64> {
    fn data_type() -> DataType {
        DataType::UInt64
    }
    fn into_cell(self) -> Cell {
        Cell::U64(self)
    }
}

impl CellValue for Option<f64> {
    fn data_type() -> DataType {
        DataType::Float64
    }
    fn into_cell(self) -> Cell {
        Cell::F64(self)
    }
}

impl CellValue for Option<bool> {
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn into_cell(self) -> Cell {
        Cell::Bool(self)
    }
}

/// A `List<UInt32>` (never null).
impl CellValue for Vec<u32> {
    fn data_type() -> DataType {
        DataType::List(Arc::new(Field::new("item", DataType::UInt32, true)))
    }
    fn into_cell(self) -> Cell {
        Cell::U32List(self)
    }
}

/// A request's lineage (a struct of [`lineage_fields`]).
impl CellValue for Option<Lineage> {
    fn data_type() -> DataType {
        DataType::Struct(lineage_fields())
    }
    fn into_cell(self) -> Cell {
        self.into()
    }
}

/// The candidates a judge saw.
impl CellValue for Vec<CandidateCell> {
    fn data_type() -> DataType {
        candidates_field("item").data_type().clone()
    }
    fn into_cell(self) -> Cell {
        Cell::Candidates(self)
    }
}

/// The pairwise comparisons a judge made.
impl CellValue for Vec<ComparisonCell> {
    fn data_type() -> DataType {
        comparisons_type()
    }
    fn into_cell(self) -> Cell {
        Cell::Comparisons(self)
    }
}

/// A stage's typed output row: its fields and one row's cells, in the same order. Write it
/// with [`output_row!`](crate::output_row), which derives both from one struct.
pub trait OutputRow: Default + Send + 'static {
    fn fields() -> Vec<Field>;
    fn cells(self) -> Vec<Cell>;
}

/// Declares a stage's output row: a struct whose fields (each an `Option<…>` or a list, see
/// [`CellValue`]) are the columns the stage adds, in order, before the framework's
/// `{stage}_lineage` and `error`.
///
/// ```ignore
/// output_row! {
///     /// The model's answer.
///     pub struct Answer { response: Option<String> }
/// }
/// ```
#[macro_export]
macro_rules! output_row {
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        $vis struct $name { $($(#[$fmeta])* pub $field: $ty),* }

        impl $crate::stage::OutputRow for $name {
            fn fields() -> Vec<$crate::stage::Field> {
                vec![$($crate::stage::Field::new(
                    stringify!($field),
                    <$ty as $crate::stage::CellValue>::data_type(),
                    true,
                )),*]
            }
            fn cells(self) -> Vec<$crate::stage::Cell> {
                vec![$($crate::stage::CellValue::into_cell(self.$field)),*]
            }
        }
    };
}

/// What a stage made of its input: a typed row, the lineage of the request behind it and,
/// for a failed row, its error (the row's other cells may still say what was tried).
#[derive(Debug)]
pub struct Emit<R> {
    pub row: R,
    pub lineage: Option<Lineage>,
    pub error: Option<String>,
    /// The model's thinking behind the row's answer (`{output}_reasoning`).
    pub reasoning: Option<String>,
}

impl<R> Emit<R> {
    /// A row made by an answered request.
    pub fn ok(row: R, lineage: Option<Lineage>) -> Self {
        Emit {
            row,
            lineage,
            error: None,
            reasoning: None,
        }
    }

    /// A row that failed with `error`.
    pub fn failed(row: R, lineage: Option<Lineage>, error: String) -> Self {
        Emit {
            error: Some(error),
            ..Self::ok(row, lineage)
        }
    }

    /// The same row with the thinking behind its answer.
    pub fn with_reasoning(mut self, reasoning: Option<String>) -> Self {
        self.reasoning = reasoning;
        self
    }
}

/// An input row the stage cannot start on: the input column named here is null (typically
/// because an upstream stage failed). The framework emits the stage's
/// [`LlmStage::skipped`] rows carrying the upstream error (or saying which column is null),
/// and makes no request.
#[derive(Debug, Clone, Copy)]
pub struct Missing(pub &'static str);

/// The model as a stage sees it: requests go through the stage's endpoint (its budget,
/// scheduler, retries) and the run's journal, and come back with their lineage.
#[derive(Debug, Clone, Copy)]
pub struct Llm<'a> {
    env: &'a StageEnv,
    stage: &'static str,
}

impl<'a> Llm<'a> {
    pub fn new(env: &'a StageEnv, stage: &'static str) -> Self {
        Llm { env, stage }
    }

    /// Send `request` (or serve it from the journal); the answer's text and thinking.
    pub async fn call(&self, request: &ChatRequest) -> Reply {
        let (result, lineage) = llm_call::complete(self.env, request).await;
        let reasoning = result.as_ref().ok().and_then(|c| c.reasoning.clone());
        Reply {
            result: result.map(|c| c.text),
            reasoning,
            lineage,
            stage: self.stage,
        }
    }

    /// Send `request` (or serve it from the journal); the whole completion (log-probs,
    /// finish reason, token counts).
    pub async fn complete(
        &self,
        request: &ChatRequest,
    ) -> (std::result::Result<Completion, String>, Option<Lineage>) {
        llm_call::complete(self.env, request).await
    }

    /// The stage's environment (endpoint, progress counters).
    pub fn env(&self) -> &StageEnv {
        self.env
    }
}

/// The answer to one request: its text or error, the model's thinking (reasoning models;
/// never part of the text) and the request's lineage.
#[derive(Debug)]
pub struct Reply {
    pub result: std::result::Result<String, String>,
    pub reasoning: Option<String>,
    pub lineage: Option<Lineage>,
    stage: &'static str,
}

impl Reply {
    /// The output row of this answer: `row` gets the text (`None` when the request failed,
    /// then the error, prefixed with the stage's name, is the row's error).
    pub fn emit<R>(self, row: impl FnOnce(Option<String>) -> R) -> Emit<R> {
        match self.result {
            Ok(text) => Emit::ok(row(Some(text)), self.lineage).with_reasoning(self.reasoning),
            Err(e) => Emit::failed(row(None), self.lineage, format!("{}: {e}", self.stage)),
        }
    }
}

/// A stage that calls an LLM. See the [module docs](self) for what the framework adds.
#[async_trait]
pub trait LlmStage: fmt::Debug + Send + Sync + Sized + 'static {
    /// The SQL function's name.
    const NAME: &'static str;
    /// The columns the stage adds (before `{stage}_lineage` and `error`).
    type Row: OutputRow;

    /// The stage of a call: its arguments (the input excluded) over an input of `input`.
    fn build(args: &StageArgs, input: &Schema) -> Result<Self>;
    /// The endpoint and sampling options.
    fn options(&self) -> &LlmOptions;
    /// The column of the model's answer (`response` by default): the framework adds
    /// `{output}_reasoning` after the stage's columns for the thinking of reasoning models.
    fn output(&self) -> &str {
        "response"
    }
    /// Input columns that must exist (checked when the plan is made).
    fn required_columns(&self) -> Vec<&'static str>;
    /// What one input row becomes: its output rows, or [`Missing`] when a needed input is
    /// null. Failed requests are rows with an error, never an `Err`.
    async fn process(
        &self,
        row: &InputRow,
        llm: &Llm<'_>,
    ) -> std::result::Result<Vec<Emit<Self::Row>>, Missing>;

    /// The rows emitted for an input `row` the stage cannot start on ([`Missing`]); one
    /// empty row by default.
    fn skipped(&self, _row: &InputRow) -> Vec<Self::Row> {
        vec![Self::Row::default()]
    }
    /// The output fields (when a stage names a column after an option, as `generate`).
    fn fields(&self) -> Vec<Field> {
        Self::Row::fields()
    }
    /// The lineage column's prefix: `{prefix}_lineage`.
    fn lineage_prefix(&self) -> &str {
        Self::NAME
    }
    /// How deep in a row's conversation the stage's requests are (deeper first).
    fn priority(&self) -> u32 {
        0
    }
    /// See [`RowStage::grouping`].
    fn grouping(&self) -> Option<Grouping> {
        None
    }
    /// See [`RowStage::carries`].
    fn carries(&self, _name: &str) -> bool {
        true
    }
    /// A group of rows (grouping stages); by default its first row.
    async fn process_group(
        &self,
        rows: Vec<InputRow>,
        llm: &Llm<'_>,
    ) -> std::result::Result<Vec<Emit<Self::Row>>, Missing> {
        match rows.first() {
            Some(row) => self.process(row, llm).await,
            None => Ok(vec![]),
        }
    }
}

/// An [`LlmStage`] as a [`RowStage`]: the framework's columns, skipping and counting.
#[derive(Debug)]
pub struct LlmRowStage<S>(pub S);

impl<S: LlmStage> LlmRowStage<S> {
    fn finish(
        &self,
        first: &InputRow,
        result: std::result::Result<Vec<Emit<S::Row>>, Missing>,
        env: &StageEnv,
    ) -> Vec<OutRow> {
        let emitted = match result {
            Ok(rows) => rows,
            Err(Missing(column)) => {
                let error = match first.str("error") {
                    Some(upstream) => upstream.to_string(),
                    None => format!("input column '{column}' is null"),
                };
                self.0
                    .skipped(first)
                    .into_iter()
                    .map(|row| Emit::failed(row, None, error.clone()))
                    .collect()
            }
        };
        emitted
            .into_iter()
            .map(|e| {
                if let Some(error) = &e.error {
                    env.progress.error(error);
                }
                let mut cells = e.row.cells();
                cells.push(Cell::Str(e.reasoning));
                cells.push(e.lineage.into());
                cells.push(Cell::Str(e.error));
                cells
            })
            .collect()
    }
}

#[async_trait]
impl<S: LlmStage> RowStage for LlmRowStage<S> {
    fn name(&self) -> &str {
        S::NAME
    }
    fn required_columns(&self) -> Vec<&'static str> {
        self.0.required_columns()
    }
    fn output_fields(&self) -> Vec<Field> {
        let mut fields = self.0.fields();
        fields.push(Field::new(
            format!("{}_reasoning", self.0.output()),
            DataType::Utf8,
            true,
        ));
        fields.push(lineage_field(self.0.lineage_prefix()));
        fields.push(Field::new("error", DataType::Utf8, true));
        fields
    }
    fn llm_options(&self) -> Option<&LlmOptions> {
        Some(self.0.options())
    }
    fn priority(&self) -> u32 {
        self.0.priority()
    }
    fn grouping(&self) -> Option<Grouping> {
        self.0.grouping()
    }
    fn carries(&self, name: &str) -> bool {
        self.0.carries(name)
    }
    async fn process(&self, row: InputRow, env: &StageEnv) -> Vec<OutRow> {
        let result = self.0.process(&row, &Llm::new(env, S::NAME)).await;
        self.finish(&row, result, env)
    }
    async fn process_group(&self, rows: Vec<InputRow>, env: &StageEnv) -> Vec<OutRow> {
        let Some(first) = rows.first().cloned() else {
            return vec![];
        };
        let result = self.0.process_group(rows, &Llm::new(env, S::NAME)).await;
        self.finish(&first, result, env)
    }
}

/// The factory of an [`LlmStage`]: builds it from a call and wraps it in the framework.
pub struct LlmFactory<S>(PhantomData<fn() -> S>);

impl<S> fmt::Debug for LlmFactory<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LlmFactory")
    }
}

impl<S: LlmStage> StageFactory for LlmFactory<S> {
    fn function_name(&self) -> &'static str {
        S::NAME
    }
    fn build(&self, args: &StageArgs, input: &Schema) -> Result<Arc<dyn RowStage>> {
        Ok(Arc::new(LlmRowStage(S::build(args, input)?)))
    }
}

/// The factory of the LLM stage `S`, for a registry of stages.
pub fn llm_stage<S: LlmStage>() -> Arc<dyn StageFactory> {
    Arc::new(LlmFactory::<S>(PhantomData))
}
