//! The stage contract: a [`RowStage`] says what one input row (or group of rows) becomes;
//! a [`StageFactory`] builds one from a call's arguments. What a stage author implements
//! (or, for an LLM stage, [`super::LlmStage`]), and the output schema it implies.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::common::plan_err;
use datafusion::error::Result;

use super::args::StageArgs;
use super::cells::OutRow;
use super::env::StageEnv;
use super::options::LlmOptions;
use super::row::InputRow;

/// One CAI stage, row by row. Implementations hold only plain options (serde data) and
/// endpoint names, never live clients.
#[async_trait]
pub trait RowStage: fmt::Debug + Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Input columns that must exist.
    fn required_columns(&self) -> Vec<&'static str>;
    /// Columns added; an input column of the same name is replaced.
    fn output_fields(&self) -> Vec<Field>;
    /// The stage's LLM options (endpoint, sampling, `retry_truncated`), if it calls an LLM.
    fn llm_options(&self) -> Option<&LlmOptions> {
        None
    }
    /// The endpoint this stage calls, if any.
    fn endpoint(&self) -> Option<&str> {
        self.llm_options().map(|o| o.endpoint.as_str())
    }
    /// `retry_truncated` of the stage's options: ask once more with this many tokens when
    /// an answer is cut off by `max_tokens`.
    fn retry_truncated(&self) -> Option<u32> {
        self.llm_options().and_then(|o| o.retry_truncated)
    }
    /// How deep in a row's conversation this stage's requests are: waiting requests of
    /// deeper stages are sent first, so rows finish before new rows start (depth-first).
    fn priority(&self) -> u32 {
        0
    }
    /// Process one input row into one or more output rows, one typed cell per output
    /// field. Row-level failures are data (an `error` cell), never an `Err`.
    async fn process(&self, row: InputRow, env: &StageEnv) -> Vec<OutRow>;
    /// Rows that must be seen together (a prompt's candidates, for a judge). `None`: one
    /// row at a time.
    fn grouping(&self) -> Option<Grouping> {
        None
    }
    /// Whether the input column `name` goes on to the output (unless the stage replaces
    /// it with one of its own); by default every column does. Grouping stages carry only
    /// columns that are the same for the whole group: the first row's values stand for it.
    fn carries(&self, _name: &str) -> bool {
        true
    }
    /// Process a group (grouping stages); the first row's carried columns go to the output.
    async fn process_group(&self, rows: Vec<InputRow>, env: &StageEnv) -> Vec<OutRow> {
        match rows.into_iter().next() {
            Some(row) => self.process(row, env).await,
            None => vec![],
        }
    }
}

/// How a grouping stage groups its input: by `key`; a group is complete when it holds as
/// many rows as its `size_column` says (then it is processed at once, while later groups
/// still stream in); groups still open when the input ends are processed then, and so is
/// the oldest open group whenever more than [`MAX_OPEN_GROUPS`] are open (a filter that
/// dropped some of a group's rows must not make memory grow with the input).
#[derive(Clone, Debug)]
pub struct Grouping {
    pub key: &'static str,
    pub size_column: Option<&'static str>,
}

/// Groups open at once before the oldest is processed as it is (see [`Grouping`]). Rows of
/// one group arrive close together (a `sample` emits a prompt's candidates together), so
/// only groups missing rows for good stay open this long.
pub const MAX_OPEN_GROUPS: usize = 4096;

/// Builds a [`RowStage`] from a call's arguments; one per SQL function.
pub trait StageFactory: fmt::Debug + Send + Sync + 'static {
    fn function_name(&self) -> &'static str;
    fn build(&self, args: &StageArgs, input_schema: &Schema) -> Result<Arc<dyn RowStage>>;
}

/// A stage call as written: the function and its argument texts (the input first). It is
/// what a plan shipped to another process carries of a stage, beside its input plan: the
/// receiver rebuilds the stage through the function's factory ([`StageCall::build`]), so
/// stages never need to be serializable and never travel as live objects.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageCall {
    pub function: String,
    pub args: Vec<String>,
}

impl StageCall {
    /// The stage this call makes through `factory` (the one its function names) over an
    /// input of `input_schema`.
    pub fn build(
        &self,
        factory: &dyn StageFactory,
        input_schema: &Schema,
    ) -> Result<Arc<dyn RowStage>> {
        let args = StageArgs::parse_texts(&self.function, self.args.iter().cloned())?;
        let stage = factory.build(&args, input_schema)?;
        args.finish(&[])?;
        Ok(stage)
    }
}

/// A stage's output schema over `input_schema`: the input columns it carries (their
/// indexes), then its own; checks that the columns it needs are there.
pub(super) fn output_schema(
    stage: &dyn RowStage,
    input_schema: &Schema,
) -> Result<(SchemaRef, Vec<usize>)> {
    for required in stage.required_columns() {
        if input_schema.index_of(required).is_err() {
            let have: Vec<&str> = input_schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return plan_err!(
                "{}: input has no column '{required}' (it has: {})",
                stage.name(),
                have.join(", ")
            );
        }
    }
    let added = stage.output_fields();
    let kept: Vec<usize> = (0..input_schema.fields().len())
        .filter(|i| {
            let name = input_schema.field(*i).name();
            !added.iter().any(|a| a.name() == name) && stage.carries(name)
        })
        .collect();
    let mut fields: Vec<FieldRef> = kept
        .iter()
        .map(|i| input_schema.fields()[*i].clone())
        .collect();
    fields.extend(added.into_iter().map(|f| Arc::new(f.with_nullable(true))));
    Ok((Arc::new(Schema::new(fields)), kept))
}

/// The column that keeps a stage's units together: its group key, else the prompt id, else
/// the first column it needs.
pub(super) fn unit_key(stage: &dyn RowStage, schema: &Schema) -> Option<String> {
    let key = match stage.grouping() {
        Some(g) => g.key,
        None if schema.index_of("prompt_id").is_ok() => "prompt_id",
        None => stage.required_columns().first().copied()?,
    };
    Some(key.to_string())
}
