//! `caiflow report RUN`: the run's report (HTML and report.json).

use std::path::{Path, PathBuf};

use anyhow::Context;
use caiflow_report::config::ReportConfig;
use caiflow_run::store::RunStore;

use super::Exit;
use crate::config;

/// `caiflow report RUN`.
pub async fn report(
    run: String,
    out: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<Exit> {
    let store = RunStore::open_spec(&run)?;
    let config = config::load_report(config.as_deref())?;
    let html = write_report(&store, &config, out.as_deref()).await?;
    eprintln!("caiflow: report in {html} (figures in report.json beside it)");
    println!("{html}");
    Ok(Exit::Success)
}

/// Compute and write a run's report; returns where its HTML file is.
pub async fn write_report(
    store: &RunStore,
    config: &ReportConfig,
    out: Option<&Path>,
) -> anyhow::Result<String> {
    let report = caiflow_report::build(store, config)
        .await
        .with_context(|| format!("report of {}", store.display))?;
    Ok(match out {
        Some(dir) => caiflow_report::write(&report, dir)?
            .html
            .display()
            .to_string(),
        None => caiflow_report::save(&report, store).await?,
    })
}
