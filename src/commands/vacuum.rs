//! `caiflow vacuum RUN`: delete the data files no kept version of a table uses (never a
//! damaged table's, never while the run is written: it holds the run's lease).

use std::time::Duration;

use anyhow::bail;
use caiflow_llm::CancellationToken;
use caiflow_run::lock::RunLock;
use caiflow_run::materialize::manifests;
use caiflow_run::store::RunStore;

use super::Exit;

/// `caiflow vacuum RUN`.
pub async fn vacuum(run: String, keep: usize, retain_hours: f64) -> anyhow::Result<Exit> {
    if !(retain_hours >= 0.0 && retain_hours.is_finite()) {
        bail!("--retain-hours {retain_hours}: expected a number of hours, 0 or more");
    }
    let store = RunStore::open_spec(&run)?;
    // Held while vacuuming: no write of this run is in progress, none starts.
    let lock = RunLock::acquire(&store, "vacuum", CancellationToken::new()).await?;
    let retain = Duration::from_secs_f64(retain_hours * 3600.0);
    for m in manifests(&store).await? {
        if m.damaged.is_some() {
            println!("table {}: damaged, left as it is", m.table);
            continue;
        }
        let deleted = caiflow_run::delta::vacuum(&store, &m.table, keep, retain).await?;
        println!(
            "table {}: {deleted} file(s) deleted, newest {} version(s) kept, files removed less than {retain_hours} h ago kept",
            m.table,
            keep.max(1)
        );
    }
    lock.release().await;
    Ok(Exit::Success)
}
