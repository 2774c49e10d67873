//! Spreading a stage's input over partitions without an exchange.
//!
//! On a cluster every partition is a task that may run on another executor, so a stage's
//! rows must be spread over the partitions for every executor to get some. DataFusion's
//! hash repartition would do it, but on Ballista it is a shuffle: a stage of its own whose
//! output lives on one executor. Lose that executor and Ballista rolls back every task that
//! read it, while the tasks of the old attempt keep running and write the same shuffle files
//! as their re-runs (rows delivered twice). A stage's input is cheap next to its requests
//! (a file of prompts, a stored table), so instead each partition reads the whole input and
//! keeps the rows whose key hashes to it, with DataFusion's own hash function: the output is
//! hash-partitioned exactly as a repartition would make it, and losing an executor only
//! re-runs that executor's tasks.
//!
//! The input is held inside the node, not shown as a child: it is planned and optimized
//! already, and a planner that walks children must not take its single partition for the
//! stage's (Ballista packs a stage whose chain narrows to one partition into one task). The
//! node's one child is a small in-memory table with one row per partition, its partition
//! number: a scheduler that gives a task only some partitions of a stage (Ballista restricts
//! in-memory scans to a task's slice) thereby tells each partition which share it computes.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

/// `input`'s rows over `total` partitions by a hash of column `key`.
#[derive(Debug)]
pub struct SpreadExec {
    input: Arc<dyn ExecutionPlan>,
    key: String,
    total: usize,
    /// One partition per (kept) output partition, holding its global partition number.
    ids: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl SpreadExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, key: &str, total: usize) -> Result<Self> {
        let total = total.max(1);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "partition",
            DataType::UInt32,
            false,
        )]));
        let partitions = (0..total)
            .map(|p| {
                let ids = UInt32Array::from(vec![p as u32]);
                Ok(vec![RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(ids)],
                )?])
            })
            .collect::<Result<Vec<_>>>()?;
        let ids = MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
        Self::with_ids(input, key, total, ids)
    }

    /// A node over `ids`, the partition numbers it computes (a slice of `0..total`).
    pub fn with_ids(
        input: Arc<dyn ExecutionPlan>,
        key: &str,
        total: usize,
        ids: Arc<dyn ExecutionPlan>,
    ) -> Result<Self> {
        let schema: SchemaRef = input.schema();
        let column = datafusion::physical_expr::expressions::col(key, &schema)?;
        let partitioning =
            Partitioning::Hash(vec![column], ids.output_partitioning().partition_count());
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(SpreadExec {
            input,
            key: key.to_string(),
            total,
            ids,
            properties,
        })
    }

    /// The hash key and the total partition count.
    pub fn parts(&self) -> (&str, usize) {
        (&self.key, self.total)
    }

    /// The plan whose rows are spread.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for SpreadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let input = datafusion::physical_plan::displayable(self.input.as_ref()).one_line();
        write!(
            f,
            "SpreadExec: key={}, partitions={}, input=[{}]",
            self.key,
            self.total,
            input.to_string().trim()
        )
    }
}

impl ExecutionPlan for SpreadExec {
    fn name(&self) -> &str {
        "SpreadExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.ids]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
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
        match (children.pop(), children.is_empty()) {
            (Some(ids), true) => Ok(Arc::new(SpreadExec::with_ids(
                self.input.clone(),
                &self.key,
                self.total,
                ids,
            )?)),
            _ => internal_err!("SpreadExec has one child (its partition numbers)"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let ids = self.ids.execute(partition, context.clone())?;
        let (input, key, total) = (self.input.clone(), self.key.clone(), self.total);
        let stream = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = ids.try_collect().await?;
            let mine = batches
                .iter()
                .find(|b| b.num_rows() > 0)
                .and_then(|b| b.column(0).as_any().downcast_ref::<UInt32Array>())
                .filter(|a| !a.is_null(0))
                .map(|a| a.value(0) as usize)
                .ok_or_else(|| {
                    exec_datafusion_err!("SpreadExec: partition {partition} has no number")
                })?;
            spread_rows(input, key, total, mine, context)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

/// The rows of every partition of `input` whose `key` hashes to partition `mine` of `total`.
fn spread_rows(
    input: Arc<dyn ExecutionPlan>,
    key: String,
    total: usize,
    mine: usize,
    context: Arc<TaskContext>,
) -> Result<impl futures::Stream<Item = Result<RecordBatch>> + Send> {
    let column = datafusion::physical_expr::expressions::col(&key, &input.schema())?;
    let inputs = (0..input.output_partitioning().partition_count())
        .map(|p| input.execute(p, context.clone()))
        .collect::<Result<Vec<_>>>()?;
    let mut partitioner =
        BatchPartitioner::try_new(Partitioning::Hash(vec![column], total), Time::new(), 0, 1)?;
    let rows = futures::stream::select_all(inputs).map(move |batch| {
        let mut kept = vec![];
        for part in partitioner.partition_iter(batch?)? {
            let (p, b) = part?;
            if p == mine && b.num_rows() > 0 {
                kept.push(Ok(b));
            }
        }
        Ok::<_, DataFusionError>(futures::stream::iter(kept))
    });
    Ok(rows.try_flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn every_row_lands_in_exactly_one_partition() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let batches: Vec<RecordBatch> = (0..3)
            .map(|b| {
                let keys: Vec<String> = (0..50).map(|i| format!("key-{b}-{i}")).collect();
                RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(keys))])
                    .expect("batch")
            })
            .collect();
        let input = MemorySourceConfig::try_new_exec(&[batches], schema, None).expect("input");
        let spread = SpreadExec::try_new(input, "k", 4).expect("spread");
        let ctx = SessionContext::new().task_ctx();
        let mut seen = std::collections::BTreeMap::new();
        for p in 0..4 {
            let stream = spread.execute(p, ctx.clone()).expect("execute");
            let out: Vec<RecordBatch> = stream.try_collect().await.expect("rows");
            for b in out {
                let keys = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("utf8");
                for i in 0..keys.len() {
                    assert!(seen.insert(keys.value(i).to_string(), p).is_none(), "twice");
                }
            }
        }
        assert_eq!(seen.len(), 150);
        // A task given partitions [2, 3] only (its ids restricted to them) computes exactly
        // those partitions' rows.
        let ids = spread.children()[0].clone();
        let ids = ids
            .downcast_ref::<datafusion::datasource::source::DataSourceExec>()
            .and_then(|d| {
                let any: &dyn std::any::Any = d.data_source().as_ref();
                any.downcast_ref::<MemorySourceConfig>().cloned()
            })
            .expect("in-memory ids");
        let kept = vec![ids.partitions()[2].clone(), ids.partitions()[3].clone()];
        let restricted = MemorySourceConfig::try_new_exec(&kept, ids.original_schema(), None)
            .expect("restricted ids");
        let task = Arc::new(spread)
            .replace_children(
                vec![restricted],
                datafusion::physical_plan::execution_plan::ReplaceChildrenOptions::new(
                    datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Recompute,
                ),
            )
            .expect("task");
        assert_eq!(task.output_partitioning().partition_count(), 2);
        for (local, global) in [(0, 2), (1, 3)] {
            let out: Vec<RecordBatch> = task
                .execute(local, ctx.clone())
                .expect("execute")
                .try_collect()
                .await
                .expect("rows");
            for b in out {
                let keys = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("utf8");
                for i in 0..keys.len() {
                    assert_eq!(seen.get(keys.value(i)), Some(&global));
                }
            }
        }
        let used: std::collections::BTreeSet<usize> = seen.values().copied().collect();
        assert!(used.len() > 1, "rows spread over partitions: {used:?}");
    }
}
