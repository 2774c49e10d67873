//! Reading `caiflow.toml`: each section is parsed by the crate that owns it (endpoints:
//! caiflow-llm, `[tables]`: caiflow-run, `[report]`: caiflow-report); here, only which file
//! is read and that it has no section none of them knows.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use caiflow_report::config::ReportConfig;
use caiflow_run::config::RunConfig;

/// The sections a configuration file may have.
const SECTIONS: [&str; 3] = ["endpoints", "tables", "report"];

/// The config file a command uses: the one named, else ./caiflow.toml if present (else none:
/// the built-in embedded default).
pub fn config_file(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None if Path::new("caiflow.toml").is_file() => Some(PathBuf::from("caiflow.toml")),
        None => None,
    }
}

/// What a run is configured with (endpoints and `[tables]`).
pub fn load(path: Option<&Path>) -> anyhow::Result<RunConfig> {
    match config_file(path) {
        Some(p) => {
            check_sections(&p)?;
            Ok(RunConfig::load(&p)?)
        }
        None => Ok(RunConfig::local_default()),
    }
}

/// `[report]` of the config file.
pub fn load_report(path: Option<&Path>) -> anyhow::Result<ReportConfig> {
    match config_file(path) {
        Some(p) => {
            check_sections(&p)?;
            Ok(ReportConfig::load(&p)?)
        }
        None => Ok(ReportConfig::default()),
    }
}

/// A section no crate reads is a typo: say so, naming the sections there are.
fn check_sections(path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // A file that does not parse is reported by the section parsers, with its line.
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    if let Some(unknown) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        bail!(
            "{}: unknown section [{unknown}]: caiflow.toml has [endpoints.NAME], [tables] and [report]",
            path.display()
        );
    }
    Ok(())
}
