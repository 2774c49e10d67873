//! The `caiflow` command line. Library errors get their context here (anyhow).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use caiflow::CaiSession;
use caiflow::chat_template::ChatTemplate;
use caiflow::config::Config;
use caiflow::export::{ExportFormat, ExportOptions, export};
use caiflow::llm::Endpoints;
use caiflow::plan::{StatementOutcome, run_sql, substitute};
use caiflow::progress::Progress;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "caiflow",
    version,
    about = "Constitutional AI datasets as a SQL dataflow"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a plan (a SQL file) into a new run folder of the store.
    Run {
        /// The plan, e.g. plans/sl_cai.sql.
        plan: PathBuf,
        /// Endpoint configuration (default: ./caiflow.toml if present, else a local server).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder that holds runs.
        #[arg(long, default_value = "data/runs")]
        store: PathBuf,
        /// Name of the run folder (default: plan name and a timestamp).
        #[arg(long)]
        run: Option<String>,
        /// Plan variable, `name=value` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Export a run's table for a trainer (SFT: nemo-sft, trl-sft; preferences: nemo-rm, trl-dpo).
    Export {
        /// The run folder (e.g. data/runs/sl_cai-1764400000).
        run: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Table (sub-folder of the run) to export (default: sft, or preferences for nemo-rm/trl-dpo).
        #[arg(long)]
        table: Option<String>,
        /// Output folder (default: RUN/export/FORMAT).
        #[arg(long)]
        out: Option<PathBuf>,
        /// nemo-rm: file-name prefix.
        #[arg(long, default_value = "rlaif")]
        prefix: String,
        /// nemo-rm: chat template TOML (system_prefix, user_prefix, assistant_prefix,
        /// turn_suffix, eos); default NeMo's <extra_id_*> template.
        #[arg(long)]
        chat_template: Option<PathBuf>,
    },
    /// Run SQL over a run's tables (each sub-folder is a table) with caiflow's functions.
    Sql {
        /// The SQL to run.
        #[arg(short = 'e', long = "execute")]
        execute: String,
        /// A run folder whose tables to register.
        #[arg(long)]
        run: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).with_context(|| format!("loading config {}", p.display())),
        None if Path::new("caiflow.toml").is_file() => {
            Config::load(Path::new("caiflow.toml")).context("loading ./caiflow.toml")
        }
        None => Ok(Config::local_default()),
    }
}

fn session(config: Option<&Path>) -> anyhow::Result<CaiSession> {
    let config = load_config(config)?;
    let endpoints = Endpoints::from_config(&config)?;
    Ok(CaiSession::new(endpoints))
}

/// Print per-stage progress lines to stderr every few seconds while work goes on.
fn spawn_progress(progress: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let lines: Vec<String> = progress.snapshot().iter().map(|s| s.line()).collect();
            let now = lines.join("\n");
            if !now.is_empty() && now != last {
                eprintln!("{now}");
                last = now;
            }
        }
    })
}

fn print_outcome(o: &StatementOutcome) {
    let head: String = o
        .sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(70)
        .collect();
    eprintln!(
        "[{}] {head}… ({} rows, {:.1}s)",
        o.index + 1,
        o.rows,
        o.seconds
    );
    if let Some(p) = &o.preview {
        println!("{p}");
    }
}

async fn register_run_tables(session: &CaiSession, run: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = vec![];
    let entries =
        std::fs::read_dir(run).with_context(|| format!("reading run folder {}", run.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !entry.path().is_dir() || name.starts_with('.') || name == "export" {
            continue;
        }
        let location = format!("{}/", entry.path().display());
        session
            .ctx
            .register_parquet(&name, &location, Default::default())
            .await
            .with_context(|| format!("registering table {name} from {location}"))?;
        names.push(name);
    }
    Ok(names)
}

async fn cmd_run(
    plan: PathBuf,
    config: Option<PathBuf>,
    store: PathBuf,
    run: Option<String>,
    set: Vec<String>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&plan)
        .with_context(|| format!("reading plan {}", plan.display()))?;
    let stem = plan
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    let run_name = run.unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("{stem}-{secs}")
    });
    let run_dir = store.join(&run_name);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating run folder {}", run_dir.display()))?;
    let mut vars = BTreeMap::new();
    vars.insert("run".to_string(), run_dir.display().to_string());
    vars.insert("store".to_string(), store.display().to_string());
    for kv in set {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--set '{kv}': expected NAME=VALUE");
        };
        vars.insert(k.trim().to_string(), v.to_string());
    }
    let sql = substitute(&text, &vars).with_context(|| format!("plan {}", plan.display()))?;
    let session = session(config.as_deref())?;
    eprintln!(
        "caiflow: running {} into {}",
        plan.display(),
        run_dir.display()
    );
    let reporter = spawn_progress(session.progress.clone());
    let result = run_sql(&session, &sql, print_outcome).await;
    reporter.abort();
    eprintln!("summary:");
    for s in session.progress.snapshot() {
        eprintln!("  {}", s.line());
    }
    for e in session.endpoints.iter() {
        if e.counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            eprintln!("  {}", e.summary());
        }
    }
    result.with_context(|| format!("plan {} failed", plan.display()))?;
    eprintln!("caiflow: results in {}", run_dir.display());
    println!("{}", run_dir.display());
    Ok(())
}

async fn cmd_export(
    run: PathBuf,
    format: ExportFormat,
    table: Option<String>,
    out: Option<PathBuf>,
    prefix: String,
    chat_template: Option<PathBuf>,
) -> anyhow::Result<()> {
    let table = table.unwrap_or_else(|| format.default_table().to_string());
    let out = out.unwrap_or_else(|| run.join("export").join(format.name()));
    let mut options = ExportOptions {
        prefix,
        ..Default::default()
    };
    if let Some(path) = chat_template {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        options.template = toml::from_str::<ChatTemplate>(&text)
            .with_context(|| format!("chat template {}", path.display()))?;
    }
    let report = export(&run.join(&table), format, &options, &out)
        .await
        .with_context(|| format!("exporting {} of {}", table, run.display()))?;
    for (split, n) in &report.written {
        eprintln!("{split}: {n} rows");
    }
    for (reason, n) in &report.skipped {
        eprintln!("skipped {n} row(s): {reason}");
    }
    for f in &report.files {
        println!("{}", f.display());
    }
    Ok(())
}

async fn cmd_sql(
    execute: String,
    run: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let session = session(config.as_deref())?;
    if let Some(run) = &run {
        let names = register_run_tables(&session, run).await?;
        eprintln!("tables: {}", names.join(", "));
    }
    run_sql(&session, &execute, |o| {
        if let Some(p) = &o.preview {
            println!("{p}");
        } else {
            eprintln!("{} rows", o.rows);
        }
    })
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            plan,
            config,
            store,
            run,
            set,
        } => cmd_run(plan, config, store, run, set).await,
        Command::Export {
            run,
            format,
            table,
            out,
            prefix,
            chat_template,
        } => cmd_export(run, format, table, out, prefix, chat_template).await,
        Command::Sql {
            execute,
            run,
            config,
        } => cmd_sql(execute, run, config).await,
    };
    if let Err(e) = result {
        eprintln!("caiflow: error: {e:#}");
        std::process::exit(1);
    }
}
