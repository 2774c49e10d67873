//! Naming runs: the default name of a run is the plan's name and a hash of what defines the
//! run (the plan's text, the variables set, the configuration's text), so the same command
//! again continues the same run instead of paying for every request again; and the command
//! that continues a run, printed whenever it stops early.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::{Result, RunError};

/// The default name of a run of the plan `stem` (its file name without extension) with
/// `plan_text`, the variables `set` on the command line and the configuration file
/// `config` (None: the built-in default, which depends on `CAIFLOW_BASE_URL` and
/// `CAIFLOW_MODEL`).
pub fn default_run_name(
    stem: &str,
    plan_text: &str,
    set: &BTreeMap<String, String>,
    config: Option<&Path>,
) -> Result<String> {
    let config_text = match config {
        Some(p) => std::fs::read_to_string(p).map_err(|e| RunError::Io {
            path: p.to_path_buf(),
            cause: e,
        })?,
        None => format!(
            "(built-in default; CAIFLOW_BASE_URL={:?}; CAIFLOW_MODEL={:?})",
            std::env::var("CAIFLOW_BASE_URL").ok(),
            std::env::var("CAIFLOW_MODEL").ok()
        ),
    };
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(plan_text.as_bytes());
    for (k, v) in set {
        part(k.as_bytes());
        part(v.as_bytes());
    }
    part(config_text.as_bytes());
    Ok(format!("{stem}-{}", hex::encode(&h.finalize()[..4])))
}

/// A fresh run's name (`--new`): the default name and the time, so it differs from every
/// earlier run of the same command.
pub fn fresh_run_name(default_name: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{default_name}-{secs}")
}

/// The command that continues a run (`caiflow` and `words`), quoted for a POSIX shell.
pub fn resume_command(words: &[String]) -> String {
    let words: Vec<&str> = std::iter::once("caiflow")
        .chain(words.iter().map(String::as_str))
        .collect();
    shlex::try_join(words).unwrap_or_else(|_| "caiflow run … (see above)".into())
}
