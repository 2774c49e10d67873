//! `caiflow sql`: SQL with caiflow's functions, over a run's tables (`--run`), one statement
//! (`-e`) or an interactive prompt; `llm()` calls and stages are journalled in the run.

use std::path::PathBuf;
use std::sync::Arc;

use caiflow_engine::CaiSession;
use caiflow_llm::CancellationToken;
use caiflow_run::OnDemandJournal;
use caiflow_run::materialize::{register_run_tables, register_versions};
use caiflow_run::plan::run_sql;
use caiflow_run::sessions::record_sql_session;
use caiflow_run::store::RunStore;

use super::{Exit, STOP_GRACE};
use crate::config;
use crate::ui::interrupted;

/// `caiflow sql`.
pub async fn sql(
    execute: Option<String>,
    run: Option<String>,
    config: Option<PathBuf>,
    max_rows: usize,
    cluster: Option<String>,
) -> anyhow::Result<Exit> {
    let loaded = config::load(config.as_deref())?.llm;
    let started_unix_ms = caiflow_run::sessions::unix_ms();
    let store = run.as_deref().map(RunStore::open_spec).transpose()?;
    // llm() calls are served from and recorded in the run's journal (read only when the
    // run's store cannot be written).
    let journal = match &store {
        Some(store) if cluster.is_none() => Some(OnDemandJournal::new(store.clone())),
        _ => None,
    };
    let stop = CancellationToken::new();
    let mut session = CaiSession::with_journal(
        caiflow_engine::endpoints(&loaded, stop.clone())?,
        journal
            .clone()
            .map(|j| j as Arc<dyn caiflow_engine::journal::RequestJournal>),
    );
    if let Some(url) = &cluster {
        caiflow_cluster::client::connect(&mut session, url, &loaded, None).await?;
    }
    caiflow_run::delta::register_delta_inputs(&session, cluster.is_some());
    if let Some(sql) = &execute {
        caiflow_run::inputs::register_s3_inputs(&session.ctx, sql)?;
    }
    if let Some(store) = &store {
        let names = if cluster.is_some() {
            caiflow_run::materialize::register_run_files(&session, store).await?
        } else {
            register_run_tables(&session, store).await?
        };
        eprintln!("tables: {}", names.join(", "));
        let older = register_versions(&session, store).await?;
        if !older.is_empty() {
            eprintln!("earlier versions: {}", older.join(", "));
        }
    }
    let mut stopped = false;
    let result = match execute {
        None => crate::shell::run(&session, max_rows).await,
        Some(execute) => {
            let query = run_sql(&session, &execute, max_rows, |o| {
                if let Some(p) = &o.preview {
                    println!("{p}");
                } else {
                    eprintln!("{} rows", o.rows);
                }
                if let Some(w) = &o.warning {
                    eprintln!("warning: {w}");
                }
            });
            tokio::pin!(query);
            // Ctrl-C or SIGTERM: nothing more is sent, requests in flight may finish, and
            // what was paid for is journalled and counted below before the process ends.
            tokio::select! {
                r = &mut query => r.map(|_| ()).map_err(Into::into),
                _ = interrupted() => {
                    eprintln!("caiflow: stopping; keeping completed requests");
                    stop.cancel();
                    stopped = true;
                    let _ = tokio::time::timeout(STOP_GRACE, &mut query).await;
                    Ok(())
                }
            }
        }
    };
    if let Some(journal) = journal {
        journal.close().await?;
        // What llm() and stages sent counts toward the run's usage (and its budgets).
        if let Some(store) = &store
            && let Err(e) = record_sql_session(store, &session.progress, started_unix_ms).await
        {
            eprintln!("caiflow: this session's usage is not recorded in the run: {e}");
        }
    }
    if stopped {
        eprintln!("caiflow: interrupted; completed requests are journalled and counted");
        return Ok(Exit::Interrupted);
    }
    result.map(|()| Exit::Success)
}
