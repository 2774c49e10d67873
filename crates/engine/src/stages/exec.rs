//! The stage contract: a [`RowStage`] says what one row becomes; [`StageFunction`] makes it
//! a DataFusion table function; [`StageExec`] streams it.
//!
//! Rows flow one at a time: each input row is processed in its own task as soon as the
//! input yields it (up to a window of rows in flight), and finished rows leave in small
//! batches as soon as they are ready (`ready_chunks`), so a downstream stage starts on a
//! row while this stage still works on others: no barrier between stages, and memory is
//! bounded by the window, not the table.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{exec_err, plan_datafusion_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown,
};
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

use super::args::StageArgs;
use super::cells::{ColumnBuilder, OutRow};
use super::input::{resolve_input, session_state};
use super::llm_call::LlmOptions;
use super::row::{InputBatch, InputRow};
use super::spread::SpreadExec;
use crate::journal::JournalHandle;
use crate::progress::{Progress, StageProgress};
use crate::resources::{LOCAL_WORKER, Resources, StageOptions};
use caiflow_llm::{Endpoint, Endpoints};
use datafusion::physical_plan::{Distribution, Partitioning};

/// What a stage needs at execution time, looked up from the session by name.
#[derive(Debug, Clone)]
pub struct StageEnv {
    pub endpoint: Option<Arc<Endpoint>>,
    /// Who sends this stage's requests (lineage `worker`).
    pub worker: Arc<str>,
    pub progress: Arc<StageProgress>,
    /// The run's request journal, when the session has one.
    pub journal: Option<Arc<crate::journal::JournalHandle>>,
    /// Scheduling priority of this stage's requests (deeper stages first).
    pub priority: u32,
    /// `retry_truncated`: ask again with this `max_tokens` when an answer is cut off.
    pub retry_truncated: Option<u32>,
    /// Set when a budget refused one of this stream's requests: the stream then fails once
    /// the requests in flight are answered, so its table is not committed.
    pub budget_refused: Arc<std::sync::atomic::AtomicBool>,
}

impl StageEnv {
    /// Why this stage's work must stop, if it must: the run is stopping (Ctrl-C), the
    /// endpoint gave up (refused key, error rate), or a budget refused one of its requests
    /// (said once no budgeted request is in flight anywhere, so their answers are
    /// journalled first; the caller's own requests must be finished before asking).
    pub async fn stopped(&self) -> Option<String> {
        let endpoint = self.endpoint.as_ref()?;
        if endpoint.stopping() {
            return Some("interrupted: the run is stopping".into());
        }
        if let Some(why) = endpoint.aborted() {
            return Some(why.to_string());
        }
        self.budget_stopped().await
    }

    /// The message of the budget that refused one of this stage's requests, if one did:
    /// said once no budgeted request is in flight anywhere (other streams' answers are
    /// journalled before the query fails and drops them).
    pub async fn budget_stopped(&self) -> Option<String> {
        let endpoint = self.endpoint.as_ref()?;
        if !self
            .budget_refused
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        while endpoint.budget_in_flight() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Some(budget_message(endpoint))
    }
}

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

/// Turn a row stream into a stream of groups (see [`Grouping`]). Memory holds only groups
/// that are still open, at most [`MAX_OPEN_GROUPS`].
fn group_rows(
    rows: impl futures::Stream<Item = Result<InputRow>> + Send + Unpin + 'static,
    grouping: Grouping,
) -> impl futures::Stream<Item = Result<Vec<InputRow>>> + Send {
    struct State<S> {
        rows: S,
        open: std::collections::HashMap<String, Vec<InputRow>>,
        /// Keys in the order their groups opened (some already closed).
        order: std::collections::VecDeque<String>,
        ready: std::collections::VecDeque<Vec<InputRow>>,
        done: bool,
        grouping: Grouping,
    }
    let state = State {
        rows,
        open: Default::default(),
        order: Default::default(),
        ready: Default::default(),
        done: false,
        grouping,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(group) = st.ready.pop_front() {
                return Some((Ok(group), st));
            }
            if st.done {
                if st.open.is_empty() {
                    return None;
                }
                let mut keys: Vec<String> = st.open.keys().cloned().collect();
                keys.sort();
                for k in keys {
                    if let Some(g) = st.open.remove(&k) {
                        st.ready.push_back(g);
                    }
                }
                continue;
            }
            match st.rows.next().await {
                None => st.done = true,
                Some(Err(e)) => return Some((Err(e), st)),
                Some(Ok(row)) => {
                    let Some(key) = row.str(st.grouping.key).map(str::to_string) else {
                        st.ready.push_back(vec![row]);
                        continue;
                    };
                    let expected = st.grouping.size_column.and_then(|c| row.u64(c));
                    if !st.open.contains_key(&key) {
                        st.order.push_back(key.clone());
                    }
                    let group = st.open.entry(key.clone()).or_default();
                    group.push(row);
                    if expected.is_some_and(|n| group.len() as u64 >= n)
                        && let Some(g) = st.open.remove(&key)
                    {
                        st.ready.push_back(g);
                    }
                    while st.open.len() > MAX_OPEN_GROUPS {
                        let Some(oldest) = st.order.pop_front() else {
                            break;
                        };
                        if let Some(g) = st.open.remove(&oldest) {
                            st.ready.push_back(g);
                        }
                    }
                    if st.order.len() > 2 * MAX_OPEN_GROUPS {
                        let open = &st.open;
                        st.order.retain(|k| open.contains_key(k));
                    }
                }
            }
        }
    })
}

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
    /// The stage this call makes over an input of `input_schema`.
    pub fn build(&self, input_schema: &Schema) -> Result<Arc<dyn RowStage>> {
        let factory = crate::session::stage_factory(&self.function)
            .ok_or_else(|| plan_datafusion_err!("no stage function named '{}'", self.function))?;
        let args = StageArgs::parse_texts(&self.function, self.args.iter().cloned())?;
        let stage = factory.build(&args, input_schema)?;
        args.finish(&[])?;
        Ok(stage)
    }
}

/// The table function wrapper shared by all row stages.
#[derive(Debug)]
pub struct StageFunction(pub Arc<dyn StageFactory>);

impl TableFunctionImpl for StageFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = self.0.function_name();
        let parsed = StageArgs::parse(name, args.exprs())?;
        let state = session_state(args.session(), name)?;
        let check_endpoint = |endpoint: &str| -> Result<()> {
            let endpoints = state.config().get_extension::<Endpoints>().ok_or_else(|| {
                plan_datafusion_err!("{name}: the session has no endpoints configured")
            })?;
            endpoints
                .get(endpoint)
                .map(|_| ())
                .map_err(|e| plan_datafusion_err!("{name}: {e}"))
        };
        let input = resolve_input(state, parsed.input()?, name)?;
        let input_schema = input.schema().as_arrow().clone();
        let stage = self.0.build(&parsed, &input_schema)?;
        parsed.finish(&[])?;
        if let Some(endpoint) = stage.endpoint() {
            check_endpoint(endpoint)?;
        }
        let call = StageCall {
            function: name.to_string(),
            args: parsed.texts(),
        };
        Ok(Arc::new(StageTable::try_new(call, stage, input)?))
    }
}

/// The provider a stage call returns: the input plan plus the stage.
#[derive(Debug)]
pub struct StageTable {
    call: StageCall,
    stage: Arc<dyn RowStage>,
    input: LogicalPlan,
    schema: SchemaRef,
    /// Input columns carried through (those not replaced by the stage's own).
    kept: Vec<usize>,
}

impl StageTable {
    /// The table of `call` over `input` (a plan decoded in another process).
    pub fn from_call(call: StageCall, input: LogicalPlan) -> Result<Self> {
        let stage = call.build(input.schema().as_arrow())?;
        Self::try_new(call, stage, input)
    }

    pub fn call(&self) -> &StageCall {
        &self.call
    }

    pub fn input(&self) -> &LogicalPlan {
        &self.input
    }

    fn try_new(call: StageCall, stage: Arc<dyn RowStage>, input: LogicalPlan) -> Result<Self> {
        let (schema, kept) = output_schema(stage.as_ref(), input.schema().as_arrow())?;
        Ok(StageTable {
            call,
            stage,
            input,
            schema,
            kept,
        })
    }

    fn added_names(&self) -> Vec<String> {
        self.stage
            .output_fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
}

/// A stage's output schema over `input_schema`: the input columns it carries (their
/// indexes), then its own; checks that the columns it needs are there.
fn output_schema(stage: &dyn RowStage, input_schema: &Schema) -> Result<(SchemaRef, Vec<usize>)> {
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

fn unqualify(expr: &Expr) -> Result<Expr> {
    expr.clone()
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                c.name,
            )))),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

#[async_trait]
impl TableProvider for StageTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    /// Filters on carried-through input columns run before the stage, so no request is
    /// made for a row the query throws away.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let added = self.added_names();
        Ok(filters
            .iter()
            .map(|f| {
                let touches_added = f.column_refs().iter().any(|c| added.contains(&c.name));
                if touches_added || f.is_volatile() {
                    TableProviderFilterPushDown::Unsupported
                } else {
                    TableProviderFilterPushDown::Exact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut builder = LogicalPlanBuilder::from(self.input.clone());
        for f in filters {
            builder = builder.filter(unqualify(f)?)?;
        }
        // Every input row yields at least one output row, so limiting the input is safe;
        // a grouping stage yields one row per group, so there it is not.
        if let Some(n) = limit.filter(|_| self.stage.grouping().is_none()) {
            builder = builder.limit(0, Some(n))?;
        }
        let state = session_state(state, self.stage.name())?;
        let mut input = state.create_physical_plan(&builder.build()?).await?;
        let spread = state
            .config()
            .options()
            .extensions
            .get::<StageOptions>()
            .is_some_and(|o| o.spread);
        let partitions = state.config().target_partitions();
        if spread
            && partitions > 1
            && !has_stage(&input)
            && let Some(key) = unit_key(self.stage.as_ref(), &input.schema())
        {
            input = Arc::new(SpreadExec::try_new(input, &key, partitions)?);
        }
        Ok(Arc::new(StageExec::try_new(
            StageExecParts {
                call: self.call.clone(),
                projection: projection.cloned(),
                spread,
            },
            self.stage.clone(),
            input,
            self.schema.clone(),
            self.kept.clone(),
        )?))
    }
}

/// The column that keeps a stage's units together: its group key, else the prompt id, else
/// the first column it needs.
fn unit_key(stage: &dyn RowStage, schema: &Schema) -> Option<String> {
    let key = match stage.grouping() {
        Some(g) => g.key,
        None if schema.index_of("prompt_id").is_ok() => "prompt_id",
        None => stage.required_columns().first().copied()?,
    };
    Some(key.to_string())
}

/// Whether `plan` runs a stage (its input is then not cheap to read twice).
fn has_stage(plan: &Arc<dyn ExecutionPlan>) -> bool {
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
    pub fn from_parts(parts: StageExecParts, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let stage = parts.call.build(&input.schema())?;
        let (schema, kept) = output_schema(stage.as_ref(), &input.schema())?;
        Self::try_new(parts, stage, input, schema, kept)
    }

    fn try_new(
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

/// The environment of a task of the function `name` calling `endpoint` (if any): the
/// endpoint and journal from the session (one process) or from the executor's
/// [`Resources`] (a cluster), and the function's progress counters.
pub async fn task_env(
    name: &str,
    endpoint: Option<&str>,
    context: &TaskContext,
) -> Result<StageEnv> {
    let config = context.session_config();
    let progress = config.get_extension::<Progress>().unwrap_or_default();
    let resources = config.get_extension::<Resources>();
    let found = match endpoint {
        None => None,
        Some(endpoint) => {
            let endpoints = match (config.get_extension::<Endpoints>(), &resources) {
                (Some(e), _) => e,
                (None, Some(r)) => r.0.endpoints(config).await?,
                (None, None) => {
                    return exec_err!("{name}: the session has no endpoints configured");
                }
            };
            Some(
                endpoints
                    .get(endpoint)
                    .map_err(|e| plan_datafusion_err!("{name}: {e}"))?,
            )
        }
    };
    let journal = match (config.get_extension::<JournalHandle>(), &resources) {
        (Some(j), _) => Some(j),
        (None, Some(r)) if found.is_some() => r.0.journal(config).await?,
        _ => None,
    };
    Ok(StageEnv {
        progress: if found.is_some() {
            progress.llm_stage(name)
        } else {
            progress.stage(name)
        },
        endpoint: found,
        journal,
        priority: 0,
        retry_truncated: None,
        budget_refused: Default::default(),
        worker: match &resources {
            Some(r) => r.0.worker().into(),
            None => LOCAL_WORKER.into(),
        },
    })
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
    let rows = input
        .map_ok(|batch| futures::stream::iter(InputBatch::new(batch).rows().map(Ok)))
        .try_flatten();
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

/// The message of the budget that stopped `endpoint`'s requests.
fn budget_message(endpoint: &Endpoint) -> String {
    endpoint
        .budget_stop()
        .unwrap_or_else(|| "a budget stopped the run".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, UInt64Array};
    use datafusion::arrow::datatypes::DataType;

    /// Groups that never complete (a filter dropped some of their rows) do not pile up:
    /// the oldest is processed as it is once more than `MAX_OPEN_GROUPS` are open.
    #[tokio::test]
    async fn incomplete_groups_are_bounded() {
        let groups = 3 * MAX_OPEN_GROUPS;
        let schema = Arc::new(Schema::new(vec![
            Field::new("prompt_id", DataType::Utf8, false),
            Field::new("num_samples", DataType::UInt64, false),
        ]));
        // One row of each group arrives; each says the group has two.
        let ids: Vec<String> = (0..groups).map(|i| format!("p{i}")).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(UInt64Array::from(vec![2u64; groups])),
            ],
        )
        .expect("batch");
        let rows: Vec<Result<InputRow>> = InputBatch::new(batch).rows().map(Ok).collect();
        let grouping = Grouping {
            key: "prompt_id",
            size_column: Some("num_samples"),
        };
        // The input never ends: only bounded eviction can release groups.
        let endless = futures::stream::iter(rows).chain(futures::stream::pending());
        let out = group_rows(Box::pin(endless), grouping);
        let released: Vec<_> = out.take(groups - MAX_OPEN_GROUPS).collect().await;
        assert_eq!(released.len(), groups - MAX_OPEN_GROUPS);
        assert_eq!(
            released[0].as_ref().expect("group")[0].str("prompt_id"),
            Some("p0"),
            "the oldest first"
        );
    }
}
