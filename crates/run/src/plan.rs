//! Plans: SQL files with `${name}` / `${name:-default}` variables, run statement by statement.

use std::collections::BTreeMap;
use std::time::Instant;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;

use crate::error::{Result, RunError};
use caiflow_engine::CaiSession;

/// Defaults a plan declares for itself, one per line: `-- @var name = value`.
pub fn declared_defaults(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("-- @var "))
        .filter_map(|d| d.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Replace `${name}` and `${name:-default}`, with values from `vars`, then the plan's
/// `-- @var` defaults, then the inline default. A variable with none of these is an error
/// naming it (and the line), never an empty string.
///
/// Values are substituted as typed literals, never as SQL text, so no value can end a
/// statement or add one (`--set "limit=1; COPY …"`):
/// - inside a single-quoted string (`'${prompts}'`) a value is string content: its quotes are
///   doubled, so a path holding `'` works;
/// - inside a double-quoted identifier its `"` are doubled;
/// - outside quotes it must be a number, `true`/`false`/`null`, or a plain identifier
///   (letters, digits, `_`); anything else is an error naming the variable;
/// - inside a `--` comment, line breaks become spaces.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut merged = declared_defaults(text);
    merged.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    // A declared default may name other variables (`-- @var revise_max_tokens = ${max_tokens}`):
    // resolved as raw text here; quoting applies where the result is used.
    let snapshot = merged.clone();
    for value in merged.values_mut() {
        if value.contains("${") {
            *value = expand(value, &snapshot, |_, v, _| Ok(v.to_string()))?;
        }
    }
    expand(text, &merged, quote_for)
}

/// Where in SQL text a `${…}` sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SqlContext {
    Code,
    SingleQuoted,
    DoubleQuoted,
    Comment,
}

/// The SQL context at the end of `sql` (a prefix of a plan): tracks quotes and `--` comments.
fn context_after(sql: &str, mut state: SqlContext) -> SqlContext {
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        state = match (state, c) {
            (SqlContext::Code, '\'') => SqlContext::SingleQuoted,
            (SqlContext::Code, '"') => SqlContext::DoubleQuoted,
            (SqlContext::Code, '-') if chars.peek() == Some(&'-') => {
                chars.next();
                SqlContext::Comment
            }
            (SqlContext::SingleQuoted, '\'') | (SqlContext::DoubleQuoted, '"') => SqlContext::Code,
            (SqlContext::Comment, '\n') => SqlContext::Code,
            (s, _) => s,
        };
    }
    state
}

/// A value outside quotes: a number, a boolean, NULL or a plain identifier.
fn is_bare_literal(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() {
        return false;
    }
    let number = v.strip_prefix('-').unwrap_or(v);
    let is_number = number.parse::<f64>().is_ok_and(f64::is_finite)
        && number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    let is_identifier = v
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_number || is_identifier
}

/// `value` made safe for `context` (see [`substitute`]).
fn quote_for(name: &str, value: &str, context: SqlContext) -> Result<String> {
    Ok(match context {
        SqlContext::SingleQuoted => value.replace('\'', "''"),
        SqlContext::DoubleQuoted => value.replace('"', "\"\""),
        SqlContext::Comment => value.replace(['\n', '\r'], " "),
        SqlContext::Code if is_bare_literal(value) => value.trim().to_string(),
        SqlContext::Code => {
            let shown: String = value.chars().take(60).collect();
            return Err(RunError::Plan(format!(
                "variable '{name}' is used outside quotes, so its value must be a number, true/false or a plain name; got {shown:?}: change the --set value (or quote the variable in the plan: '${{{name}}}')"
            )));
        }
    })
}

fn expand(
    text: &str,
    vars: &BTreeMap<String, String>,
    quote: impl Fn(&str, &str, SqlContext) -> Result<String>,
) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut context = SqlContext::Code;
    while let Some(start) = rest.find("${") {
        let before = &rest[..start];
        context = context_after(before, context);
        out.push_str(before);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            let near: String = rest[start..].chars().take(40).collect();
            return Err(RunError::Plan(format!(
                "unclosed '${{' near: {near}: close it with '}}'"
            )));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n.trim(), Some(d)),
            None => (inner.trim(), None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(RunError::Plan(format!(
                "invalid variable name '${{{inner}}}': names are letters, digits and '_'"
            )));
        }
        match vars.get(name).map(String::as_str).or(default) {
            Some(v) => out.push_str(&quote(name, v, context)?),
            None => {
                let line = text[..text.len() - rest.len() + start]
                    .lines()
                    .count()
                    .max(1);
                return Err(RunError::Plan(format!(
                    "variable '{name}' (line {line}) has no value: pass --set {name}=… or write ${{{name}:-default}}"
                )));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The 1-based line where each top-level statement starts (semicolons inside quotes and
/// comments do not count), so errors can point into the plan file.
pub fn statement_lines(sql: &str) -> Vec<usize> {
    let mut starts = vec![];
    let mut line = 1;
    let mut at_start = true;
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        line += 1;
                        break;
                    }
                }
                continue;
            }
            ';' => {
                at_start = true;
                continue;
            }
            _ => {}
        }
        if at_start && !c.is_whitespace() {
            starts.push(line);
            at_start = false;
        }
    }
    starts
}

/// What a finished statement reports.
#[derive(Debug)]
pub struct StatementOutcome {
    pub index: usize,
    pub sql: String,
    pub rows: usize,
    pub seconds: f64,
    /// A pretty-printed preview for queries that return rows (first rows only).
    pub preview: Option<String>,
    /// `llm()` calls of the statement that failed and returned NULL, when some did.
    pub warning: Option<String>,
}

/// Where a statement is, for error messages: its plan line when the statement count agrees
/// with the parser's, else its number.
pub fn place_of(lines: &[usize], statements: usize, index: usize) -> String {
    match lines.get(index) {
        Some(line) if lines.len() == statements => format!("line {line} (statement {})", index + 1),
        _ => format!("statement {}", index + 1),
    }
}

/// A statement's text, for fingerprints, records and messages. DataFusion's text form of
/// `CREATE EXTERNAL TABLE` leaves out its columns, `PARTITIONED BY` and `OPTIONS`; they are
/// added, so that changing one (say `OPTIONS ('version' '3')`) changes the fingerprint.
pub fn statement_text(statement: &DFStatement) -> String {
    let text = statement.to_string();
    let DFStatement::CreateExternalTable(t) = statement else {
        return text;
    };
    let mut extra = vec![];
    if !t.columns.is_empty() {
        let columns: Vec<String> = t.columns.iter().map(|c| c.to_string()).collect();
        extra.push(format!("COLUMNS ({})", columns.join(", ")));
    }
    if !t.table_partition_cols.is_empty() {
        extra.push(format!(
            "PARTITIONED BY ({})",
            t.table_partition_cols.join(", ")
        ));
    }
    if !t.options.is_empty() {
        let options: Vec<String> = t
            .options
            .iter()
            .map(|(k, v)| format!("'{k}' {v}"))
            .collect();
        extra.push(format!("OPTIONS ({})", options.join(", ")));
    }
    if extra.is_empty() {
        text
    } else {
        format!("{text} {}", extra.join(" "))
    }
}

/// Run one statement, streaming its result; queries (`SELECT`, `WITH`) keep a pretty-printed
/// preview of their first `max_rows` rows. Returns the row count and the preview.
///
/// The parsed statement is planned as it is: its text form is not parsed again (DataFusion's
/// text form of `CREATE EXTERNAL TABLE` leaves out `OPTIONS` and columns).
pub async fn execute_with_preview(
    session: &CaiSession,
    statement: &DFStatement,
    max_rows: usize,
) -> Result<(usize, Option<String>)> {
    let plan = session
        .ctx
        .state()
        .statement_to_plan(statement.clone())
        .await?;
    let df = session.ctx.execute_logical_plan(plan).await?;
    let is_query =
        matches!(statement, DFStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_)));
    let mut stream = df.execute_stream().await?;
    let (mut rows, mut preview, mut kept) = (0, vec![], 0);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows();
        if kept < max_rows && batch.num_rows() > 0 {
            let take = (max_rows - kept).min(batch.num_rows());
            preview.push(batch.slice(0, take));
            kept += take;
        }
    }
    let mut shown = if is_query && !preview.is_empty() {
        Some(pretty_format_batches(&preview)?.to_string())
    } else {
        None
    };
    if let Some(p) = shown.as_mut().filter(|_| rows > kept) {
        p.push_str(&format!("\n(first {kept} of {rows} rows)"));
    }
    Ok((rows, shown))
}

/// Run every statement of `sql` in order (no run store: `caiflow sql`). Query results are
/// streamed; up to `max_rows` of each are kept for display.
pub async fn run_sql(
    session: &CaiSession,
    sql: &str,
    max_rows: usize,
    mut on_done: impl FnMut(&StatementOutcome),
) -> Result<Vec<StatementOutcome>> {
    let statements =
        DFParser::parse_sql(sql).map_err(|e| RunError::Plan(format!("SQL syntax: {e}")))?;
    let lines = statement_lines(sql);
    let count = statements.len();
    let mut outcomes = vec![];
    for (index, statement) in statements.into_iter().enumerate() {
        let text = statement_text(&statement);
        let started = Instant::now();
        let (rows, preview) = execute_with_preview(session, &statement, max_rows)
            .await
            .map_err(|e| RunError::Plan(format!("{}: {e}", place_of(&lines, count, index))))?;
        let outcome = StatementOutcome {
            index,
            sql: text,
            rows,
            seconds: started.elapsed().as_secs_f64(),
            preview,
            warning: session.failed_llm_calls(),
        };
        on_done(&outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    #[test]
    fn substitutes_values_and_defaults() {
        let mut v = BTreeMap::new();
        v.insert("a".to_string(), "1".to_string());
        assert_eq!(substitute("x ${a} ${b:-2} ${a:-9}", &v).unwrap(), "x 1 2 1");
        let chained = "-- @var m = ${n}\n-- @var n = 5\nSELECT ${m}";
        assert!(substitute(chained, &v).unwrap().ends_with("SELECT 5"));
        let declared = "-- @var n = 5\nSELECT ${n}, ${a}";
        assert!(substitute(declared, &v).unwrap().ends_with("SELECT 5, 1"));
        v.insert("n".into(), "7".into());
        assert!(substitute(declared, &v).unwrap().ends_with("SELECT 7, 1"));
    }

    #[test]
    fn statement_lines_skip_quotes_and_comments() {
        let sql = "-- a; comment\nSELECT 'x;y';\n\nSELECT 2; SELECT\n3";
        assert_eq!(statement_lines(sql), vec![2, 4, 4]);
    }

    #[test]
    fn missing_variable_is_named() {
        let e = substitute("SELECT 1;\nSELECT ${nope}", &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("'nope'") && e.contains("line 2"), "{e}");
        assert!(substitute("${unclosed", &BTreeMap::new()).is_err());
        // An unclosed `${` before multibyte text is an error, not a panic.
        let multibyte = format!("SELECT ${{a{}", "é".repeat(30));
        assert!(substitute(&multibyte, &BTreeMap::new()).is_err());
    }

    #[test]
    fn values_are_literals_not_sql() {
        let mut v = BTreeMap::new();
        v.insert(
            "limit".to_string(),
            "1; COPY (SELECT 1) TO '/tmp/x'".to_string(),
        );
        let e = substitute("SELECT 1 LIMIT ${limit}", &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'limit'") && e.contains("outside quotes"), "{e}");
        v.insert("p".to_string(), "it's/a b.jsonl".to_string());
        assert_eq!(
            substitute("SELECT * FROM f('${p}')", &v).unwrap(),
            "SELECT * FROM f('it''s/a b.jsonl')"
        );
        v.insert("p".to_string(), "x'); DROP TABLE t; --".to_string());
        let sql = substitute("SELECT * FROM f('${p}')", &v).unwrap();
        assert_eq!(DFParser::parse_sql(&sql).unwrap().len(), 1, "{sql}");
        for ok in ["12", "-0.5", "1e3", "true", "NULL", "col_a"] {
            v.insert("x".to_string(), ok.to_string());
            assert_eq!(
                substitute("SELECT ${x}", &v).unwrap(),
                format!("SELECT {ok}")
            );
        }
        v.insert("x".to_string(), "a\nb".to_string());
        assert_eq!(
            substitute("-- ${x}\nSELECT 1", &v).unwrap(),
            "-- a b\nSELECT 1"
        );
    }

    proptest::proptest! {
        /// Whatever a `--set` value holds, substituting it never panics, and inside quotes
        /// it never adds a statement.
        #[test]
        fn any_value_stays_one_literal(value in "\\PC*", template in "[ -~]{0,40}") {
            let mut v = BTreeMap::new();
            v.insert("p".to_string(), value);
            if let Ok(sql) = substitute("SELECT * FROM t WHERE a = '${p}'", &v) {
                proptest::prop_assert_eq!(DFParser::parse_sql(&sql).map(|s| s.len()).unwrap_or(1), 1);
            }
            let _ = substitute(&template, &v);
            let _ = substitute(&format!("{template}${{p"), &v);
        }
    }
}
