//! Running a plan into a run of the store: materialized tables with manifests, skipping what
//! is already there, `--from`, and the request journal.
//!
//! In a plan run, `CREATE TABLE name AS query` materializes `name` in the run (Parquet,
//! partitioned by `split` when the result has that column): the data goes to a fresh attempt
//! folder and the table's manifest, written last, names it. A table whose manifest matches
//! the statement's fingerprint is reused, not recomputed. The fingerprint hashes the
//! statement's text and the fingerprints of the views and tables it names, so changing one
//! stage's options recomputes that stage's table and its dependents; the requests that did
//! not change are served by the journal at no cost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, RunError};
use crate::inputs::{FileFingerprints, references};
use crate::plan::{StatementOutcome, execute_with_preview, place_of, statement_lines};
use crate::store::RunStore;
use caiflow_engine::CaiSession;

/// A table's commit record, `{table}/_manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub table: String,
    pub fingerprint: String,
    /// The statement that produced it.
    pub sql: String,
    /// Data folder relative to the run (`{table}/{attempt}/`).
    pub data: String,
    pub partition_by: Vec<String>,
    pub rows: u64,
    /// Rows whose `error` is set (when the table has that column).
    pub error_rows: Option<u64>,
    /// Fingerprints of the views and tables the statement names.
    pub inputs: BTreeMap<String, String>,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub caiflow_version: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn manifest_path(table: &str) -> String {
    format!("{table}/_manifest.json")
}

/// Every committed table of a run.
pub async fn manifests(store: &RunStore) -> Result<Vec<Manifest>> {
    let mut out = vec![];
    for (path, _) in store.list("").await? {
        if !(path.ends_with("/_manifest.json") && path.matches('/').count() == 1) {
            continue;
        }
        if let Some(bytes) = store.get(&path).await? {
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| RunError::Json {
                what: format!("{}/{path}: not a manifest", store.display),
                cause: e,
            })?;
            out.push(m);
        }
    }
    Ok(out)
}

/// Register a committed table under its name (replacing an earlier registration).
pub async fn register_table(session: &CaiSession, store: &RunStore, m: &Manifest) -> Result<()> {
    let _ = session.ctx.deregister_table(m.table.as_str());
    let location = store.location(&m.data);
    let sql = format!(
        "CREATE EXTERNAL TABLE \"{}\" STORED AS PARQUET LOCATION '{}'",
        m.table.replace('"', "\"\""),
        location.replace('\'', "''")
    );
    session.ctx.sql(&sql).await.map_err(|e| RunError::StoreOp {
        what: format!("registering table {} from {location}", m.table),
        cause: Box::new(e),
    })?;
    Ok(())
}

/// Register all committed tables of a run; returns their names.
pub async fn register_run_tables(session: &CaiSession, store: &RunStore) -> Result<Vec<String>> {
    store.register(&session.ctx);
    let mut names = vec![];
    for m in manifests(store).await? {
        register_table(session, store, &m).await?;
        names.push(m.table);
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
    /// each with its fingerprint.
    fn inputs_of(
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
        for literal in refs.literals {
            if let Some(fp) = self.files.of(&literal)? {
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
        self.files = FileFingerprints::load(self.store).await?;
        let statements =
            DFParser::parse_sql(sql).map_err(|e| RunError::Plan(format!("SQL syntax: {e}")))?;
        let lines = statement_lines(sql);
        let count = statements.len();
        let place = |index: usize| place_of(&lines, count, index);
        for (index, statement) in statements.into_iter().enumerate() {
            let text = statement.to_string();
            let started = Instant::now();
            let (rows, preview) = match &statement {
                DFStatement::Statement(s) => match s.as_ref() {
                    Statement::CreateTable(ct) if ct.query.is_some() => {
                        let name = ct.name.to_string().to_ascii_lowercase();
                        let query = ct.query.as_ref().map(|q| q.to_string()).unwrap_or_default();
                        let inputs = self.inputs_of(&statement, &name)?;
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
                            let inputs = self.inputs_of(&statement, &name)?;
                            let fp = self.fingerprint(&text, &inputs);
                            self.fingerprints.insert(name, fp);
                        }
                        self.execute(&text)
                            .await
                            .map_err(|e| RunError::Plan(format!("{}: {e}", place(index))))?
                    }
                },
                _ => self
                    .execute(&text)
                    .await
                    .map_err(|e| RunError::Plan(format!("{}: {e}", place(index))))?,
            };
            on_done(&StatementOutcome {
                index,
                sql: text,
                rows,
                seconds: started.elapsed().as_secs_f64(),
                preview,
            });
        }
        Ok(())
    }

    /// Run a statement that is not materialized; queries keep a preview of their first rows.
    async fn execute(&self, sql: &str) -> Result<(usize, Option<String>)> {
        execute_with_preview(self.session, sql, 10).await
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
        let existing = match self.store.get(&manifest_path(name)).await? {
            Some(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(
                        "table {name}: unreadable manifest ({e}); recomputing the table"
                    );
                    None
                }
            },
            None => None,
        };
        if let Some(m) = existing
            .as_ref()
            .filter(|m| m.fingerprint == fingerprint && !forced)
        {
            register_table(self.session, self.store, m).await?;
            self.tables.push((name.to_string(), TableOutcome::Reused));
            tracing::info!("table {name}: unchanged, reused ({} rows)", m.rows);
            return Ok(m.rows);
        }

        let started_unix = unix_now();
        let attempt = format!(
            "{}-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            std::process::id()
        );
        let data = format!("{name}/{attempt}/");
        let df = self.session.ctx.sql(query).await?;
        let partition_by: Vec<String> = if df.schema().as_arrow().index_of("split").is_ok() {
            vec!["split".to_string()]
        } else {
            vec![]
        };
        let has_error = df.schema().as_arrow().index_of("error").is_ok();
        let written = df
            .write_parquet(
                &self.store.location(&data),
                DataFrameWriteOptions::new().with_partition_by(partition_by.clone()),
                None,
            )
            .await?;
        let rows = written
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            })
            .map(|a| a.value(0))
            .unwrap_or(0);
        if self.options.stop.is_cancelled() {
            return Err(RunError::Interrupted);
        }
        let mut manifest = Manifest {
            table: name.to_string(),
            fingerprint,
            sql: text.to_string(),
            data: data.clone(),
            partition_by,
            rows,
            error_rows: None,
            inputs,
            started_unix,
            finished_unix: unix_now(),
            caiflow_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        if rows == 0 {
            // Nothing was written: an empty file keeps the table's schema readable.
            let schema = Arc::new(
                self.session
                    .ctx
                    .sql(query)
                    .await?
                    .schema()
                    .as_arrow()
                    .clone(),
            );
            let mut buf = Vec::new();
            let writer = datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None)?;
            writer.close()?;
            self.store
                .put(&format!("{data}empty.parquet"), Bytes::from(buf))
                .await?;
        }
        register_table(self.session, self.store, &manifest).await?;
        if has_error && rows > 0 {
            // Count errors on what was written (a cheap scan of one column).
            let table = self.session.ctx.table(name).await?;
            let n = table
                .filter(datafusion::prelude::col("error").is_not_null())?
                .count()
                .await?;
            manifest.error_rows = Some(n as u64);
        } else if has_error {
            manifest.error_rows = Some(0);
        }
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| RunError::Json {
            what: format!("encoding the manifest of {name}"),
            cause: e,
        })?;
        // The commit: after this put, the new attempt is the table.
        self.store
            .put(&manifest_path(name), Bytes::from(bytes))
            .await?;
        for (path, _) in self.store.list(name).await? {
            if !path.starts_with(&data) && !path.ends_with("_manifest.json") {
                let _ = self.store.delete_one(&path).await;
            }
        }
        self.recomputed.insert(name.to_string());
        self.tables
            .push((name.to_string(), TableOutcome::Computed { rows }));
        Ok(rows)
    }
}
