//! `CREATE EXTERNAL TABLE … STORED AS DELTA`: Delta tables as inputs of a plan, read
//! through the session's own object stores (as file lists when the plan goes to a cluster).

use std::sync::Arc;

use datafusion::catalog::TableProviderFactory;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::DataFusionError;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::CreateExternalTable;

use super::table::{open_location, provider};

/// Let `CREATE EXTERNAL TABLE t STORED AS DELTA LOCATION '…' [OPTIONS ('version' 'N')]`, and
/// the stages and readers given a Delta table's path, read a Delta table (written by
/// caiflow, Spark, delta-rs, …) in `session`: a local folder, or an `s3://` table of a
/// bucket whose object store the session has.
pub fn register_delta_tables(session: &caiflow_engine::CaiSession) {
    register_delta_inputs(session, false);
}

/// Register the `DELTA` table factory; `files`: it opens tables as their file lists
/// ([`super::files_read::FilesTable`]), for sessions whose plans are shipped to a cluster.
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
                super::files_read::FilesTable::of(&table)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            ));
        }
        provider(&table)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}
