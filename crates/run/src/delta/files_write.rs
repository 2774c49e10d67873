//! Writing a table's data files where its rows are computed, for one commit elsewhere.
//!
//! On a cluster the rows of a materialized table come out of many tasks on many executors.
//! Instead of streaming them all back to the client, each task writes its rows as Parquet
//! data files into the table's folder (delta-rs's `DeltaWriter`: files rolled at the target
//! size, split into `split=…/` folders, statistics for every file) and returns only what the
//! commit needs: one `add` action per file, as JSON. The client then commits the table's
//! new version once, with every file ([`super::write`]). Files of a write that
//! is never committed (a failed or interrupted run) are not part of any version; `caiflow
//! vacuum` deletes them.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, internal_err};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use deltalake_core::datafile::writer::{DeltaWriter, WriterConfig};
use futures::StreamExt;
use object_store::prefix::PrefixStore;
use serde::{Deserialize, Serialize};

use crate::config::TablesConfig;

/// Where and how a table's files are written (plain data: it travels with the plan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileWrite {
    /// The table's folder (`file:///…/RUN/NAME/`, `s3://bucket/…/NAME/`).
    pub location: String,
    pub partition_by: Vec<String>,
    pub files: TablesConfig,
}

/// The output of a write: one row per data file written, its `add` action as JSON.
pub fn adds_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("add", DataType::Utf8, false)]))
}

/// A query whose rows are written as the files of a table: scanning it writes them and
/// yields their `add` actions.
#[derive(Debug)]
pub struct WriteFilesTable {
    pub input: LogicalPlan,
    pub write: FileWrite,
}

#[async_trait]
impl TableProvider for WriteFilesTable {
    fn schema(&self) -> SchemaRef {
        adds_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = state.create_physical_plan(&self.input).await?;
        Ok(Arc::new(WriteFilesExec::new(input, self.write.clone())))
    }
}

/// Writes each partition of its input as data files; yields one `add` action per file.
#[derive(Debug)]
pub struct WriteFilesExec {
    input: Arc<dyn ExecutionPlan>,
    write: FileWrite,
    properties: Arc<PlanProperties>,
}

impl WriteFilesExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, write: FileWrite) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(adds_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        WriteFilesExec {
            input,
            write,
            properties,
        }
    }

    pub fn write(&self) -> &FileWrite {
        &self.write
    }
}

impl DisplayAs for WriteFilesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WriteFilesExec: {}", self.write.location)
    }
}

impl ExecutionPlan for WriteFilesExec {
    fn name(&self) -> &str {
        "WriteFilesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
            (Some(input), true) => Ok(Arc::new(WriteFilesExec::new(input, self.write.clone()))),
            _ => internal_err!("WriteFilesExec has one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let rows = self.input.execute(partition, context.clone())?;
        let write = self.write.clone();
        let schema = self.input.schema();
        let out = futures::stream::once(async move {
            let adds = write_partition(rows, schema, &write, &context).await?;
            let mut column = StringBuilder::new();
            for add in adds {
                column.append_value(add);
            }
            Ok(RecordBatch::try_new(
                adds_schema(),
                vec![Arc::new(column.finish())],
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(adds_schema(), out)))
    }
}

/// Write `rows` as data files of the table at `write.location`; the files' `add` actions
/// as JSON.
async fn write_partition(
    mut rows: SendableRecordBatchStream,
    schema: SchemaRef,
    write: &FileWrite,
    context: &TaskContext,
) -> Result<Vec<String>> {
    let url = ListingTableUrl::parse(&write.location)?;
    let root = context.runtime_env().object_store(&url)?;
    let store = Arc::new(PrefixStore::new(root, url.prefix().clone()));
    let config = WriterConfig::new(
        schema,
        write.partition_by.clone(),
        Some(super::table::writer_properties(&write.files)),
        std::num::NonZeroU64::new(write.files.target_file_mib << 20),
        None,
        Default::default(),
        None,
    );
    let mut writer = DeltaWriter::new(store, config);
    while let Some(batch) = rows.next().await {
        let batch = batch?;
        if let Err(e) = writer.write(&batch).await {
            let _ = writer.abort().await;
            return Err(DataFusionError::External(Box::new(e)));
        }
    }
    let adds = writer
        .close()
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    adds.iter()
        .map(|a| {
            serde_json::to_string(a)
                .map_err(|e| exec_datafusion_err!("encoding a file's add action: {e}"))
        })
        .collect()
}
