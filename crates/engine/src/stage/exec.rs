//! [`StageExec`], the physical node that streams its input through a [`RowStage`].
//!
//! Rows flow one at a time: each input row is processed in its own task as soon as the
//! input yields it (up to a window of rows in flight), and finished rows leave in small
//! batches as soon as they are ready (`ready_chunks`), so a downstream stage starts on a
//! row while this stage still works on others: no barrier between stages, and memory is
//! bounded by the window, not the table.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::exec_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion_common_runtime::SpawnedTask;
use futures::{StreamExt, TryStreamExt};

use super::cells::{ColumnBuilder, OutRow};
use super::contract::{RowStage, StageCall, StageFactory, output_schema, unit_key};
use super::env::{StageEnv, budget_message, task_env};
use super::group::group_rows;
use super::row::{InputBatch, InputRow};
use crate::progress::StageProgress;
use datafusion::physical_plan::{Distribution, Partitioning};

/// Whether `plan` runs a stage (its input is then not cheap to read twice).
pub(super) fn has_stage(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<StageExec>().is_some() || plan.children().into_iter().any(has_stage)
}

/// The output partitioning of a stage over an input partitioned as `input`: a hash on
/// carried columns stays a hash (on their new positions), anything else is as many
/// partitions of unknown layout.
fn output_partitioning(
    input: &Partitioning,
    output: &Schema,
    input_schema: &Schema,
) -> Partitioning {
    let n = input.partition_count();
    if let Partitioning::Hash(exprs, _) = input {
        let mapped: Option<Vec<Arc<dyn PhysicalExpr>>> = exprs
            .iter()
            .map(|e| {
                let c = e.downcast_ref::<datafusion::physical_expr::expressions::Column>()?;
                let name = input_schema.fields().get(c.index())?.name();
                let index = output.index_of(name).ok()?;
                Some(
                    Arc::new(datafusion::physical_expr::expressions::Column::new(
                        name, index,
                    )) as Arc<dyn PhysicalExpr>,
                )
            })
            .collect();
        if let Some(mapped) = mapped {
            return Partitioning::Hash(mapped, n);
        }
    }
    Partitioning::UnknownPartitioning(n)
}

/// What a [`StageExec`] is made of besides its input, as plain data: what a physical plan
/// shipped to an executor carries ([`StageExec::parts`], [`StageExec::from_parts`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageExecParts {
    pub call: StageCall,
    pub projection: Option<Vec<usize>>,
    /// Ask for the input spread over the session's target partitions by a hash of the unit
    /// key ([`StageOptions::spread`]): the planner then inserts the exchange (a shuffle on
    /// a cluster) where the input is not spread yet, and nowhere in a chain of stages.
    #[serde(default)]
    pub spread: bool,
}

/// The physical node: streams its input through the stage.
#[derive(Debug)]
pub struct StageExec {
    parts: StageExecParts,
    stage: Arc<dyn RowStage>,
    input: Arc<dyn ExecutionPlan>,
    full_schema: SchemaRef,
    kept: Vec<usize>,
    properties: Arc<PlanProperties>,
}

impl StageExec {
    /// The node's parts, as plain data (see [`StageExecParts`]).
    pub fn parts(&self) -> &StageExecParts {
        &self.parts
    }

    /// Rebuild a node from its parts over `input`: the stage is made again from its call.
    pub fn from_parts(
        parts: StageExecParts,
        factory: &dyn StageFactory,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Self> {
        let stage = parts.call.build(factory, &input.schema())?;
        let (schema, kept) = output_schema(stage.as_ref(), &input.schema())?;
        Self::try_new(parts, stage, input, schema, kept)
    }

    pub(super) fn try_new(
        parts: StageExecParts,
        stage: Arc<dyn RowStage>,
        input: Arc<dyn ExecutionPlan>,
        full_schema: SchemaRef,
        kept: Vec<usize>,
    ) -> Result<Self> {
        let schema = match &parts.projection {
            Some(p) => Arc::new(full_schema.project(p)?),
            None => full_schema.clone(),
        };
        let partitioning =
            output_partitioning(input.output_partitioning(), &schema, &input.schema());
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(StageExec {
            parts,
            stage,
            input,
            full_schema,
            kept,
            properties,
        })
    }
}

/// The stage's environment for a task: its endpoint and journal from the session (one
/// process) or from the executor's [`Resources`] (a cluster).
async fn stage_env(stage: &dyn RowStage, context: &TaskContext) -> Result<StageEnv> {
    let mut env = task_env(stage.name(), stage.endpoint(), context).await?;
    env.priority = stage.priority();
    env.retry_truncated = stage.retry_truncated();
    Ok(env)
}

impl DisplayAs for StageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StageExec: {}", self.stage.name())?;
        if let Some(e) = self.stage.endpoint() {
            write!(f, " endpoint={e}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StageExec {
    fn name(&self) -> &str {
        "StageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// A group's rows must meet in one partition; a spread stage wants its units hashed
    /// over the partitions.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        let schema = self.input.schema();
        let key = match (self.stage.grouping(), self.parts.spread) {
            (Some(g), _) => Some(g.key.to_string()),
            (None, true) => unit_key(self.stage.as_ref(), &schema),
            (None, false) => None,
        };
        match key.map(|k| datafusion::physical_expr::expressions::col(&k, &schema)) {
            Some(Ok(key)) => vec![Distribution::KeyPartitioned(vec![key])],
            Some(Err(_)) => vec![Distribution::SinglePartition],
            None => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "StageExec has exactly one child".into(),
            ));
        }
        Ok(Arc::new(StageExec::try_new(
            self.parts.clone(),
            self.stage.clone(),
            children.swap_remove(0),
            self.full_schema.clone(),
            self.kept.clone(),
        )?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch_size = context.session_config().batch_size();
        let input = self.input.execute(partition, context.clone())?;
        let stage = self.stage.clone();
        let assembler = Arc::new(Assembler {
            full_schema: self.full_schema.clone(),
            kept: self.kept.clone(),
            projection: self.parts.projection.clone(),
        });
        // The environment is found (on an executor: the run's endpoints and journal) and the
        // endpoint checked (is it there at all? fails fast, naming the URL) before the first
        // row is read.
        let stream = futures::stream::once(async move {
            let env = Arc::new(stage_env(stage.as_ref(), &context).await?);
            if let Some(e) = &env.endpoint {
                e.preflight()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
            }
            Ok::<_, DataFusionError>(stream_rows(stage, env, input, assembler, batch_size))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

/// The stage's output: every input row (or group) processed in a task of its own, up to a
/// window of them at once, finished rows assembled into batches as they come.
fn stream_rows(
    stage: Arc<dyn RowStage>,
    env: Arc<StageEnv>,
    input: SendableRecordBatchStream,
    assembler: Arc<Assembler>,
    batch_size: usize,
) -> impl futures::Stream<Item = Result<RecordBatch>> + Send {
    let endpoint = env.endpoint.clone();
    let refused = env.budget_refused.clone();
    let env_end = env.clone();
    // Enough rows in flight to keep the endpoint's whole budget busy from this partition,
    // plus headroom so a finished slot is refilled at once.
    let window = endpoint
        .as_ref()
        .map(|e| e.max_concurrency() * 2)
        .unwrap_or(64)
        .max(2);
    StageProgress::add(&env.progress.inputs_begun, 1);
    let progress = env.progress.clone();
    let rows = input
        .map_ok(|batch| futures::stream::iter(InputBatch::new(batch).rows().map(Ok)))
        .try_flatten()
        // The input's end: the rows the stage will get are all started.
        .chain(
            futures::stream::once(async move {
                StageProgress::add(&progress.inputs_ended, 1);
            })
            .filter_map(|()| futures::future::ready(None)),
        );
    // The unit of work: one row, or one group of rows for grouping stages.
    let units: futures::stream::BoxStream<'static, Result<Vec<InputRow>>> = match stage.grouping() {
        Some(grouping) => Box::pin(group_rows(Box::pin(rows), grouping)),
        None => Box::pin(rows.map_ok(|row| vec![row])),
    };
    let results = units
        .map(move |unit: Result<Vec<InputRow>>| {
            let stage = stage.clone();
            let env = env.clone();
            async move {
                let unit = unit?;
                let Some(first) = unit.first().cloned() else {
                    return Ok((None, vec![]));
                };
                StageProgress::add(&env.progress.rows_started, 1);
                // A task per unit: its requests progress even while the consumer of this
                // stream is busy elsewhere. The task is aborted if the query is dropped.
                let task = SpawnedTask::spawn(async move {
                    let out = if unit.len() == 1 && stage.grouping().is_none() {
                        stage.process(first.clone(), &env).await
                    } else {
                        stage.process_group(unit, &env).await
                    };
                    StageProgress::add(&env.progress.rows_done, 1);
                    (Some(first), out)
                });
                task.join()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))
            }
        })
        .buffer_unordered(window);
    results
        .ready_chunks(batch_size)
        .map(move |chunk| {
            // An endpoint that gave up (refused key, error rate) fails the query.
            if let Some(why) = endpoint.as_ref().and_then(|e| e.aborted()) {
                return exec_err!("{why}");
            }
            // A budget refused a request: once the requests in flight are answered (and
            // journalled), the query fails, so nothing half done is committed.
            if let Some(e) = endpoint.as_ref()
                && refused.load(std::sync::atomic::Ordering::Relaxed)
                && !e.budget_in_flight()
            {
                return exec_err!("{}", budget_message(e));
            }
            assembler.assemble(chunk.into_iter().collect::<Result<Vec<_>>>()?)
        })
        .try_filter(|b| futures::future::ready(b.num_rows() > 0))
        // The end: a stream that had a request refused fails even if no chunk came after.
        .chain(
            futures::stream::once(async move {
                env_end.budget_stopped().await.map(|why| exec_err!("{why}"))
            })
            .filter_map(futures::future::ready),
        )
}

/// Builds an output batch from finished rows that may come from several input batches.
struct Assembler {
    full_schema: SchemaRef,
    kept: Vec<usize>,
    projection: Option<Vec<usize>>,
}

impl Assembler {
    fn assemble(&self, rows: Vec<(Option<InputRow>, Vec<OutRow>)>) -> Result<RecordBatch> {
        let mut batches: Vec<Arc<InputBatch>> = vec![];
        let mut take: Vec<(usize, usize)> = vec![];
        let added = &self.full_schema.fields()[self.kept.len()..];
        let mut builders = added
            .iter()
            .map(|f| ColumnBuilder::new(f.name(), f.data_type()))
            .collect::<Result<Vec<_>>>()?;
        for (row, outputs) in rows {
            let Some(row) = row else { continue };
            let slot = match batches.iter().position(|b| Arc::ptr_eq(b, &row.batch)) {
                Some(i) => i,
                None => {
                    batches.push(row.batch.clone());
                    batches.len() - 1
                }
            };
            for out in outputs {
                if out.len() != added.len() {
                    return Err(DataFusionError::Internal(format!(
                        "stage produced {} values, schema has {} added columns",
                        out.len(),
                        added.len()
                    )));
                }
                take.push((slot, row.index));
                for (builder, cell) in builders.iter_mut().zip(out) {
                    builder.append(cell)?;
                }
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.full_schema.fields().len());
        for &c in &self.kept {
            let arrays: Vec<&dyn datafusion::arrow::array::Array> = batches
                .iter()
                .map(|b| b.batch().column(c).as_ref())
                .collect();
            columns.push(interleave(&arrays, &take)?);
        }
        columns.extend(builders.into_iter().map(ColumnBuilder::finish));
        let options = RecordBatchOptions::new().with_row_count(Some(take.len()));
        let batch = RecordBatch::try_new_with_options(self.full_schema.clone(), columns, &options)?;
        match &self.projection {
            Some(p) => Ok(batch.project(p)?),
            None => Ok(batch),
        }
    }
}
