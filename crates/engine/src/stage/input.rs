//! Resolve a stage's input argument to a logical plan: a registered table or view (streams
//! through without materializing), a query, a Delta table (a folder or URL with
//! `_delta_log/`), or a Parquet/JSON/CSV path of stored intermediates (so a single stage can
//! be re-run on what an earlier run wrote).
//!
//! Delta tables are opened through the session's `DELTA` table factory (the one `CREATE
//! EXTERNAL TABLE … STORED AS DELTA` uses), which the run layer registers: the engine knows
//! what a Delta table looks like, not how Delta Lake is read.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, TableReference};
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::error::Result;
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{CreateExternalTable, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties, execute_stream,
};
use futures::{FutureExt, StreamExt};

pub fn session_state<'a>(session: &'a dyn Session, function: &str) -> Result<&'a SessionState> {
    session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| plan_datafusion_err!("{function}: needs a DataFusion SessionState"))
}

/// `plan` as one stream (its partitions merged when it has several), and the properties of
/// a node that reads it so and emits one stream of `schema` as it goes: for nodes whose
/// state spans the whole input (deduplication, generation).
pub fn one_stream(
    plan: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
) -> (Arc<dyn ExecutionPlan>, Arc<PlanProperties>) {
    let plan = if plan.output_partitioning().partition_count() > 1 {
        Arc::new(CoalescePartitionsExec::new(plan)) as Arc<dyn ExecutionPlan>
    } else {
        plan
    };
    let properties = Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(1),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ));
    (plan, properties)
}

/// `plan` with only the columns of `projection` (a table provider's `scan`), by name.
pub fn projected(
    plan: Arc<dyn ExecutionPlan>,
    projection: Option<&Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(p) = projection else {
        return Ok(plan);
    };
    let schema = plan.schema();
    let exprs = p
        .iter()
        .map(|i| {
            let name = schema.field(*i).name();
            Ok((
                datafusion::physical_expr::expressions::col(name, &schema)?,
                name.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(
        datafusion::physical_plan::projection::ProjectionExec::try_new(exprs, plan)?,
    ))
}

fn looks_like_query(s: &str) -> bool {
    let head = s.trim_start().to_ascii_lowercase();
    ["select ", "select\n", "with ", "values", "(", "table "]
        .iter()
        .any(|k| head.starts_with(k))
}

pub fn looks_like_path(s: &str) -> bool {
    s.contains('/')
        || s.contains("://")
        || [".parquet", ".jsonl", ".json", ".csv", ".gz"]
            .iter()
            .any(|e| s.ends_with(e))
}

/// Plan `input` as described in the module docs; `function` names the caller in errors.
pub fn resolve_input(state: &SessionState, input: &str, function: &str) -> Result<LogicalPlan> {
    let input = input.trim();
    if looks_like_query(input) {
        return state
            .create_logical_plan(input)
            .now_or_never()
            .ok_or_else(|| {
                plan_datafusion_err!("{function}: the input query needs an async catalog")
            })?;
    }
    let reference = TableReference::from(input);
    if let Ok(schema) = state.schema_for_ref(reference.clone()) {
        let found = schema
            .table(reference.table())
            .now_or_never()
            .ok_or_else(|| {
                plan_datafusion_err!("{function}: the catalog of '{input}' is asynchronous")
            })??;
        if let Some(table) = found {
            return LogicalPlanBuilder::scan(reference, provider_as_source(table), None)?.build();
        }
    }
    if let Some(table) = delta_table(state, input, function)? {
        return LogicalPlanBuilder::scan(
            TableReference::bare("input"),
            provider_as_source(table),
            None,
        )?
        .build();
    }
    if looks_like_path(input) {
        let table = listing_table(state, input, function)?;
        return LogicalPlanBuilder::scan(
            TableReference::bare("input"),
            provider_as_source(table),
            None,
        )?
        .build();
    }
    plan_err!("{function}: no table or view named '{input}' (and it is not a file path or a query)")
}

/// Run `work` to its end from a synchronous planning call (table functions are planned
/// synchronously): blocks the multi-threaded runtime's current worker.
fn block_on<T>(
    function: &str,
    what: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| plan_datafusion_err!("{function}: reading {what} needs a tokio runtime"))?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return plan_err!(
            "{function}: reading {what} needs a multi-threaded tokio runtime; register it as a table first"
        );
    }
    tokio::task::block_in_place(|| handle.block_on(work))
}

/// The name of the table factory that opens Delta tables.
pub const DELTA: &str = "DELTA";

/// Whether `path` is a Delta table: a local folder with a `_delta_log/` folder, or a URL
/// (`s3://bucket/table`) of an object store the session has, under which `_delta_log/`
/// holds entries.
fn is_delta(state: &SessionState, path: &str, function: &str) -> Result<bool> {
    if !path.contains("://") || path.starts_with("file://") {
        let local = path.strip_prefix("file://").unwrap_or(path);
        return Ok(std::path::Path::new(local).join("_delta_log").is_dir());
    }
    let Ok(url) = url::Url::parse(path) else {
        return Ok(false);
    };
    let Ok(store) = state
        .runtime_env()
        .object_store(ListingTableUrl::parse(path)?)
    else {
        return Ok(false);
    };
    let log =
        object_store::path::Path::from(format!("{}/_delta_log", url.path().trim_matches('/')));
    block_on(function, &format!("'{path}'"), async move {
        let mut entries = store.list(Some(&log));
        Ok(entries.next().await.transpose()?.is_some())
    })
}

/// The Delta table at `path` through the session's `DELTA` table factory, or None when
/// `path` is not a Delta table (or no factory is registered).
pub fn delta_table(
    state: &SessionState,
    path: &str,
    function: &str,
) -> Result<Option<Arc<dyn TableProvider>>> {
    let Some(factory) = state.table_factories().get(DELTA).cloned() else {
        return Ok(None);
    };
    if !looks_like_path(path) || !is_delta(state, path, function)? {
        return Ok(None);
    }
    let command = CreateExternalTable::builder(
        TableReference::bare("input"),
        path,
        DELTA,
        Arc::new(DFSchema::empty()),
    )
    .build();
    let table = block_on(function, &format!("Delta table '{path}'"), async {
        factory.create(state, &command).await
    })
    .map_err(|e| plan_datafusion_err!("{function}: cannot read Delta table '{path}': {e}"))?;
    Ok(Some(table))
}

/// The rows of a table provider as a physical plan made at planning time, for table
/// functions that read their input file themselves (`red_team_prompts`, `helpful_sft`,
/// `helpful_pairs`) when it is a Delta table.
#[derive(Debug)]
pub struct TableRows {
    plan: Arc<dyn ExecutionPlan>,
}

impl TableRows {
    pub fn plan(
        state: &SessionState,
        table: Arc<dyn TableProvider>,
        function: &str,
    ) -> Result<TableRows> {
        let scan = LogicalPlanBuilder::scan(
            TableReference::bare("input"),
            provider_as_source(table),
            None,
        )?
        .build()?;
        let plan = block_on(function, "a table", state.create_physical_plan(&scan))?;
        Ok(TableRows { plan })
    }

    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Every partition's rows, one stream.
    pub fn execute(&self, ctx: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        execute_stream(self.plan.clone(), ctx)
    }
}

/// A listing table over a file or folder. Schema inference is async and table functions
/// are planned synchronously, so this blocks the (multi-threaded) runtime's current worker.
fn listing_table(state: &SessionState, path: &str, function: &str) -> Result<Arc<ListingTable>> {
    let url = ListingTableUrl::parse(path)?;
    let extension = [".parquet", ".csv", ".jsonl", ".json"]
        .into_iter()
        .find(|e| path.trim_end_matches(".gz").ends_with(e));
    let options = match extension {
        Some(".csv") => ListingOptions::new(Arc::new(
            datafusion::datasource::file_format::csv::CsvFormat::default(),
        ))
        .with_file_extension(".csv"),
        Some(e @ (".jsonl" | ".json")) => ListingOptions::new(Arc::new(
            datafusion::datasource::file_format::json::JsonFormat::default(),
        ))
        .with_file_extension(e),
        _ => ListingOptions::new(Arc::new(
            datafusion::datasource::file_format::parquet::ParquetFormat::default(),
        ))
        .with_file_extension(".parquet"),
    };
    let infer = async {
        let config = ListingTableConfig::new(url.clone())
            .with_listing_options(options)
            .infer_partitions_from_path(state)
            .await?
            .infer_schema(state)
            .await?;
        ListingTable::try_new(config)
    };
    let table = block_on(function, &format!("'{path}'"), infer)
        .map_err(|e| plan_datafusion_err!("{function}: cannot read '{path}': {e}"))?;
    Ok(Arc::new(table))
}
