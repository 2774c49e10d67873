//! Table functions that read their input themselves (`red_team_prompts`, `helpful_sft`,
//! `helpful_pairs`) as plans that can be shipped to another process.
//!
//! Their providers stream rows parsed by caiflow from a file, which no plan serializer knows.
//! So the provider ([`SourceTable`]) and its execution node ([`SourceExec`]) remember the
//! call ([`StageCall`]: function and argument texts); a process that receives the node calls
//! the function again there and reads the file itself (which must therefore be readable
//! there: a shared folder or an object store).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Expr, lit};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::TryStreamExt;

use super::args::StageArgs;
use super::contract::StageCall;

/// A source table function whose tables remember their call.
#[derive(Debug)]
pub struct SourceFunction {
    pub name: &'static str,
    pub inner: Arc<dyn TableFunctionImpl>,
}

impl TableFunctionImpl for SourceFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let call = StageCall {
            function: self.name.to_string(),
            args: StageArgs::parse(self.name, args.exprs())?.texts(),
        };
        let inner = self.inner.call_with_args(args)?;
        Ok(Arc::new(SourceTable {
            call,
            function: self.inner.clone(),
            inner,
        }))
    }
}

/// A session for planning inside a task (a process that received a plan): the task's
/// configuration and runtime (object stores).
pub fn task_session(context: &TaskContext) -> datafusion::execution::SessionState {
    let config = context.session_config();
    let mut factories = std::collections::HashMap::new();
    if let Some(f) = config.get_extension::<crate::resources::TaskTableFactories>() {
        factories.extend(f.0.iter().cloned());
    }
    SessionStateBuilder::new()
        .with_config(config.clone())
        .with_runtime_env(context.runtime_env())
        .with_default_features()
        .with_table_factories(factories)
        .build()
}

/// Call the source `function` again from its call (in the process that received the plan).
fn call_source(
    function: &dyn TableFunctionImpl,
    call: &StageCall,
    session: &dyn Session,
) -> Result<Arc<dyn TableProvider>> {
    let exprs: Vec<Expr> = call.args.iter().map(|a| lit(a.as_str())).collect();
    function.call_with_args(TableFunctionArgs::new(&exprs, session))
}

/// The provider of a source function's call.
#[derive(Debug)]
pub struct SourceTable {
    call: StageCall,
    /// The source function (without its call wrapper), to call again in another process.
    function: Arc<dyn TableFunctionImpl>,
    inner: Arc<dyn TableProvider>,
}

impl SourceTable {
    pub fn call(&self) -> &StageCall {
        &self.call
    }

    /// The table of `call`, calling `function` (the source it names) again in `session`.
    pub fn from_call(
        call: StageCall,
        function: Arc<dyn TableFunctionImpl>,
        session: &dyn Session,
    ) -> Result<Self> {
        let inner = call_source(function.as_ref(), &call, session)?;
        Ok(SourceTable {
            call,
            function,
            inner,
        })
    }
}

#[async_trait]
impl TableProvider for SourceTable {
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
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, &[], limit).await?;
        let parts = SourceExecParts {
            call: self.call.clone(),
            projection: projection.cloned(),
            limit,
            partitions: plan.output_partitioning().partition_count(),
        };
        Ok(Arc::new(SourceExec::new(
            parts,
            self.function.clone(),
            plan.schema(),
            Some(plan),
        )))
    }
}

/// What a [`SourceExec`] is made of, as plain data.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceExecParts {
    pub call: StageCall,
    pub projection: Option<Vec<usize>>,
    pub limit: Option<usize>,
    pub partitions: usize,
}

/// The rows of a source function's call: the plan made where it was planned, or, in a
/// process that received it, a plan made there from the call when a partition is executed.
#[derive(Debug)]
pub struct SourceExec {
    parts: SourceExecParts,
    function: Arc<dyn TableFunctionImpl>,
    schema: SchemaRef,
    planned: Option<Arc<dyn ExecutionPlan>>,
    properties: Arc<PlanProperties>,
}

impl SourceExec {
    fn new(
        parts: SourceExecParts,
        function: Arc<dyn TableFunctionImpl>,
        schema: SchemaRef,
        planned: Option<Arc<dyn ExecutionPlan>>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(parts.partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        SourceExec {
            parts,
            function,
            schema,
            planned,
            properties,
        }
    }

    /// A node received from another process: `function` (the source its call names) is
    /// called again there (for its schema); its rows are read when a partition is executed.
    pub fn from_parts(
        parts: SourceExecParts,
        function: Arc<dyn TableFunctionImpl>,
        context: &TaskContext,
    ) -> Result<Self> {
        let table = call_source(function.as_ref(), &parts.call, &task_session(context))?;
        let schema = match &parts.projection {
            Some(p) => Arc::new(table.schema().project(p)?),
            None => table.schema(),
        };
        Ok(Self::new(parts, function, schema, None))
    }

    pub fn parts(&self) -> &SourceExecParts {
        &self.parts
    }
}

impl DisplayAs for SourceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SourceExec: {}", self.parts.call.function)
    }
}

impl ExecutionPlan for SourceExec {
    fn name(&self) -> &str {
        "SourceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "SourceExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if let Some(plan) = &self.planned {
            return plan.execute(partition, context);
        }
        let parts = self.parts.clone();
        let function = self.function.clone();
        let stream = futures::stream::once(async move {
            let state = task_session(&context);
            let table = call_source(function.as_ref(), &parts.call, &state)?;
            let plan = table
                .scan(&state, parts.projection.as_ref(), &[], parts.limit)
                .await?;
            plan.execute(partition, context)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
