//! `caiflow repair RUN`: recompute the tables with error rows (or damaged ones) of a run,
//! with the plan, variables and configuration the run saved; the journal serves every good
//! row, so only the failed requests are sent again.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use caiflow_llm::CancellationToken;
use caiflow_run::lock::RunLock;
use caiflow_run::materialize::{RunOptions, manifests};
use caiflow_run::naming::resume_command;
use caiflow_run::plan::substitute;
use caiflow_run::saved;
use caiflow_run::sessions::charge_budgets;
use caiflow_run::store::RunStore;

use super::Exit;
use super::run::execute_run;
use crate::config;

/// `caiflow repair RUN`.
pub async fn repair(
    run: String,
    tables: Vec<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<Exit> {
    let store = RunStore::open_spec(&run)?;
    // Paths named on the command line resolve against the cwd of this command; the plan's
    // against the folder the run was made in.
    let config_path = config
        .as_deref()
        .map(|c| std::fs::canonicalize(c).with_context(|| format!("config {}", c.display())))
        .transpose()?;
    let plan = saved::load(&store).await?;
    let stop = CancellationToken::new();
    let lock = RunLock::acquire(&store, "repair", stop.clone()).await?;
    let config = match (&config_path, &plan.config) {
        (Some(path), Some(recorded)) => {
            let given = config::load(Some(path))?;
            saved::check_same_requests(&recorded.llm, &given.llm)?;
            given
        }
        (Some(path), None) => config::load(Some(path))?,
        (None, Some(recorded)) => recorded.clone(),
        (None, None) => bail!(
            "run {} has no recorded configuration (made by an older caiflow): pass the one it was made with, --config FILE",
            store.display
        ),
    };
    // The plan's relative paths resolve where the run was made; a run made on another
    // machine (an S3 store) resolves them here instead, with a warning.
    match &plan.cwd {
        Some(cwd) if cwd.is_dir() => std::env::set_current_dir(cwd)
            .with_context(|| format!("entering {}, where the run was made", cwd.display()))?,
        Some(cwd) => eprintln!(
            "caiflow: warning: the run was made in {}, which is not here: its plan's relative paths resolve against the current folder",
            cwd.display()
        ),
        None => {}
    }
    let mut from: BTreeSet<String> = tables.iter().map(|t| t.to_ascii_lowercase()).collect();
    if from.is_empty() {
        for m in manifests(&store).await? {
            if let Some(why) = &m.damaged {
                eprintln!("table {}: damaged ({why})", m.table);
                from.insert(m.table);
            } else if m.error_rows.unwrap_or(0) > 0 {
                eprintln!(
                    "table {}: {} row(s) with errors",
                    m.table,
                    m.error_rows.unwrap_or(0)
                );
                from.insert(m.table);
            }
        }
    }
    if from.is_empty() {
        eprintln!(
            "caiflow: nothing to repair in {} (no table has error rows)",
            store.display
        );
        lock.release().await;
        return Ok(Exit::Success);
    }
    let sql = substitute(&plan.text, &plan.vars)?;
    let mut words = vec!["repair".to_string(), store.display.clone()];
    for t in &tables {
        words.extend(["--table".into(), t.clone()]);
    }
    if let Some(c) = &config_path {
        words.extend(["--config".into(), c.display().to_string()]);
    }
    let endpoints = caiflow_engine::endpoints(&config.llm, stop.clone())?;
    let before = charge_budgets(&endpoints, &store, caiflow_llm::Budget::default())
        .await
        .context("reading the run's sessions")?;
    let exit = execute_run(
        store.clone(),
        endpoints,
        &sql,
        RunOptions {
            from,
            stop,
            files: config.tables,
            cluster: false,
        },
        &resume_command(&words),
        None,
        before,
        lock,
        None,
    )
    .await?;
    if exit == Exit::Success {
        println!("{}", store.display);
    }
    Ok(exit)
}
