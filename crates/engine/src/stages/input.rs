//! Resolve a stage's input argument to a logical plan: a registered table or view (streams
//! through without materializing), a query, or a Parquet/JSON/CSV path of stored
//! intermediates (so a single stage can be re-run on what an earlier run wrote).

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::TableReference;
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::error::Result;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use futures::FutureExt;

pub fn session_state<'a>(session: &'a dyn Session, function: &str) -> Result<&'a SessionState> {
    session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| plan_datafusion_err!("{function}: needs a DataFusion SessionState"))
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
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| plan_datafusion_err!("{function}: reading '{path}' needs a tokio runtime"))?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return plan_err!(
            "{function}: reading a path input ('{path}') needs a multi-threaded tokio runtime; register it as a table first"
        );
    }
    let table = tokio::task::block_in_place(|| handle.block_on(infer))
        .map_err(|e| plan_datafusion_err!("{function}: cannot read '{path}': {e}"))?;
    Ok(Arc::new(table))
}
