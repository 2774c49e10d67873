//! What every task of a run carries of it: the `caiflow.*` session options.
//!
//! Ballista ships a session's options with every task, so these reach each executor with
//! the plan: the run's store (its journal lives there), the endpoints (caiflow.toml text
//! without keys: keys are read from each executor's own environment by the variable the
//! endpoint names) and how many executors share each endpoint's limits.

use std::any::Any;

use datafusion::common::{config_datafusion_err, config_err};
use datafusion::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::Result;

/// The run a task belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// The store of the run (a folder every process sees, or `s3://bucket[/prefix]`); empty
    /// when the session has no run (no journal).
    pub store: String,
    /// The run's name inside the store.
    pub run: String,
    /// The run's endpoints: the `[endpoints.*]` tables of caiflow.toml (never keys).
    pub endpoints: String,
    /// How many executors share each endpoint's limits (each gets an equal share).
    pub executors: usize,
    /// The client's signature of the fields above (see [`crate::trust::sign`]); empty
    /// without a cluster token.
    pub auth: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            store: String::new(),
            run: String::new(),
            endpoints: String::new(),
            executors: 1,
            auth: String::new(),
        }
    }
}

impl ConfigExtension for RunOptions {
    const PREFIX: &'static str = "caiflow";
}

/// DataFusion's `extensions_options!` lists an extension's entries without its prefix, so
/// a receiver could not set them; these are listed as `caiflow.NAME`.
impl ExtensionOptions for RunOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.strip_prefix("caiflow.").unwrap_or(key);
        match key {
            "store" => self.store = value.to_string(),
            "run" => self.run = value.to_string(),
            "endpoints" => self.endpoints = value.to_string(),
            "auth" => self.auth = value.to_string(),
            "executors" => {
                self.executors = value
                    .parse()
                    .map_err(|e| config_datafusion_err!("caiflow.executors = {value}: {e}"))?
            }
            other => return config_err!("no option caiflow.{other}"),
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        let entry = |key: &str, value: String, description: &'static str| ConfigEntry {
            key: format!("caiflow.{key}"),
            value: Some(value),
            description,
        };
        vec![
            entry("store", self.store.clone(), "the run's store"),
            entry("run", self.run.clone(), "the run's name"),
            entry("endpoints", self.endpoints.clone(), "the run's endpoints"),
            entry(
                "executors",
                self.executors.to_string(),
                "executors sharing each endpoint's limits",
            ),
            entry(
                "auth",
                self.auth.clone(),
                "the client's signature of the run",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionConfig;

    #[test]
    fn options_travel_as_prefixed_entries() {
        let sent = RunOptions {
            store: "/shared/runs".into(),
            run: "r1".into(),
            endpoints: "[endpoints.policy]\nmodel = 'm'\n".into(),
            executors: 3,
            auth: "ab12".into(),
        };
        let config = SessionConfig::new().with_option_extension(sent.clone());
        let mut received = SessionConfig::new().with_option_extension(RunOptions::default());
        for e in config.options().entries() {
            if let Some(v) = e.value {
                let _ = received.options_mut().set(&e.key, &v);
            }
        }
        let got = received.options().extensions.get::<RunOptions>().cloned();
        assert_eq!(got, Some(sent));
    }
}
