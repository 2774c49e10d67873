//! A run's materialized tables as Delta Lake tables (`RUN/{table}/`: Parquet files plus
//! `_delta_log/`), through delta-rs on the run's own object store.
//!
//! Each materialization is one Delta commit, an overwrite: the commit is the atomic point of
//! visibility, so other engines (DuckDB, Polars, Spark, delta-rs) see either the previous
//! version or the new one, never a half-written table. What produced a version (the manifest:
//! statement, fingerprint, inputs, times, caiflow version) rides in that commit's
//! `commitInfo` under the key `caiflow`; older versions stay readable until vacuumed.

use std::fmt;
use std::sync::Arc;

use caiflow_llm::CancellationToken;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProviderFactory;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_err, plan_datafusion_err, plan_err};
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::error::Result as DfResult;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::CreateExternalTable;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, TableType};
use datafusion::physical_expr::{Distribution, EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::prelude::DataFrame;
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::logstore::{StorageConfig, default_logstore};
use deltalake_core::operations::write::SchemaMode;
use deltalake_core::protocol::SaveMode;
use deltalake_core::{DeltaTable, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use url::Url;

use caiflow_llm::config::TablesConfig;
use deltalake_core::parquet::basic::Compression;
use deltalake_core::parquet::file::properties::WriterProperties;

use crate::error::{Result, RunError};
use crate::store::RunStore;

/// The default target size of a table's data files (`[tables] target_file_mib`), for the
/// binary's bound on delta-rs's upload budget, set before any configuration is read.
pub const TARGET_FILE_BYTES: u64 = 128 << 20;

/// Parquet settings of a table's data files: delta-rs's own (Snappy; its name as the
/// writer), plus row groups bounded in bytes as well as rows. The parquet writer holds the
/// open row group in memory (encoded, plus a serialized copy while it is flushed), so it is
/// the row-group bound, not the file size, that bounds a write's memory.
pub(crate) fn writer_properties(files: &TablesConfig) -> WriterProperties {
    WriterProperties::builder()
        .set_created_by(format!("caiflow {} (delta-rs)", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(files.row_group_rows as usize))
        .set_max_row_group_bytes(Some((files.row_group_mib << 20) as usize))
        .build()
}

/// The key of caiflow's record in a commit's `commitInfo`.
pub const COMMIT_KEY: &str = "caiflow";

fn delta_err(what: String, e: DeltaTableError) -> RunError {
    RunError::Delta {
        what,
        cause: Box::new(e),
    }
}

/// Whether an error opening a table says the table is damaged (its log or files cannot be
/// made into a version), rather than that the store could not be reached this time (an I/O
/// or object store error other than a missing object): only damage is reported as such,
/// moved aside and recomputed; a passing outage stays an error.
pub fn is_damage(e: &RunError) -> bool {
    match e {
        RunError::Delta { cause, .. } => match cause.as_ref() {
            DeltaTableError::Io { .. } => false,
            DeltaTableError::ObjectStore { source } => {
                matches!(source, object_store::Error::NotFound { .. })
            }
            _ => true,
        },
        _ => false,
    }
}

/// The Delta table `name` of the run, not loaded, on the run's own object store.
fn unloaded(store: &RunStore, name: &str) -> Result<DeltaTable> {
    let url = store.table_url(name)?;
    unloaded_at(
        store.object_store(),
        &url,
        &format!("table {name} of {}", store.display),
    )
}

/// The Delta table at `url` of the object store `root` (whose "/" is the store's root), not
/// loaded: a log store built here (no scheme registry), which commits with a put-if-absent
/// of the next log entry, so two writers of one version cannot both win.
fn unloaded_at(root: Arc<dyn ObjectStore>, url: &Url, what: &str) -> Result<DeltaTable> {
    let config = StorageConfig::default();
    let prefixed = config
        .decorate_store(root.clone(), url)
        .map_err(|e| delta_err(what.to_string(), e))?;
    Ok(DeltaTable::new(default_logstore(
        Arc::new(prefixed),
        root,
        url,
        &config,
    )))
}

/// A Delta table's location as a URL: a local folder (which must exist) or an object-store
/// URL (`s3://bucket/table`).
fn location_url(location: &str) -> Result<Url> {
    if location.contains("://") && !location.starts_with("file://") {
        let folder = format!("{}/", location.trim_end_matches('/'));
        return Url::parse(&folder)
            .map_err(|e| RunError::Store(format!("Delta table '{location}': {e}")));
    }
    let local = location.strip_prefix("file://").unwrap_or(location);
    let path = std::fs::canonicalize(local).map_err(|e| RunError::io(local, e))?;
    Url::from_directory_path(&path)
        .map_err(|_| RunError::Store(format!("Delta table '{location}': not a folder")))
}

/// The Delta table at `location` (written by any tool: delta-rs, Spark, caiflow), at its
/// latest version or `version`, read through the object stores of `env` (an S3 bucket must
/// be registered there: see [`crate::store::register_s3_buckets`]).
pub async fn open_location(
    env: &RuntimeEnv,
    location: &str,
    version: Option<u64>,
) -> Result<DeltaTable> {
    let url = location_url(location)?;
    let root = env.object_store_registry.get_store(&url)?;
    let mut table = unloaded_at(root, &url, &format!("Delta table '{location}'"))?;
    let loaded = match version {
        Some(v) => table.load_version(v).await,
        None => table.load().await,
    };
    match loaded {
        Ok(()) => Ok(table),
        Err(DeltaTableError::NotATable(_)) => Err(RunError::Store(format!(
            "'{location}' is not a Delta table (no commits in its _delta_log/)"
        ))),
        Err(e) => Err(delta_err(format!("reading Delta table '{location}'"), e)),
    }
}

/// The fingerprint of the Delta table at `location` when it is one: its location and its
/// latest commit (the newest `_delta_log/NNN.json` and that entry's bytes), so a new version
/// of an input recomputes what reads it without hashing its data files. None when
/// `location` holds no Delta log (or its store is not registered in `env`).
pub async fn input_fingerprint(env: &RuntimeEnv, location: &str) -> Result<Option<String>> {
    use object_store::ObjectStoreExt;
    use sha2::{Digest, Sha256};
    let is_url = location.contains("://") && !location.starts_with("file://");
    let local = location.strip_prefix("file://").unwrap_or(location);
    if !is_url && !std::path::Path::new(local).join("_delta_log").is_dir() {
        return Ok(None);
    }
    let Ok(url) = location_url(location) else {
        return Ok(None);
    };
    let Ok(root) = env.object_store_registry.get_store(&url) else {
        return Ok(None);
    };
    let log = ObjectPath::from(format!("{}/_delta_log", url.path().trim_matches('/')));
    let what = |e: object_store::Error| RunError::StoreOp {
        what: format!("reading the Delta log of '{location}'"),
        cause: Box::new(e),
    };
    let entries: Vec<object_store::ObjectMeta> =
        root.list(Some(&log)).try_collect().await.map_err(what)?;
    let newest = entries
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            let version: u64 = name.strip_suffix(".json")?.parse().ok()?;
            Some((version, &m.location))
        })
        .max_by_key(|(v, _)| *v);
    let Some((version, path)) = newest else {
        return Ok(None);
    };
    let commit = root
        .get(path)
        .await
        .map_err(what)?
        .bytes()
        .await
        .map_err(what)?;
    let mut h = Sha256::new();
    h.update(url.as_str().as_bytes());
    h.update(version.to_le_bytes());
    h.update(&commit);
    Ok(Some(format!(
        "delta-v{version}-{}",
        hex::encode(&h.finalize()[..12])
    )))
}

/// The table `name` at its latest version (or `version`), or None when it has no commit yet.
pub async fn open(
    store: &RunStore,
    name: &str,
    version: Option<u64>,
) -> Result<Option<DeltaTable>> {
    if store.list(&format!("{name}/_delta_log")).await?.is_empty() {
        return Ok(None);
    }
    let mut table = unloaded(store, name)?;
    let loaded = match version {
        Some(v) => table.load_version(v).await,
        None => table.load().await,
    };
    match loaded {
        Ok(()) => Ok(Some(table)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(delta_err(
            format!("reading table {name} of {}", store.display),
            e,
        )),
    }
}

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
async fn sync_table(store: &RunStore, name: &str) -> Result<()> {
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
/// the data files where the rows are made ([`crate::write_files`]), and this process
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
    let write = crate::write_files::FileWrite {
        location: store.table_url(name)?.to_string(),
        partition_by: partition_by.clone(),
        files: files.clone(),
    };
    let provider = Arc::new(crate::write_files::WriteFilesTable { input: plan, write });
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

/// Whether an `add` action's path (relative to the table, URL-encoded) names a data file
/// inside the table folder: no scheme, no absolute path, no `..`, nothing in `_delta_log`.
pub fn is_table_file(path: &str) -> bool {
    let decoded = url::form_urlencoded::parse(format!("p={path}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    [path, decoded.as_str()].iter().all(|p| {
        !p.is_empty()
            && !p.contains("://")
            && !p.starts_with('/')
            && !p.starts_with('\\')
            && !p.contains('\0')
            && p.split(['/', '\\'])
                .all(|part| part != ".." && part != "_delta_log")
    })
}

/// Delta has no unsigned integers (readers such as Spark and Polars take `integer` as Int32
/// and refuse a UInt32 file), so unsigned columns, also inside structs and lists, are
/// stored as the signed type that holds every value (u8/u16 → i16/i32, u32 → i64, u64 → i64).
fn signed_integers(df: DataFrame) -> Result<DataFrame> {
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

/// One version of a table: its number, when it was committed, and caiflow's record of what
/// produced it (None for versions written by other tools).
#[derive(Clone, Debug)]
pub struct Version {
    pub version: u64,
    pub timestamp_ms: Option<i64>,
    pub operation: Option<String>,
    pub record: Option<serde_json::Value>,
}

/// Every version of `table`, newest first.
pub async fn history(table: &DeltaTable) -> Result<Vec<Version>> {
    let mut out = vec![];
    let latest = table.version().unwrap_or(0);
    let mut commits = table.history(None);
    let mut index = 0u64;
    while let Some(c) = commits.next().await {
        let c = c.map_err(|e| delta_err("reading a table's history".into(), e))?;
        out.push(Version {
            // Commits come newest first, one per version.
            version: latest.saturating_sub(index),
            timestamp_ms: c.timestamp,
            operation: c.operation.clone(),
            record: c.info.get(COMMIT_KEY).cloned(),
        });
        index += 1;
    }
    Ok(out)
}

/// A DataFusion table over `table` (the version it is loaded at).
pub async fn provider(table: &DeltaTable) -> Result<Arc<dyn TableProvider>> {
    let scan = table.table_provider().build().await?;
    Ok(Arc::new(scan))
}

/// Delete the files of table `name` that its newest `keep` versions (at least one) do not
/// use and that were removed from the table more than `retain` ago (Delta's retention
/// window) — older versions' data and leftovers of interrupted writes. Earlier versions stay
/// in the log, but their data is gone. The caller holds the run's lease, so no write of the
/// run is in progress. Returns how many files were deleted.
pub async fn vacuum(
    store: &RunStore,
    name: &str,
    keep: usize,
    retain: std::time::Duration,
) -> Result<usize> {
    let Some(table) = open(store, name, None).await? else {
        return Ok(0);
    };
    let kept: Vec<_> = history(&table)
        .await?
        .iter()
        .take(keep.max(1))
        .map(|v| v.version)
        .collect();
    let retention = chrono::Duration::from_std(retain).unwrap_or(chrono::Duration::MAX);
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_keep_versions(&kept)
        .with_mode(deltalake_core::operations::vacuum::VacuumMode::Full)
        .await
        .map_err(|e| delta_err(format!("vacuuming table {name}"), e))?;
    Ok(metrics.files_deleted.len())
}

/// Operations of other tools (and of `caiflow vacuum`) that leave a table's rows as they
/// were: a caiflow table stays caiflow's (and reused) after them.
pub const ROWS_KEPT: [&str; 8] = [
    "VACUUM START",
    "VACUUM END",
    "OPTIMIZE",
    "SET TBLPROPERTIES",
    "UPGRADE PROTOCOL",
    "ADD FEATURE",
    "CHECKPOINT",
    "ADD CONSTRAINT",
];

/// The newest version of `versions` (newest first) whose rows caiflow wrote, when only
/// commits that keep the rows ([`ROWS_KEPT`]) came after it.
pub fn caiflow_version(versions: &[Version]) -> Option<&Version> {
    for v in versions {
        if v.record.is_some() {
            return Some(v);
        }
        if !v
            .operation
            .as_deref()
            .is_some_and(|op| ROWS_KEPT.contains(&op))
        {
            return None;
        }
    }
    None
}

/// Let `CREATE EXTERNAL TABLE t STORED AS DELTA LOCATION '…' [OPTIONS ('version' 'N')]`, and
/// the stages and readers given a Delta table's path, read a Delta table (written by
/// caiflow, Spark, delta-rs, …) in `session`: a local folder, or an `s3://` table of a
/// bucket whose object store the session has.
pub fn register_delta_tables(session: &caiflow_engine::CaiSession) {
    register_delta_inputs(session, false);
}

/// Register the `DELTA` table factory; `files`: it opens tables as their file lists
/// ([`crate::files::FilesTable`]), for sessions whose plans are shipped to a cluster.
pub fn register_delta_inputs(session: &caiflow_engine::CaiSession, files: bool) {
    let state = session.ctx.state_ref();
    let mut state = state.write();
    state.table_factories_mut().insert(
        caiflow_engine::stage::input::DELTA.to_string(),
        Arc::new(DeltaInputs { files }),
    );
}

/// The `DELTA` table factory: opens a Delta table through the session's own object stores.
#[derive(Debug)]
pub struct DeltaInputs {
    /// Open tables as their file lists (plans shipped to a cluster).
    pub files: bool,
}

#[async_trait::async_trait]
impl TableProviderFactory for DeltaInputs {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let [location] = cmd.locations.as_slice() else {
            return plan_err!(
                "a Delta table has one location, got {}",
                cmd.locations.len()
            );
        };
        let mut version = None;
        for (key, value) in &cmd.options {
            // DataFusion files options under `format.`.
            match key.strip_prefix("format.").unwrap_or(key) {
                "version" => {
                    version = Some(value.parse::<u64>().map_err(|_| {
                        plan_datafusion_err!(
                            "Delta table '{location}': version '{value}' is not a version number"
                        )
                    })?)
                }
                other => {
                    return plan_err!(
                        "Delta table '{location}': unknown option '{other}' (known: version)"
                    );
                }
            }
        }
        let env = state.runtime_env();
        let table = open_location(env, location, version)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if self.files {
            return Ok(Arc::new(
                crate::files::FilesTable::of(&table)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            ));
        }
        provider(&table)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_paths_stay_inside_the_table() {
        assert!(is_table_file("part-0001.parquet"));
        assert!(is_table_file("split=train/part-1.parquet"));
        for bad in [
            "/etc/passwd",
            "../other/x.parquet",
            "s3://bucket/x.parquet",
            "a/%2E%2E/%2E%2E/x",
            "_delta_log/00000000000000000009.json",
            "",
        ] {
            assert!(!is_table_file(bad), "{bad}");
        }
    }

    fn version(n: u64, operation: &str, caiflow: bool) -> Version {
        Version {
            version: n,
            timestamp_ms: None,
            operation: Some(operation.into()),
            record: caiflow.then(|| serde_json::json!({})),
        }
    }

    #[test]
    fn maintenance_commits_keep_a_table_caiflows() {
        let after_vacuum = [
            version(3, "VACUUM END", false),
            version(2, "VACUUM START", false),
            version(1, "CREATE OR REPLACE TABLE", true),
        ];
        assert_eq!(caiflow_version(&after_vacuum).map(|v| v.version), Some(1));
        let rewritten = [
            version(2, "WRITE", false),
            version(1, "CREATE OR REPLACE TABLE", true),
        ];
        assert!(caiflow_version(&rewritten).is_none());
    }
}
