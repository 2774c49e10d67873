//! The parts of `caiflow.toml` a run reads: the endpoints (`[endpoints.NAME]`, owned by
//! caiflow-llm) and `[tables]` (owned here), each section parsed by its owner from the same
//! text so errors name the file's own lines.

use std::path::Path;

use serde::{Deserialize, Serialize};

use caiflow_llm::LlmError;
use caiflow_llm::config::{Config, describe_toml_error};

use crate::error::{Result, RunError};

/// `[tables]`: the size of the data files of materialized tables and of their Parquet row
/// groups.
///
/// A table is written as one stream per split: a file grows to `target_file_mib` and then
/// the next one starts; inside it, a row group is closed at `row_group_mib` (encoded) or
/// `row_group_rows`, whichever comes first. The writer holds the open row group in memory,
/// so `row_group_mib` bounds a write's memory (twice it per split being written), and the
/// file size does not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TablesConfig {
    pub target_file_mib: u64,
    pub row_group_mib: u64,
    pub row_group_rows: u64,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            target_file_mib: 128,
            row_group_mib: 16,
            row_group_rows: 1 << 20,
        }
    }
}

impl TablesConfig {
    fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("target_file_mib", self.target_file_mib),
            ("row_group_mib", self.row_group_mib),
            ("row_group_rows", self.row_group_rows),
        ] {
            if value == 0 {
                return Err(
                    LlmError::Config(format!("tables.{key} = 0: must be at least 1")).into(),
                );
            }
        }
        if self.target_file_mib > 1 << 20 || self.row_group_mib > 1 << 20 {
            return Err(LlmError::Config(
                "tables.target_file_mib and tables.row_group_mib must be at most 1048576 (1 TiB)"
                    .into(),
            )
            .into());
        }
        Ok(())
    }
}

/// What a run is configured with: its endpoints and how its tables are cut into files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunConfig {
    pub llm: Config,
    pub tables: TablesConfig,
}

/// The sections of the file a run reads, as they are written (other sections ignored).
#[derive(Serialize, Deserialize)]
struct Sections {
    #[serde(default)]
    endpoints: std::collections::BTreeMap<String, caiflow_llm::config::EndpointConfig>,
    #[serde(default)]
    tables: TablesConfig,
}

impl RunConfig {
    /// Parse a configuration file's text.
    pub fn parse(text: &str) -> Result<RunConfig> {
        let llm = Config::parse(text)?;
        #[derive(Deserialize)]
        struct Tables {
            #[serde(default)]
            tables: TablesConfig,
        }
        let tables = toml::from_str::<Tables>(text)
            .map_err(|e| LlmError::Config(describe_toml_error(text, &e)))?
            .tables;
        tables.validate()?;
        Ok(RunConfig { llm, tables })
    }

    /// Read and parse the file at `path`; an error names the file.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| LlmError::io(path, e))?;
        Self::parse(&text).map_err(|e| {
            let cause = match e {
                RunError::Llm(e) => e,
                other => LlmError::Config(other.to_string()),
            };
            RunError::Llm(LlmError::ConfigFile {
                path: path.to_path_buf(),
                cause: Box::new(cause),
            })
        })
    }

    /// The configuration without a file (see [`Config::local_default`]).
    pub fn local_default() -> RunConfig {
        RunConfig {
            llm: Config::local_default(),
            tables: TablesConfig::default(),
        }
    }

    /// This configuration as a file's text, URL credentials redacted (what a run saves).
    pub fn to_redacted_toml(&self) -> Result<String> {
        let sections = Sections {
            endpoints: self.llm.redacted().endpoints,
            tables: self.tables.clone(),
        };
        toml::to_string(&sections)
            .map_err(|e| RunError::Plan(format!("encoding the configuration: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_section_is_optional_validated_and_strict() {
        assert_eq!(
            RunConfig::parse("").unwrap().tables,
            TablesConfig::default()
        );
        let c = RunConfig::parse("[tables]\nrow_group_mib = 8\n").unwrap();
        assert_eq!((c.tables.row_group_mib, c.tables.target_file_mib), (8, 128));
        let zero = RunConfig::parse("[tables]\ntarget_file_mib = 0\n").unwrap_err();
        assert!(
            zero.to_string().contains("tables.target_file_mib = 0"),
            "{zero}"
        );
        let typo = RunConfig::parse("[tables]\nrow_groups_mib = 8\n").unwrap_err();
        assert!(typo.to_string().contains("row_groups_mib"), "{typo}");
    }
}
