//! Materializing a table: one overwrite commit of a query's rows, written here or (on a
//! cluster) by the executors, the commit carrying caiflow's record of what produced it.

use std::fmt;
use std::sync::Arc;

use caiflow_llm::CancellationToken;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::exec_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::provider_as_source;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, TableType};
use datafusion::physical_expr::{Distribution, EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::prelude::DataFrame;
use deltalake_core::DeltaTable;
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::operations::write::SchemaMode;
use deltalake_core::protocol::SaveMode;
use futures::StreamExt;

use crate::config::TablesConfig;

use super::table::{
    COMMIT_KEY, delta_err, is_damage, is_table_file, open, unloaded, writer_properties,
};
use crate::error::{Result, RunError};
use crate::store::RunStore;

/// What a materialization writes: table `name` of `store`, partitioned by `partition_by`,
/// committed with caiflow's `record`, its files cut by `files`; cancelling `stop` before the
/// rows are all written commits nothing.
pub struct TableWrite<'a> {
    pub store: &'a RunStore,
    pub name: &'a str,
    pub partition_by: Vec<String>,
    pub record: serde_json::Value,
    pub files: &'a TablesConfig,
    pub stop: CancellationToken,
}

impl TableWrite<'_> {
    /// The table as it is now (to be overwritten), or a new one. A table whose log cannot be
    /// read (a commit cut short by another tool or a disk) is moved aside, whole, to
    /// `{name}.damaged-{unix time}/` (nothing is deleted) and written anew.
    async fn table(&self) -> Result<DeltaTable> {
        match open(self.store, self.name, None).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => unloaded(self.store, self.name),
            Err(e) if !is_damage(&e) => Err(e),
            Err(e) => {
                let aside = format!(
                    "{}.damaged-{}",
                    self.name,
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                );
                tracing::warn!(
                    "table {} of {} cannot be read ({e}): moved to {aside}/ and written anew",
                    self.name,
                    self.store.display
                );
                for (path, _) in self.store.list(&format!("{}/", self.name)).await? {
                    let Some(rest) = path.strip_prefix(&format!("{}/", self.name)) else {
                        continue;
                    };
                    self.store.rename(&path, &format!("{aside}/{rest}")).await?;
                }
                unloaded(self.store, self.name)
            }
        }
    }
}

/// Overwrite the table with the rows of `df` as one commit carrying the write's record (the
/// manifest). If the run is stopped before the rows are all written, the write fails and
/// nothing is committed. Returns the new version.
pub async fn write(w: TableWrite<'_>, df: DataFrame) -> Result<u64> {
    let table = w.table().await?;
    let TableWrite {
        store: w_store,
        name,
        partition_by,
        record,
        files,
        stop,
    } = w;
    // One stream: delta-rs writes a file per stream and split, rolling over at the target
    // file size, so a table is a few large files instead of one small file per partition
    // of the query (StopGateExec asks for a single partition).
    let df = signed_integers(df)?;
    let (mut state, plan) = df.into_parts();
    // One partition throughout the write's query: with more, delta-rs hash-repartitions a
    // partitioned table by its split, and that channel to the busy `train` writer is
    // unbounded while `test`'s is empty (a 1 M-row `sft` held 450 MiB there); scans read one
    // row group at a time. LLM stages keep their concurrency (it is per partition: the
    // endpoint's whole budget).
    state.config_mut().options_mut().execution.target_partitions = 1;
    // delta-rs plans its write through its own logical nodes: keep the session (its config
    // carries the stages' endpoints, journal and progress) and add delta-rs's planner.
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
        .with_query_planner(deltalake_core::delta_datafusion::planner::DeltaPlanner::new())
        .build();
    let gate = Arc::new(StopGate {
        inner: Arc::new(datafusion::datasource::ViewTable::new(plan, None)),
        stop,
    });
    let input = LogicalPlanBuilder::scan(name, provider_as_source(gate), None)?.build()?;
    let written = table
        .write(std::iter::empty())
        .with_input_plan(input)
        .with_session_state(Arc::new(state))
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_partition_columns(partition_by)
        .with_target_file_size(std::num::NonZeroU64::new(files.target_file_mib << 20))
        .with_writer_properties(writer_properties(files))
        .with_commit_properties(
            CommitProperties::default().with_metadata([(COMMIT_KEY.to_string(), record)]),
        )
        .await
        .map_err(|e| delta_err(format!("writing table {name}"), e))?;
    sync_table(w_store, name).await?;
    written
        .version()
        .ok_or_else(|| RunError::Store(format!("table {name}: the write made no version")))
}

/// Make a local table's files durable after a commit (its data files, its log, their
/// folders): a committed table survives a power loss, not only a killed process. Clean files
/// cost a syscall each. Object stores are durable when a PUT returns.
pub(super) async fn sync_table(store: &RunStore, name: &str) -> Result<()> {
    let Some(folder) = store.local_path(name) else {
        return Ok(());
    };
    let files = tokio::task::spawn_blocking(move || {
        let mut files = vec![];
        let mut folders = vec![folder];
        while let Some(dir) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                match entry.file_type() {
                    Ok(t) if t.is_dir() => folders.push(entry.path()),
                    Ok(t) if t.is_file() => files.push(entry.path()),
                    _ => {}
                }
            }
        }
        files
    })
    .await
    .map_err(|e| RunError::Store(format!("listing table {name}: {e}")))?;
    crate::store::sync_paths(files).await
}

/// Overwrite table `name` with the rows of `df` computed on a cluster: the executors write
/// the data files where the rows are made ([`super::files_write`]), and this process
/// commits them as the table's new version in one commit carrying `record` (replacing the
/// schema when it changed). If `stop` is cancelled before the files are all written,
/// nothing is committed. Returns the new version.
pub async fn write_on_cluster(w: TableWrite<'_>, df: DataFrame) -> Result<u64> {
    use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
    let table = w.table().await?;
    let TableWrite {
        store,
        name,
        partition_by,
        record,
        files,
        stop,
    } = w;
    let df = signed_integers(df)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let (state, plan) = df.into_parts();
    let write = super::files_write::FileWrite {
        location: store.table_url(name)?.to_string(),
        partition_by: partition_by.clone(),
        files: files.clone(),
    };
    let provider = Arc::new(super::files_write::WriteFilesTable { input: plan, write });
    let scan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?.build()?;
    let written = DataFrame::new(state, scan).collect().await?;
    if stop.is_cancelled() {
        return Err(RunError::Interrupted);
    }
    let mut adds = vec![];
    for batch in &written {
        let column = batch.column(0).as_string::<i32>();
        for json in column.iter().flatten() {
            let add: deltalake_core::kernel::Add =
                serde_json::from_str(json).map_err(|e| RunError::Json {
                    what: format!("a data file written for table {name}"),
                    cause: e,
                })?;
            if !is_table_file(&add.path) {
                return Err(RunError::Store(format!(
                    "table {name}: an executor returned the data file {:?}, which is not inside the table: nothing was committed",
                    add.path.chars().take(200).collect::<String>()
                )));
            }
            adds.push(deltalake_core::kernel::Action::Add(add));
        }
    }
    let delta_schema: deltalake_core::kernel::StructType = schema
        .try_into_kernel()
        .map_err(|e| RunError::Store(format!("table {name}: its schema in Delta: {e}")))?;
    let committed = table
        .create()
        .with_columns(delta_schema.fields().cloned())
        .with_partition_columns(partition_by)
        .with_save_mode(SaveMode::Overwrite)
        .with_actions(adds)
        .with_commit_properties(
            CommitProperties::default().with_metadata([(COMMIT_KEY.to_string(), record)]),
        )
        .await
        .map_err(|e| delta_err(format!("committing table {name}"), e))?;
    sync_table(store, name).await?;
    committed
        .version()
        .ok_or_else(|| RunError::Store(format!("table {name}: the commit made no version")))
}

/// Delta has no unsigned integers (readers such as Spark and Polars take `integer` as Int32
/// and refuse a UInt32 file), so unsigned columns, also inside structs and lists, are
/// stored as the signed type that holds every value (u8/u16 → i16/i32, u32 → i64, u64 → i64).
pub(super) fn signed_integers(df: DataFrame) -> Result<DataFrame> {
    use datafusion::prelude::{Expr, cast};
    let fields = df.schema().fields().clone();
    if !fields.iter().any(|f| signed(f.data_type()).is_some()) {
        return Ok(df);
    }
    let exprs: Vec<Expr> = fields
        .iter()
        .map(|f| {
            let column = Expr::Column(datafusion::common::Column::from_name(f.name()));
            match signed(f.data_type()) {
                Some(t) => cast(column, t).alias(f.name()),
                None => column,
            }
        })
        .collect();
    Ok(df.select(exprs)?)
}

/// `t` with every unsigned integer made signed, or None when `t` has none.
fn signed(
    t: &datafusion::arrow::datatypes::DataType,
) -> Option<datafusion::arrow::datatypes::DataType> {
    use datafusion::arrow::datatypes::{DataType, Field};
    let field = |f: &Field| signed(f.data_type()).map(|t| f.clone().with_data_type(t));
    match t {
        DataType::UInt8 => Some(DataType::Int16),
        DataType::UInt16 => Some(DataType::Int32),
        DataType::UInt32 | DataType::UInt64 => Some(DataType::Int64),
        DataType::Struct(fields) => {
            if !fields.iter().any(|f| signed(f.data_type()).is_some()) {
                return None;
            }
            let fields: Vec<Field> = fields
                .iter()
                .map(|f| field(f).unwrap_or_else(|| f.as_ref().clone()))
                .collect();
            Some(DataType::Struct(fields.into()))
        }
        DataType::List(item) => field(item).map(|f| DataType::List(Arc::new(f))),
        DataType::LargeList(item) => field(item).map(|f| DataType::LargeList(Arc::new(f))),
        _ => None,
    }
}

/// A table whose scan fails at its end when the run is stopping: the write it feeds then
/// fails before its commit, so an interrupted materialization commits nothing.
#[derive(Debug)]
struct StopGate {
    inner: Arc<dyn TableProvider>,
    stop: CancellationToken,
}

#[async_trait::async_trait]
impl TableProvider for StopGate {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let inner = self.inner.scan(state, projection, filters, limit).await?;
        Ok(Arc::new(StopGateExec::new(inner, self.stop.clone())))
    }
}

/// The write's input: one partition (the optimizer merges the query's partitions below
/// it), failing at its end when the run was stopped so nothing is committed.
#[derive(Debug)]
struct StopGateExec {
    inner: Arc<dyn ExecutionPlan>,
    stop: CancellationToken,
    properties: Arc<PlanProperties>,
}

impl StopGateExec {
    fn new(inner: Arc<dyn ExecutionPlan>, stop: CancellationToken) -> Self {
        let inner: Arc<dyn ExecutionPlan> = if inner.output_partitioning().partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(inner))
        } else {
            inner
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(inner.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        StopGateExec {
            inner,
            stop,
            properties,
        }
    }
}

impl DisplayAs for StopGateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StopGateExec")
    }
}

impl ExecutionPlan for StopGateExec {
    fn name(&self) -> &str {
        "StopGateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.inner]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(inner) if children.is_empty() => {
                Ok(Arc::new(StopGateExec::new(inner, self.stop.clone())))
            }
            _ => exec_err!("StopGateExec takes one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.inner.schema();
        let stop = self.stop.clone();
        let rows = self.inner.execute(partition, context)?;
        let end = futures::stream::once(async move {
            if stop.is_cancelled() {
                exec_err!("interrupted: the table was not committed")
            } else {
                Ok(None)
            }
        });
        let stream = rows
            .map(|b| b.map(Some))
            .chain(end)
            .filter_map(|b| async move { b.transpose() });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
