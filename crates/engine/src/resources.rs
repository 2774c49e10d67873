//! Where a task's LLM stages find their endpoints and journal.
//!
//! In one process the session carries them (the config extensions [`Endpoints`] and
//! [`JournalHandle`]). On an executor of a cluster a task's configuration only describes the
//! run (its endpoints without keys, where its journal is); the executor keeps the live
//! endpoints and journals, shared by every task of the run it serves, and hands them out
//! through [`TaskResources`] (registered as the [`Resources`] extension of its sessions).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::TableProviderFactory;
use datafusion::error::Result;
use datafusion::prelude::SessionConfig;

use crate::journal::JournalHandle;
use caiflow_llm::Endpoints;

/// The name lineage gives a run in one process (`worker`).
pub const LOCAL_WORKER: &str = "local";

#[async_trait]
pub trait TaskResources: Send + Sync + Debug {
    /// This process's name in lineage (`worker`).
    fn worker(&self) -> &str;
    /// The live endpoints of the run a task of `config` belongs to.
    async fn endpoints(&self, config: &SessionConfig) -> Result<Arc<Endpoints>>;
    /// The journal of that run, if it has one.
    async fn journal(&self, config: &SessionConfig) -> Result<Option<Arc<JournalHandle>>>;
}

/// The session-config extension with the table factories that planning inside a task needs
/// (a process that received a plan): `DELTA`, for source functions that read a Delta table
/// where they run.
#[derive(Clone, Debug, Default)]
pub struct TaskTableFactories(pub Vec<(String, Arc<dyn TableProviderFactory>)>);

/// The session-config extension through which an executor provides [`TaskResources`].
#[derive(Clone, Debug)]
pub struct Resources(pub Arc<dyn TaskResources>);

/// How stages are planned in a session (the `caiflow_stages.*` options: they travel with a
/// plan to the processes that plan and run it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageOptions {
    /// Spread a stage's input over the session's target partitions (by a hash of the prompt
    /// or group key) when it arrives in one partition, so every executor of a cluster gets
    /// rows. Rows of one group stay together.
    pub spread: bool,
}

impl datafusion::config::ConfigExtension for StageOptions {
    const PREFIX: &'static str = "caiflow_stages";
}

/// Entries are listed with their prefix (`caiflow_stages.spread`), so a receiver can set
/// them (DataFusion's `extensions_options!` lists them without).
impl datafusion::config::ExtensionOptions for StageOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn datafusion::config::ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key.strip_prefix("caiflow_stages.").unwrap_or(key) {
            "spread" => {
                self.spread = value.parse().map_err(|e| {
                    datafusion::common::config_datafusion_err!(
                        "caiflow_stages.spread = {value}: {e}"
                    )
                })?
            }
            other => return datafusion::common::config_err!("no option caiflow_stages.{other}"),
        }
        Ok(())
    }

    fn entries(&self) -> Vec<datafusion::config::ConfigEntry> {
        vec![datafusion::config::ConfigEntry {
            key: "caiflow_stages.spread".into(),
            value: Some(self.spread.to_string()),
            description: "spread a stage's input over the target partitions",
        }]
    }
}
