//! Running a plan into a run of the store: materialized tables, skipping what is already
//! there, `--from`, and the request journal.
//!
//! In a plan run, `CREATE TABLE name AS query` materializes `name` in the run as a Delta
//! table (partitioned by `split` when the result has that column), one commit per
//! materialization ([`crate::delta`]). A table whose latest version records the statement's
//! fingerprint is reused, not recomputed. The fingerprint hashes the statement's text and
//! the fingerprints of what it reads (views, tables, files by content: [`crate::inputs`]), so
//! changing one stage's options recomputes that stage's table and its dependents; the
//! requests that did not change are served by the journal at no cost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::delta;
use crate::delta::files_read::FilesTable;
use crate::error::{Result, RunError};
use crate::inputs::{FileFingerprints, references};
use crate::plan::{
    StatementOutcome, execute_with_preview, place_of, statement_lines, statement_text,
};
use crate::store::{RunStore, register_s3_buckets};
use caiflow_engine::CaiSession;

/// What produced one version of a table: caiflow's record in that version's Delta commit
/// (`commitInfo.caiflow`), with the counts and times read back from the table and its log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub table: String,
    pub fingerprint: String,
    /// The statement that produced it.
    pub sql: String,
    /// The table's folder relative to the run (`{table}/`, a Delta table).
    pub data: String,
    pub partition_by: Vec<String>,
    /// Rows of this version (counted when read).
    #[serde(default)]
    pub rows: u64,
    /// Rows whose `error` is set, when the table has that column (counted when read).
    #[serde(default)]
    pub error_rows: Option<u64>,
    /// Fingerprints of the views, tables and files the statement reads.
    pub inputs: BTreeMap<String, String>,
    pub started_unix: u64,
    /// When the version was committed (the commit's timestamp).
    #[serde(default)]
    pub finished_unix: u64,
    /// The Delta version this record belongs to.
    #[serde(default)]
    pub version: u64,
    pub caiflow_version: String,
    /// Why the table cannot be read (a data file missing, a log entry cut short): a damaged
    /// table is reported, and recomputed by the next run (the journal makes that free).
    #[serde(skip)]
    pub damaged: Option<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The run's table folders that hold a Delta table (`{table}/_delta_log/`).
async fn table_names(store: &RunStore) -> Result<Vec<String>> {
    let mut names = BTreeSet::new();
    for (path, _) in store.list("").await? {
        let mut parts = path.split('/');
        if let (Some(table), Some("_delta_log")) = (parts.next(), parts.next())
            && !table.contains(".damaged-")
        {
            names.insert(table.to_string());
        }
    }
    Ok(names.into_iter().collect())
}

/// Every version of table `name`, newest first, with caiflow's record where it has one.
pub async fn versions(store: &RunStore, name: &str) -> Result<Vec<delta::Version>> {
    match delta::open(store, name, None).await? {
        Some(table) => delta::history(&table).await,
        None => Ok(vec![]),
    }
}

/// The record of table `name`'s latest version, with its rows and error rows counted; None
/// when the table has no version caiflow wrote.
pub async fn latest_manifest(store: &RunStore, name: &str) -> Result<Option<Manifest>> {
    let damaged = |why: String| {
        tracing::warn!(
            "table {name} of {} is damaged ({why}); a run recomputes it",
            store.display
        );
        Manifest {
            table: name.to_string(),
            fingerprint: String::new(),
            sql: String::new(),
            data: format!("{name}/"),
            partition_by: vec![],
            rows: 0,
            error_rows: None,
            inputs: BTreeMap::new(),
            started_unix: 0,
            finished_unix: 0,
            version: 0,
            caiflow_version: String::new(),
            damaged: Some(why),
        }
    };
    let table = match delta::open(store, name, None).await {
        Ok(Some(table)) => table,
        Ok(None) => return Ok(None),
        Err(e) if delta::is_damage(&e) => return Ok(Some(damaged(e.to_string()))),
        Err(e) => return Err(e),
    };
    // Reading the rows fails when a data file the log names is gone.
    match read_manifest(store, name, &table).await {
        Ok(m) => Ok(m),
        Err(e @ (RunError::Io { .. } | RunError::StoreOp { .. })) => Err(e),
        Err(e) => Ok(Some(damaged(e.to_string()))),
    }
}

/// The caiflow record of `table`'s latest version, its rows counted.
async fn read_manifest(
    store: &RunStore,
    name: &str,
    table: &deltalake_core::DeltaTable,
) -> Result<Option<Manifest>> {
    let history = delta::history(table).await?;
    let Some((version, record)) =
        delta::caiflow_version(&history).and_then(|v| Some((v.clone(), v.record.clone()?)))
    else {
        tracing::warn!(
            "table {name} of {}: its latest version was not written by caiflow; recomputing",
            store.display
        );
        return Ok(None);
    };
    let mut m: Manifest = match serde_json::from_value(record) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("table {name}: unreadable caiflow record ({e}); recomputing the table");
            return Ok(None);
        }
    };
    m.version = version.version;
    m.finished_unix = version.timestamp_ms.map(|t| (t / 1000) as u64).unwrap_or(0);
    let ctx = datafusion::prelude::SessionContext::new();
    store.register(&ctx);
    let df = ctx.read_table(delta::provider(table).await?)?;
    let has_error = df.schema().as_arrow().index_of("error").is_ok();
    m.rows = df.clone().count().await? as u64;
    m.error_rows = if has_error {
        Some(
            df.filter(datafusion::prelude::col("error").is_not_null())?
                .count()
                .await? as u64,
        )
    } else {
        None
    };
    Ok(Some(m))
}

/// Every committed table of a run.
pub async fn manifests(store: &RunStore) -> Result<Vec<Manifest>> {
    let mut out = vec![];
    for name in table_names(store).await? {
        if let Some(m) = latest_manifest(store, &name).await? {
            out.push(m);
        }
    }
    Ok(out)
}

/// Register a committed table under its name (replacing an earlier registration).
pub async fn register_table(session: &CaiSession, store: &RunStore, name: &str) -> Result<()> {
    register_table_as(session, store, name, false).await
}

/// Register a committed table; `files`: as its list of data files ([`FilesTable`], for plans
/// that are shipped to a cluster), else through delta-rs.
async fn register_table_as(
    session: &CaiSession,
    store: &RunStore,
    name: &str,
    files: bool,
) -> Result<()> {
    let _ = session.ctx.deregister_table(name);
    let Some(table) = delta::open(store, name, None).await? else {
        return Err(RunError::Store(format!(
            "table {name} of {} has no version",
            store.display
        )));
    };
    let provider: Arc<dyn datafusion::catalog::TableProvider> = if files {
        Arc::new(FilesTable::of(&table).await?)
    } else {
        delta::provider(&table).await?
    };
    session.ctx.register_table(name, provider)?;
    Ok(())
}

/// Register all committed tables of a run; returns their names.
pub async fn register_run_tables(session: &CaiSession, store: &RunStore) -> Result<Vec<String>> {
    store.register(&session.ctx);
    let mut names = vec![];
    for name in table_names(store).await? {
        // A folder whose first commit never landed (a kill mid-write) is no table yet; a
        // damaged one is left out (with a warning), not a failure of every query.
        let table = match delta::open(store, &name, None).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("table {name} is damaged and left out: {e}");
                None
            }
        };
        if let Some(table) = table {
            let _ = session.ctx.deregister_table(name.as_str());
            session
                .ctx
                .register_table(name.as_str(), delta::provider(&table).await?)?;
            names.push(name);
        }
    }
    Ok(names)
}

/// Register all committed tables of a run as their lists of data files, for a session whose
/// queries run on a cluster; returns their names.
pub async fn register_run_files(session: &CaiSession, store: &RunStore) -> Result<Vec<String>> {
    store.register(&session.ctx);
    let mut names = vec![];
    for name in table_names(store).await? {
        if delta::open(store, &name, None)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            register_table_as(session, store, &name, true).await?;
            names.push(name);
        }
    }
    Ok(names)
}

/// Register every earlier version of the run's tables as `"{table}@v{N}"` (time travel:
/// `SELECT * FROM "revisions@v0"`); returns the names.
pub async fn register_versions(session: &CaiSession, store: &RunStore) -> Result<Vec<String>> {
    let mut names = vec![];
    for name in table_names(store).await? {
        let Ok(history) = versions(store, &name).await else {
            continue;
        };
        for v in history.iter().skip(1) {
            if let Ok(Some(table)) = delta::open(store, &name, Some(v.version)).await {
                let versioned = format!("{name}@v{}", v.version);
                let _ = session.ctx.deregister_table(versioned.as_str());
                session
                    .ctx
                    .register_table(versioned.as_str(), delta::provider(&table).await?)?;
                names.push(versioned);
            }
        }
    }
    Ok(names)
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

#[derive(Debug, Default)]
pub struct RunOptions {
    /// Tables to recompute (with everything that depends on them).
    pub from: BTreeSet<String>,
    /// Cancelled to stop the run: no table is committed after that (the endpoints, given the
    /// same token, send nothing more).
    pub stop: caiflow_llm::CancellationToken,
    /// File and row-group sizes of materialized tables.
    pub files: crate::config::TablesConfig,
    /// The session runs its queries on a cluster: tables are read as file lists (plans that
    /// name them can be shipped), their data files written by the executors and committed
    /// here.
    pub cluster: bool,
}

/// What happened to a materialized table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableOutcome {
    Reused,
    Computed { rows: u64 },
}

/// Runs a plan's statements into a run.
pub struct Runner<'a> {
    pub session: &'a CaiSession,
    pub store: &'a RunStore,
    pub options: RunOptions,
    /// Fingerprints of the views and tables defined so far.
    fingerprints: HashMap<String, String>,
    /// Tables recomputed in this run (their dependents must be too).
    recomputed: BTreeSet<String>,
    pub tables: Vec<(String, TableOutcome)>,
    /// Content fingerprints of the files statements name.
    files: FileFingerprints,
}

impl<'a> Runner<'a> {
    pub fn new(session: &'a CaiSession, store: &'a RunStore, options: RunOptions) -> Self {
        Runner {
            session,
            store,
            options,
            fingerprints: HashMap::new(),
            recomputed: BTreeSet::new(),
            tables: vec![],
            files: FileFingerprints::default(),
        }
    }

    /// The plan's views and tables `statement` reads, and the files it names (`file:PATH`),
    /// each with its fingerprint: a Delta table's is its latest commit, a file's or folder's
    /// its content. The S3 buckets it names become readable.
    async fn inputs_of(
        &mut self,
        statement: &DFStatement,
        own: &str,
    ) -> Result<BTreeMap<String, String>> {
        let refs = references(statement);
        let mut inputs: BTreeMap<String, String> = refs
            .names
            .into_iter()
            .filter(|i| i != own)
            .filter_map(|i| self.fingerprints.get(&i).map(|f| (i, f.clone())))
            .collect();
        register_s3_buckets(&self.session.ctx, refs.literals.iter().map(String::as_str))?;
        let env = self.session.ctx.runtime_env();
        for literal in refs.literals {
            let fp = match delta::input_fingerprint(&env, &literal).await? {
                Some(fp) => Some(fp),
                None => self.files.of(&literal)?,
            };
            if let Some(fp) = fp {
                inputs.insert(format!("file:{literal}"), fp);
            }
        }
        Ok(inputs)
    }

    fn fingerprint(&self, text: &str, inputs: &BTreeMap<String, String>) -> String {
        let mut parts: Vec<&str> = vec![text];
        for (k, v) in inputs {
            parts.push(k);
            parts.push(v);
        }
        hash(&parts)
    }

    /// Run every statement of `sql` in order.
    pub async fn run(
        &mut self,
        sql: &str,
        mut on_done: impl FnMut(&StatementOutcome),
    ) -> Result<()> {
        self.store.register(&self.session.ctx);
        delta::register_delta_inputs(self.session, self.options.cluster);
        self.files = FileFingerprints::load(self.store).await?;
        let statements =
            DFParser::parse_sql(sql).map_err(|e| RunError::Plan(format!("SQL syntax: {e}")))?;
        let lines = statement_lines(sql);
        let count = statements.len();
        let place = |index: usize| place_of(&lines, count, index);
        for (index, statement) in statements.into_iter().enumerate() {
            let text = statement_text(&statement);
            let started = Instant::now();
            let (rows, preview) = match &statement {
                DFStatement::Statement(s) => match s.as_ref() {
                    Statement::CreateTable(ct) if ct.query.is_some() => {
                        let name = ct.name.to_string().to_ascii_lowercase();
                        let query = ct.query.as_ref().map(|q| q.to_string()).unwrap_or_default();
                        let inputs = self.inputs_of(&statement, &name).await?;
                        let rows = self
                            .materialize(&name, &text, &query, inputs)
                            .await
                            .map_err(|e| {
                                RunError::Plan(format!("{}: table {name}: {e}", place(index)))
                            })?;
                        self.files.save(self.store).await?;
                        (rows as usize, None)
                    }
                    other => {
                        if let Statement::CreateView(v) = other {
                            let name = v.name.to_string().to_ascii_lowercase();
                            let inputs = self.inputs_of(&statement, &name).await?;
                            let fp = self.fingerprint(&text, &inputs);
                            self.fingerprints.insert(name, fp);
                        }
                        self.execute(&statement)
                            .await
                            .map_err(|e| RunError::Plan(format!("{}: {e}", place(index))))?
                    }
                },
                other => {
                    // An external table is an input like a view: its fingerprint covers what
                    // its location holds (a Delta table's latest commit, a folder's content).
                    if let DFStatement::CreateExternalTable(t) = other {
                        let name = t.name.to_string().to_ascii_lowercase();
                        let inputs = self.inputs_of(&statement, &name).await?;
                        let fp = self.fingerprint(&text, &inputs);
                        self.fingerprints.insert(name, fp);
                    }
                    self.execute(&statement)
                        .await
                        .map_err(|e| RunError::Plan(format!("{}: {e}", place(index))))?
                }
            };
            on_done(&StatementOutcome {
                index,
                sql: text,
                rows,
                seconds: started.elapsed().as_secs_f64(),
                preview,
                warning: self.session.failed_llm_calls(),
            });
        }
        Ok(())
    }

    /// Run a statement that is not materialized; queries keep a preview of their first rows.
    async fn execute(&self, statement: &DFStatement) -> Result<(usize, Option<String>)> {
        execute_with_preview(self.session, statement, 10).await
    }

    async fn materialize(
        &mut self,
        name: &str,
        text: &str,
        query: &str,
        inputs: BTreeMap<String, String>,
    ) -> Result<u64> {
        let fingerprint = self.fingerprint(text, &inputs);
        self.fingerprints
            .insert(name.to_string(), fingerprint.clone());
        let forced =
            self.options.from.contains(name) || inputs.keys().any(|i| self.recomputed.contains(i));
        let existing = latest_manifest(self.store, name).await?;
        if let Some(m) = existing
            .as_ref()
            .filter(|m| m.fingerprint == fingerprint && !forced && m.damaged.is_none())
        {
            register_table_as(self.session, self.store, name, self.options.cluster).await?;
            self.tables.push((name.to_string(), TableOutcome::Reused));
            tracing::info!("table {name}: unchanged, reused ({} rows)", m.rows);
            return Ok(m.rows);
        }

        let started_unix = unix_now();
        let df = self.session.ctx.sql(query).await?;
        let partition_by: Vec<String> = if df.schema().as_arrow().index_of("split").is_ok() {
            vec!["split".to_string()]
        } else {
            vec![]
        };
        let manifest = Manifest {
            table: name.to_string(),
            fingerprint,
            sql: text.to_string(),
            data: format!("{name}/"),
            partition_by: partition_by.clone(),
            rows: 0,
            error_rows: None,
            inputs,
            started_unix,
            finished_unix: 0,
            version: 0,
            caiflow_version: env!("CARGO_PKG_VERSION").to_string(),
            damaged: None,
        };
        let record = serde_json::to_value(&manifest).map_err(|e| RunError::Json {
            what: format!("encoding the record of {name}"),
            cause: e,
        })?;
        // The commit: when it returns, the new version is the table.
        let stop = self.options.stop.clone();
        let write = delta::TableWrite {
            store: self.store,
            name,
            partition_by,
            record,
            files: &self.options.files,
            stop: stop.clone(),
        };
        let written = if self.options.cluster {
            delta::write_on_cluster(write, df).await
        } else {
            delta::write(write, df).await
        };
        written.map_err(|e| {
            if stop.is_cancelled() {
                RunError::Interrupted
            } else {
                e
            }
        })?;
        register_table_as(self.session, self.store, name, self.options.cluster).await?;
        let rows = self.session.ctx.table(name).await?.count().await? as u64;
        self.recomputed.insert(name.to_string());
        self.tables
            .push((name.to_string(), TableOutcome::Computed { rows }));
        Ok(rows)
    }
}
