//! Opening a run's tables and tables written by other tools, their versions and caiflow's
//! record in each, and vacuuming.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::execution::runtime_env::RuntimeEnv;
use deltalake_core::logstore::{StorageConfig, default_logstore};
use deltalake_core::{DeltaTable, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::config::TablesConfig;
use deltalake_core::parquet::basic::Compression;
use deltalake_core::parquet::file::properties::WriterProperties;

use crate::error::{Result, RunError};
use crate::store::RunStore;

/// The default target size of a table's data files (`[tables] target_file_mib`), for the
/// binary's bound on delta-rs's upload budget, set before any configuration is read.
pub const TARGET_FILE_BYTES: u64 = 128 << 20;

/// Parquet settings of a table's data files: delta-rs's own (Snappy; its name as the
/// writer), plus row groups bounded in bytes as well as rows. The parquet writer holds the
/// open row group in memory (encoded, plus a serialized copy while it is flushed), so it is
/// the row-group bound, not the file size, that bounds a write's memory.
pub(crate) fn writer_properties(files: &TablesConfig) -> WriterProperties {
    WriterProperties::builder()
        .set_created_by(format!("caiflow {} (delta-rs)", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(files.row_group_rows as usize))
        .set_max_row_group_bytes(Some((files.row_group_mib << 20) as usize))
        .build()
}

/// The key of caiflow's record in a commit's `commitInfo`.
pub const COMMIT_KEY: &str = "caiflow";

pub(super) fn delta_err(what: String, e: DeltaTableError) -> RunError {
    RunError::Delta {
        what,
        cause: Box::new(e),
    }
}

/// Whether an error opening a table says the table is damaged (its log or files cannot be
/// made into a version), rather than that the store could not be reached this time (an I/O
/// or object store error other than a missing object): only damage is reported as such,
/// moved aside and recomputed; a passing outage stays an error.
pub fn is_damage(e: &RunError) -> bool {
    match e {
        RunError::Delta { cause, .. } => match cause.as_ref() {
            DeltaTableError::Io { .. } => false,
            DeltaTableError::ObjectStore { source } => {
                matches!(source, object_store::Error::NotFound { .. })
            }
            _ => true,
        },
        _ => false,
    }
}

/// The Delta table `name` of the run, not loaded, on the run's own object store.
pub(super) fn unloaded(store: &RunStore, name: &str) -> Result<DeltaTable> {
    let url = store.table_url(name)?;
    unloaded_at(
        store.object_store(),
        &url,
        &format!("table {name} of {}", store.display),
    )
}

/// The Delta table at `url` of the object store `root` (whose "/" is the store's root), not
/// loaded: a log store built here (no scheme registry), which commits with a put-if-absent
/// of the next log entry, so two writers of one version cannot both win.
pub(super) fn unloaded_at(root: Arc<dyn ObjectStore>, url: &Url, what: &str) -> Result<DeltaTable> {
    let config = StorageConfig::default();
    let prefixed = config
        .decorate_store(root.clone(), url)
        .map_err(|e| delta_err(what.to_string(), e))?;
    Ok(DeltaTable::new(default_logstore(
        Arc::new(prefixed),
        root,
        url,
        &config,
    )))
}

/// A Delta table's location as a URL: a local folder (which must exist) or an object-store
/// URL (`s3://bucket/table`).
pub(super) fn location_url(location: &str) -> Result<Url> {
    if location.contains("://") && !location.starts_with("file://") {
        let folder = format!("{}/", location.trim_end_matches('/'));
        return Url::parse(&folder)
            .map_err(|e| RunError::Store(format!("Delta table '{location}': {e}")));
    }
    let local = location.strip_prefix("file://").unwrap_or(location);
    let path = std::fs::canonicalize(local).map_err(|e| RunError::io(local, e))?;
    Url::from_directory_path(&path)
        .map_err(|_| RunError::Store(format!("Delta table '{location}': not a folder")))
}

/// The Delta table at `location` (written by any tool: delta-rs, Spark, caiflow), at its
/// latest version or `version`, read through the object stores of `env` (an S3 bucket must
/// be registered there: see [`crate::store::register_s3_buckets`]).
pub async fn open_location(
    env: &RuntimeEnv,
    location: &str,
    version: Option<u64>,
) -> Result<DeltaTable> {
    let url = location_url(location)?;
    let root = env.object_store_registry.get_store(&url)?;
    let mut table = unloaded_at(root, &url, &format!("Delta table '{location}'"))?;
    let loaded = match version {
        Some(v) => table.load_version(v).await,
        None => table.load().await,
    };
    match loaded {
        Ok(()) => Ok(table),
        Err(DeltaTableError::NotATable(_)) => Err(RunError::Store(format!(
            "'{location}' is not a Delta table (no commits in its _delta_log/)"
        ))),
        Err(e) => Err(delta_err(format!("reading Delta table '{location}'"), e)),
    }
}

/// The fingerprint of the Delta table at `location` when it is one: its location and its
/// latest commit (the newest `_delta_log/NNN.json` and that entry's bytes), so a new version
/// of an input recomputes what reads it without hashing its data files. None when
/// `location` holds no Delta log (or its store is not registered in `env`).
pub async fn input_fingerprint(env: &RuntimeEnv, location: &str) -> Result<Option<String>> {
    use object_store::ObjectStoreExt;
    use sha2::{Digest, Sha256};
    let is_url = location.contains("://") && !location.starts_with("file://");
    let local = location.strip_prefix("file://").unwrap_or(location);
    if !is_url && !std::path::Path::new(local).join("_delta_log").is_dir() {
        return Ok(None);
    }
    let Ok(url) = location_url(location) else {
        return Ok(None);
    };
    let Ok(root) = env.object_store_registry.get_store(&url) else {
        return Ok(None);
    };
    let log = ObjectPath::from(format!("{}/_delta_log", url.path().trim_matches('/')));
    let what = |e: object_store::Error| RunError::StoreOp {
        what: format!("reading the Delta log of '{location}'"),
        cause: Box::new(e),
    };
    let entries: Vec<object_store::ObjectMeta> =
        root.list(Some(&log)).try_collect().await.map_err(what)?;
    let newest = entries
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            let version: u64 = name.strip_suffix(".json")?.parse().ok()?;
            Some((version, &m.location))
        })
        .max_by_key(|(v, _)| *v);
    let Some((version, path)) = newest else {
        return Ok(None);
    };
    let commit = root
        .get(path)
        .await
        .map_err(what)?
        .bytes()
        .await
        .map_err(what)?;
    let mut h = Sha256::new();
    h.update(url.as_str().as_bytes());
    h.update(version.to_le_bytes());
    h.update(&commit);
    Ok(Some(format!(
        "delta-v{version}-{}",
        hex::encode(&h.finalize()[..12])
    )))
}

/// The table `name` at its latest version (or `version`), or None when it has no commit yet.
pub async fn open(
    store: &RunStore,
    name: &str,
    version: Option<u64>,
) -> Result<Option<DeltaTable>> {
    if store.list(&format!("{name}/_delta_log")).await?.is_empty() {
        return Ok(None);
    }
    let mut table = unloaded(store, name)?;
    let loaded = match version {
        Some(v) => table.load_version(v).await,
        None => table.load().await,
    };
    match loaded {
        Ok(()) => Ok(Some(table)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(delta_err(
            format!("reading table {name} of {}", store.display),
            e,
        )),
    }
}

/// Whether an `add` action's path (relative to the table, URL-encoded) names a data file
/// inside the table folder: no scheme, no absolute path, no `..`, nothing in `_delta_log`.
pub fn is_table_file(path: &str) -> bool {
    let decoded = url::form_urlencoded::parse(format!("p={path}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    [path, decoded.as_str()].iter().all(|p| {
        !p.is_empty()
            && !p.contains("://")
            && !p.starts_with('/')
            && !p.starts_with('\\')
            && !p.contains('\0')
            && p.split(['/', '\\'])
                .all(|part| part != ".." && part != "_delta_log")
    })
}

/// One version of a table: its number, when it was committed, and caiflow's record of what
/// produced it (None for versions written by other tools).
#[derive(Clone, Debug)]
pub struct Version {
    pub version: u64,
    pub timestamp_ms: Option<i64>,
    pub operation: Option<String>,
    pub record: Option<serde_json::Value>,
}

/// Every version of `table`, newest first.
pub async fn history(table: &DeltaTable) -> Result<Vec<Version>> {
    let mut out = vec![];
    let latest = table.version().unwrap_or(0);
    let mut commits = table.history(None);
    let mut index = 0u64;
    while let Some(c) = commits.next().await {
        let c = c.map_err(|e| delta_err("reading a table's history".into(), e))?;
        out.push(Version {
            // Commits come newest first, one per version.
            version: latest.saturating_sub(index),
            timestamp_ms: c.timestamp,
            operation: c.operation.clone(),
            record: c.info.get(COMMIT_KEY).cloned(),
        });
        index += 1;
    }
    Ok(out)
}

/// A DataFusion table over `table` (the version it is loaded at).
pub async fn provider(table: &DeltaTable) -> Result<Arc<dyn TableProvider>> {
    let scan = table.table_provider().build().await?;
    Ok(Arc::new(scan))
}

/// Delete the files of table `name` that its newest `keep` versions (at least one) do not
/// use and that were removed from the table more than `retain` ago (Delta's retention
/// window) — older versions' data and leftovers of interrupted writes. Earlier versions stay
/// in the log, but their data is gone. The caller holds the run's lease, so no write of the
/// run is in progress. Returns how many files were deleted.
pub async fn vacuum(
    store: &RunStore,
    name: &str,
    keep: usize,
    retain: std::time::Duration,
) -> Result<usize> {
    let Some(table) = open(store, name, None).await? else {
        return Ok(0);
    };
    let kept: Vec<_> = history(&table)
        .await?
        .iter()
        .take(keep.max(1))
        .map(|v| v.version)
        .collect();
    let retention = chrono::Duration::from_std(retain).unwrap_or(chrono::Duration::MAX);
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_keep_versions(&kept)
        .with_mode(deltalake_core::operations::vacuum::VacuumMode::Full)
        .await
        .map_err(|e| delta_err(format!("vacuuming table {name}"), e))?;
    Ok(metrics.files_deleted.len())
}

/// Operations of other tools (and of `caiflow vacuum`) that leave a table's rows as they
/// were: a caiflow table stays caiflow's (and reused) after them.
pub const ROWS_KEPT: [&str; 8] = [
    "VACUUM START",
    "VACUUM END",
    "OPTIMIZE",
    "SET TBLPROPERTIES",
    "UPGRADE PROTOCOL",
    "ADD FEATURE",
    "CHECKPOINT",
    "ADD CONSTRAINT",
];

/// The newest version of `versions` (newest first) whose rows caiflow wrote, when only
/// commits that keep the rows ([`ROWS_KEPT`]) came after it.
pub fn caiflow_version(versions: &[Version]) -> Option<&Version> {
    for v in versions {
        if v.record.is_some() {
            return Some(v);
        }
        if !v
            .operation
            .as_deref()
            .is_some_and(|op| ROWS_KEPT.contains(&op))
        {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_paths_stay_inside_the_table() {
        assert!(is_table_file("part-0001.parquet"));
        assert!(is_table_file("split=train/part-1.parquet"));
        for bad in [
            "/etc/passwd",
            "../other/x.parquet",
            "s3://bucket/x.parquet",
            "a/%2E%2E/%2E%2E/x",
            "_delta_log/00000000000000000009.json",
            "",
        ] {
            assert!(!is_table_file(bad), "{bad}");
        }
    }

    fn version(n: u64, operation: &str, caiflow: bool) -> Version {
        Version {
            version: n,
            timestamp_ms: None,
            operation: Some(operation.into()),
            record: caiflow.then(|| serde_json::json!({})),
        }
    }

    #[test]
    fn maintenance_commits_keep_a_table_caiflows() {
        let after_vacuum = [
            version(3, "VACUUM END", false),
            version(2, "VACUUM START", false),
            version(1, "CREATE OR REPLACE TABLE", true),
        ];
        assert_eq!(caiflow_version(&after_vacuum).map(|v| v.version), Some(1));
        let rewritten = [
            version(2, "WRITE", false),
            version(1, "CREATE OR REPLACE TABLE", true),
        ];
        assert!(caiflow_version(&rewritten).is_none());
    }
}
