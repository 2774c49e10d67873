//! `caiflow cluster scheduler|executor`: the processes of a Ballista cluster.

use std::time::Duration;

use caiflow_llm::CancellationToken;

use super::Exit;
use crate::cli::ClusterCommand;
use crate::config;

/// `caiflow cluster scheduler|executor`.
pub async fn cluster(action: ClusterCommand) -> anyhow::Result<Exit> {
    use caiflow_cluster::process::{
        ExecutorOptions, SchedulerOptions, run_executor, run_scheduler,
    };
    match action {
        ClusterCommand::Scheduler {
            bind,
            executor_timeout,
        } => {
            eprintln!("caiflow: cluster scheduler on {bind}");
            run_scheduler(SchedulerOptions {
                bind,
                executor_timeout: Duration::from_secs(executor_timeout),
            })
            .await?
        }
        ClusterCommand::Executor {
            scheduler,
            bind,
            concurrent_tasks,
            heartbeat,
            work_dir,
            config,
            allow,
        } => {
            eprintln!("caiflow: cluster executor {bind} (scheduler {scheduler})");
            let endpoints = match config.as_deref() {
                Some(path) => Some(config::load(Some(path))?.llm),
                None => None,
            };
            let options = ExecutorOptions {
                scheduler,
                bind,
                concurrent_tasks,
                heartbeat: Duration::from_secs(heartbeat),
                work_dir,
                endpoints,
                allow,
            };
            run_executor(options, CancellationToken::new()).await?
        }
    }
    Ok(Exit::Success)
}
