//! `caiflow sql` without `-e`: an interactive SQL prompt over a session (a run's tables
//! registered), with line editing and history from rustyline, as datafusion-cli has.
//!
//! A statement runs when its line ends with `;` (several lines make one statement until
//! then). Backslash commands: `\d` lists the tables and views, `\d NAME` shows a table's
//! columns, `\?` helps, `\q` quits (so does Ctrl-D); Ctrl-C clears the line being typed.
//! An error is printed on one line and the prompt comes back.

use std::path::PathBuf;

use anyhow::Context;
use caiflow_engine::CaiSession;
use caiflow_run::plan::run_sql;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

const HELP: &str = "\
  SQL;          run a statement (end it with ';', it may span lines)
  \\d            list tables and views
  \\d NAME       columns of a table
  \\?            this help
  \\q            quit (or Ctrl-D)";

/// Where the history is kept: `$CAIFLOW_HISTORY`, else `~/.caiflow_history`.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("CAIFLOW_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".caiflow_history")))
}

/// The tables and views of the session's default schema, sorted.
fn table_names(session: &CaiSession) -> Vec<String> {
    let state = session.ctx.state();
    let catalog = state.config_options().catalog.default_catalog.clone();
    let schema = state.config_options().catalog.default_schema.clone();
    let mut names = session
        .ctx
        .catalog(&catalog)
        .and_then(|c| c.schema(&schema))
        .map(|s| s.table_names())
        .unwrap_or_default();
    names.sort();
    names
}

async fn describe(session: &CaiSession, name: Option<&str>) -> anyhow::Result<()> {
    match name {
        None => {
            let names = table_names(session);
            if names.is_empty() {
                println!("no tables (caiflow sql --run RUN registers a run's tables)");
            }
            for n in names {
                let columns = match session.ctx.table(n.as_str()).await {
                    Ok(df) => df.schema().fields().len(),
                    Err(_) => 0,
                };
                println!("{n:<24} {columns} columns");
            }
        }
        Some(name) => {
            let df = session
                .ctx
                .table(name)
                .await
                .with_context(|| format!("no table {name} (\\d lists them)"))?;
            for f in df.schema().fields() {
                println!("{:<28} {}", f.name(), f.data_type());
            }
        }
    }
    Ok(())
}

/// Run the prompt until `\q` or Ctrl-D.
pub async fn run(session: &CaiSession, max_rows: usize) -> anyhow::Result<()> {
    let mut editor = DefaultEditor::new().context("starting the line editor")?;
    let history = history_file();
    if let Some(h) = &history {
        // A missing history file is the first session: nothing to load.
        let _ = editor.load_history(h);
    }
    eprintln!("caiflow SQL shell: end statements with ';'; \\d lists tables, \\? helps, \\q quits");
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "caiflow> "
        } else {
            "     ..> "
        };
        let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        };
        let trimmed = line.trim();
        if pending.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            let mut words = trimmed.split_whitespace();
            match (words.next(), words.next()) {
                (Some("\\q"), _) => break,
                (Some("\\?"), _) | (Some("\\h"), _) => println!("{HELP}"),
                (Some("\\d"), name) => {
                    if let Err(e) = describe(session, name).await {
                        eprintln!("error: {e:#}");
                    }
                }
                (Some(other), _) => eprintln!("unknown command {other} (\\? lists them)"),
                (None, _) => {}
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(&line);
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut pending);
        let _ = editor.add_history_entry(sql.as_str());
        if let Err(e) = caiflow_run::inputs::register_s3_inputs(&session.ctx, &sql) {
            eprintln!("error: {e}");
            continue;
        }
        let result = run_sql(session, &sql, max_rows, |o| {
            match &o.preview {
                Some(p) => println!("{p}\n{} row(s) in {:.3}s", o.rows, o.seconds),
                None => println!("ok ({:.3}s)", o.seconds),
            }
            if let Some(w) = &o.warning {
                eprintln!("warning: {w}");
            }
        })
        .await;
        if let Err(e) = result {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
        }
    }
    if let Some(h) = &history
        && let Err(e) = editor.save_history(h)
    {
        eprintln!("caiflow: history not saved to {}: {e}", h.display());
    }
    Ok(())
}
