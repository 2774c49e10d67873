//! Near-duplicate removal: `red_team_prompts(…, near_dedup => 0.8)` and
//! `near_dedup(input, column => 'prompt', threshold => 0.8)`.
//!
//! Red-team sets repeat the same request with small edits (case, a word added, punctuation),
//! and every copy costs a conversation of LLM calls. A text is dropped when its estimated
//! Jaccard similarity to an **earlier** kept text is at least the threshold. The estimate is
//! MinHash (128 hashes) over the text's character 3-shingles after normalization (lower
//! case, every run of non-alphanumeric characters one space); candidates are found with an
//! LSH band index sized for the threshold, both from the `gaoya` crate. Memory per kept text
//! is its 256-byte signature and band entries (~1.4 KiB measured), never the text. Deterministic: the hash
//! functions are seeded constants, so a re-run keeps exactly the same rows.
//!
//! Order matters (the first of a family is kept), so `near_dedup` reads its input as one
//! stream.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanBuilder, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_err, internal_err, plan_datafusion_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::StreamExt;

use crate::dedup::{NearDuplicates, check_threshold};
use crate::progress::{Progress, StageProgress};
use crate::stage::args::StageArgs;
use crate::stage::columns::TextColumn;
use crate::stage::input::{one_stream, projected, resolve_input, session_state};

/// `near_dedup(input, column => 'prompt', threshold => 0.8)`.
#[derive(Debug)]
pub struct NearDedupFunction;

const NAME: &str = "near_dedup";

impl TableFunctionImpl for NearDedupFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let a = StageArgs::parse(NAME, args.exprs())?;
        let state = session_state(args.session(), NAME)?;
        let input = resolve_input(state, a.input()?, NAME)?;
        let column = a.str_or("column", "prompt");
        let threshold = check_threshold(NAME, "threshold", a.parsed_or("threshold", 0.8f64)?)?;
        a.finish(&[])?;
        NearDedupTable::try_new(input, column, threshold).map(|t| Arc::new(t) as _)
    }
}

/// The provider a `near_dedup` call returns: its input plan and options.
#[derive(Debug)]
pub struct NearDedupTable {
    pub input: LogicalPlan,
    pub column: String,
    pub threshold: f64,
    schema: SchemaRef,
}

impl NearDedupTable {
    pub fn try_new(input: LogicalPlan, column: String, threshold: f64) -> Result<Self> {
        let schema = input.schema().inner().clone();
        if schema.index_of(&column).is_err() {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return plan_err!(
                "{NAME}: input has no column '{column}' (it has: {}); name it with column => '…'",
                have.join(", ")
            );
        }
        Ok(NearDedupTable {
            input,
            column,
            threshold,
            schema,
        })
    }
}

#[async_trait]
impl TableProvider for NearDedupTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = session_state(state, NAME)?;
        let input = state.create_physical_plan(&self.input).await?;
        let exec = NearDedupExec::try_new(input, &self.column, self.threshold)?;
        projected(Arc::new(exec), projection)
    }
}

/// Keeps the rows of its (single-partition) input whose `column` is not a near duplicate of
/// an earlier row's.
#[derive(Debug)]
pub struct NearDedupExec {
    input: Arc<dyn ExecutionPlan>,
    column: String,
    threshold: f64,
    properties: Arc<PlanProperties>,
}

impl NearDedupExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, column: &str, threshold: f64) -> Result<Self> {
        let schema = input.schema();
        schema
            .index_of(column)
            .map_err(|_| plan_datafusion_err!("{NAME}: input has no column '{column}'"))?;
        let (input, properties) = one_stream(input, schema);
        Ok(NearDedupExec {
            input,
            column: column.to_string(),
            threshold,
            properties,
        })
    }

    pub fn column(&self) -> &str {
        &self.column
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}

impl DisplayAs for NearDedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "NearDedupExec: column={} threshold={}",
            self.column, self.threshold
        )
    }
}

impl ExecutionPlan for NearDedupExec {
    fn name(&self) -> &str {
        "NearDedupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// The first of a family is kept: every row must pass through one index, in order.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("NearDedupExec has exactly one child");
        }
        Ok(Arc::new(NearDedupExec::try_new(
            children.swap_remove(0),
            &self.column,
            self.threshold,
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("NearDedupExec has one partition, asked for {partition}");
        }
        let progress = context
            .session_config()
            .get_extension::<Progress>()
            .unwrap_or_default()
            .stage(NAME);
        let column = self.input.schema().index_of(&self.column)?;
        let mut seen = NearDuplicates::new(self.threshold);
        let input = self.input.execute(0, context)?;
        let stream = input.map(move |batch| {
            let batch = batch?;
            let kept = keep_mask(&batch, column, &mut seen, &progress)?;
            Ok(filter_record_batch(&batch, &kept)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

/// Which rows of `batch` stay: null texts always do (nothing to compare).
fn keep_mask(
    batch: &RecordBatch,
    column: usize,
    seen: &mut NearDuplicates,
    progress: &StageProgress,
) -> Result<datafusion::arrow::array::BooleanArray> {
    let Some(texts) = TextColumn::of(batch.column(column).as_ref()) else {
        return exec_err!("{NAME}: column {column} has no text form");
    };
    let mut keep = BooleanBuilder::with_capacity(batch.num_rows());
    let mut dropped = 0;
    for i in 0..batch.num_rows() {
        let duplicate = texts.get(i).is_some_and(|t| seen.seen_or_insert(t));
        dropped += duplicate as u64;
        keep.append_value(!duplicate);
    }
    StageProgress::add(&progress.rows_done, batch.num_rows() as u64 - dropped);
    StageProgress::add(&progress.rows_dropped, dropped);
    Ok(keep.finish())
}
