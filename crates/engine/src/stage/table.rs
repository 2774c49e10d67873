//! [`StageFunction`] makes a [`RowStage`] a DataFusion table function; [`StageTable`] is
//! the provider a call returns: the input plan plus the stage, with filters on carried
//! columns pushed below it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Column;
use datafusion::common::plan_datafusion_err;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown,
};
use datafusion::physical_plan::ExecutionPlan;

use super::args::StageArgs;
use super::contract::{RowStage, StageCall, StageFactory, output_schema, unit_key};
use super::exec::{StageExec, StageExecParts, has_stage};
use super::input::{resolve_input, session_state};
use super::spread::SpreadExec;
use crate::resources::StageOptions;
use caiflow_llm::Endpoints;

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
    pub fn from_call(
        call: StageCall,
        factory: &dyn StageFactory,
        input: LogicalPlan,
    ) -> Result<Self> {
        let stage = call.build(factory, input.schema().as_arrow())?;
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
