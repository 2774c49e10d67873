//! What a plan statement reads, found from its parsed form: the tables and views it names
//! (in `FROM`, as a stage's input such as `critique(responses)`, or in a subquery) and the
//! files it names (a string argument that is a local file or folder, a `CREATE EXTERNAL
//! TABLE … LOCATION`). Files are fingerprinted by content, so editing an input file makes
//! the tables that depend on it recompute — and only those.
//!
//! Hashing a large file on every run would be slow, so the run keeps `inputs.json`: for each
//! file its size, modification time and content hash. A file whose size and modification
//! time are unchanged keeps its recorded hash; otherwise it is hashed again (a touched but
//! unchanged file still gets the same fingerprint).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, ObjectName, TableFactor, Value, Visit, Visitor,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, RunError};
use crate::store::RunStore;

/// The names and string literals of a statement.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Relation names and bare identifiers, lower-cased (candidates for the plan's tables
    /// and views).
    pub names: BTreeSet<String>,
    /// String literals in table-function arguments, and external-table locations
    /// (candidates for input files).
    pub literals: BTreeSet<String>,
}

#[derive(Default)]
struct Collect(References);

/// String literals anywhere inside an expression.
#[derive(Default)]
struct Strings(BTreeSet<String>);

impl Visitor for Strings {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Value(v) = expr
            && let Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) = &v.value
        {
            self.0.insert(s.clone());
        }
        ControlFlow::Continue(())
    }
}

impl Visitor for Collect {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.0
            .names
            .insert(relation.to_string().to_ascii_lowercase());
        ControlFlow::Continue(())
    }

    /// Only the arguments of table functions (`red_team_prompts('data/p.jsonl')`,
    /// `critique(…, constitution => 'c.toml')`, nested ones included) are input positions: a
    /// literal elsewhere (`concat(a, '.', b)`, `WHERE x = '/'`) is a value, never a file.
    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let args: &[FunctionArg] = match factor {
            TableFactor::Table { args: Some(a), .. } => &a.args,
            TableFactor::Function { args, .. } => args,
            _ => &[],
        };
        for arg in args {
            let (FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg)) = arg;
            if let FunctionArgExpr::Expr(e) = arg {
                let mut strings = Strings::default();
                let _ = e.visit(&mut strings);
                self.0.literals.extend(strings.0);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(ident) => {
                self.0.names.insert(ident.value.to_ascii_lowercase());
            }
            Expr::CompoundIdentifier(parts) => {
                let name: Vec<&str> = parts.iter().map(|p| p.value.as_str()).collect();
                self.0.names.insert(name.join(".").to_ascii_lowercase());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// What `statement` names.
pub fn references(statement: &DFStatement) -> References {
    let mut collect = Collect::default();
    match statement {
        DFStatement::Statement(s) => {
            let _ = s.visit(&mut collect);
        }
        DFStatement::CreateExternalTable(t) => {
            collect.0.literals.extend(t.locations.iter().cloned());
        }
        DFStatement::CopyTo(c) => {
            if let datafusion::sql::parser::CopyToSource::Query(q) = &c.source {
                let _ = q.visit(&mut collect);
            }
        }
        _ => {}
    }
    collect.0
}

/// Make the S3 buckets that `sql`'s statements name readable by `ctx` (see
/// [`crate::store::register_s3_buckets`]). SQL that does not parse is left for the query to
/// report.
pub fn register_s3_inputs(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<()> {
    let Ok(statements) = datafusion::sql::parser::DFParser::parse_sql(sql) else {
        return Ok(());
    };
    for statement in &statements {
        let refs = references(statement);
        crate::store::register_s3_buckets(ctx, refs.literals.iter().map(String::as_str))?;
    }
    Ok(())
}

/// One file's recorded state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileEntry {
    size: u64,
    modified_ns: u128,
    sha256: String,
}

/// Content fingerprints of a run's input files, with the size/time cache of `inputs.json`.
#[derive(Debug, Default)]
pub struct FileFingerprints {
    entries: BTreeMap<String, FileEntry>,
    dirty: bool,
}

const CACHE: &str = "inputs.json";

impl FileFingerprints {
    /// The cache of `store`'s run (empty when it has none or it cannot be read).
    pub async fn load(store: &RunStore) -> Result<FileFingerprints> {
        let entries = match store.get(CACHE).await? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}/{CACHE}: unreadable ({e}); input files are hashed again",
                    store.display
                );
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        Ok(FileFingerprints {
            entries,
            dirty: false,
        })
    }

    /// Write the cache back if it changed.
    pub async fn save(&mut self, store: &RunStore) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self.entries).map_err(|e| RunError::Json {
            what: format!("encoding {CACHE}"),
            cause: e,
        })?;
        store.put(CACHE, Bytes::from(bytes)).await?;
        self.dirty = false;
        Ok(())
    }

    /// The content fingerprint of `literal` if it names a local file or folder, else None.
    /// A folder's fingerprint covers the content of every file in it.
    pub fn of(&mut self, literal: &str) -> Result<Option<String>> {
        if literal.contains("://") {
            return Ok(None);
        }
        let path = Path::new(literal);
        if path.is_file() {
            return self.file(path).map(Some);
        }
        if !path.is_dir() {
            return Ok(None);
        }
        let mut files = vec![];
        collect_files(path, &mut files).map_err(|e| RunError::io(path, e))?;
        files.sort();
        let mut h = Sha256::new();
        for f in &files {
            let relative = f
                .strip_prefix(path)
                .unwrap_or(f)
                .to_string_lossy()
                .to_string();
            h.update((relative.len() as u64).to_le_bytes());
            h.update(relative.as_bytes());
            h.update(self.file(f)?.as_bytes());
        }
        Ok(Some(hex::encode(&h.finalize()[..16])))
    }

    fn file(&mut self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).map_err(|e| RunError::io(path, e))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .to_string_lossy()
            .to_string();
        if let Some(e) = self.entries.get(&key)
            && e.size == meta.len()
            && e.modified_ns == modified_ns
        {
            return Ok(e.sha256.clone());
        }
        let sha256 = hash_file(path).map_err(|e| RunError::io(path, e))?;
        self.entries.insert(
            key,
            FileEntry {
                size: meta.len(),
                modified_ns,
                sha256: sha256.clone(),
            },
        );
        self.dirty = true;
        Ok(sha256)
    }
}

/// Most files an input folder may hold: fingerprinting reads each of them.
const MAX_FOLDER_FILES: usize = 100_000;

/// The files under `dir`, recursively; symbolic links to folders are not followed (no cycles).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
        if out.len() > MAX_FOLDER_FILES {
            return Err(std::io::Error::other(format!(
                "more than {MAX_FOLDER_FILES} files: name a file or a smaller folder as the input"
            )));
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn refs(sql: &str) -> References {
        let statements = DFParser::parse_sql(sql).expect("sql");
        references(&statements[0])
    }

    #[test]
    fn names_and_files_come_from_the_parsed_statement() {
        let r = refs(
            "CREATE TABLE revisions AS SELECT * FROM revise(critique(responses), \
             rounds => 2, constitution => 'data/c.toml') WHERE prompt NOT IN (SELECT p FROM Held_Out)",
        );
        for name in ["revise", "responses", "held_out"] {
            assert!(r.names.contains(name), "{name}: {r:?}");
        }
        assert!(r.literals.contains("data/c.toml"), "{r:?}");
        // Words inside strings and comments are not names.
        let r = refs("CREATE VIEW v AS SELECT 'responses' AS word FROM t -- critiques");
        assert!(
            !r.names.contains("responses") && !r.names.contains("critiques"),
            "{r:?}"
        );
        let r = refs("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION 'data/x/'");
        assert!(r.literals.contains("data/x/"), "{r:?}");
        // Literals outside table-function arguments are values, not files.
        let r = refs(
            "CREATE TABLE t AS SELECT concat(a, '.', b) AS c FROM helpful_sft('h.jsonl') WHERE d <> '/'",
        );
        assert_eq!(r.literals, BTreeSet::from(["h.jsonl".to_string()]), "{r:?}");
    }

    #[test]
    fn a_file_is_fingerprinted_by_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, "{\"prompt\": \"a\"}\n").expect("write");
        let literal = path.to_str().expect("path");
        let mut f = FileFingerprints::default();
        let first = f.of(literal).expect("ok").expect("a file");
        std::fs::write(&path, "{\"prompt\": \"a\"}\n").expect("rewrite, same content");
        assert_eq!(f.of(literal).expect("ok"), Some(first.clone()));
        std::fs::write(&path, "{\"prompt\": \"b\"}\n").expect("edit");
        assert_ne!(f.of(literal).expect("ok"), Some(first));
        assert_eq!(f.of("no/such/file.jsonl").expect("ok"), None);
        assert_eq!(f.of("s3://bucket/key").expect("ok"), None);
    }
}
