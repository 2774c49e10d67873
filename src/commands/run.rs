//! `caiflow run PLAN`: name the run, read the configuration, and run the plan into the run
//! with progress, budgets, Ctrl-C handling and a summary (or price it, `--dry-run`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use caiflow_cluster::client::RunLocation;
use caiflow_llm::{CancellationToken, Endpoints};
use caiflow_run::lock::RunLock;
use caiflow_run::materialize::{RunOptions, TableOutcome};
use caiflow_run::naming::{default_run_name, fresh_run_name, resume_command};
use caiflow_run::plan::substitute;
use caiflow_run::saved;
use caiflow_run::sessions::{RunUsage, SessionRecord, charge_budgets, session_end, spawn_recorder};
use caiflow_run::store::{RunStore, shared_location};
use caiflow_run::{PlanRun, RunEnd};

use super::report::write_report;
use super::{Exit, STOP_GRACE};
use crate::cli::RunArgs;
use crate::config;
use crate::ui::{interrupted, print_outcome, print_summary, spawn_progress, without_wrappers};

/// `caiflow run PLAN`.
pub async fn run(args: RunArgs) -> anyhow::Result<Exit> {
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
            let config_file = config::config_file(args.config.as_deref());
            let derived = default_run_name(&stem, &text, &vars, config_file.as_deref())?;
            if args.new {
                fresh_run_name(&derived)
            } else {
                derived
            }
        }
    };
    let resume = resume_command(&args.resume_words(&run_name));
    let mut config = config::load(args.config.as_deref())?;
    if let Some(rate) = args.max_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            bail!("--max-error-rate {rate}: expected a share between 0 and 1");
        }
        for e in config.llm.endpoints.values_mut() {
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
        let result = dry_run(&sql, &config.llm, run_store, options).await;
        for folder in created {
            // Only if still empty: nothing else is ever removed.
            let _ = std::fs::remove_dir(folder);
        }
        return result.map(|()| Exit::Success);
    }
    let endpoints = caiflow_engine::endpoints(&config.llm, stop.clone())?;
    endpoints.batches().set_detach(args.detach);
    run_store.check_writable().await?;
    let lock = RunLock::acquire(&run_store, "run", stop.clone()).await?;
    let before = charge_budgets(&endpoints, &run_store, budget)
        .await
        .context("reading the run's sessions")?;
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
            config: config.llm.clone(),
            location: RunLocation {
                store: shared_location(&args.store)?,
                run: run_name.clone(),
            },
        }),
        None => None,
    };
    let ui = args.ui.then_some(LiveUi {
        port: args.port,
        budget,
    });
    let exit = execute_run(
        run_store.clone(),
        endpoints,
        &sql,
        options,
        &resume,
        cluster,
        before,
        lock,
        ui,
    )
    .await
    .with_context(|| format!("plan {} failed", plan.display()))?;
    if exit != Exit::Success {
        return Ok(exit);
    }
    eprintln!("caiflow: results in {}", run_store.display);
    if args.report {
        let report_config = config::load_report(args.config.as_deref())?;
        let html = write_report(&run_store, &report_config, None).await?;
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
    Ok(Exit::Success)
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

/// A run on a cluster: the scheduler, the endpoints that travel with the plan, and where
/// the executors find the run (its journal).
pub struct ClusterRun {
    pub url: String,
    pub config: caiflow_llm::config::Config,
    pub location: RunLocation,
}

/// `--ui`: the live page's port and the run's budget it shows.
pub struct LiveUi {
    pub port: u16,
    pub budget: caiflow_llm::Budget,
}

/// Serve the live page of `run` (see `caiflow_view::live`) until `stop` is cancelled.
async fn serve_live(
    ui: &LiveUi,
    store: &RunStore,
    run: &PlanRun,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", ui.port))
        .await
        .with_context(|| {
            format!(
                "--ui: listening on 127.0.0.1:{} (choose another with --port)",
                ui.port
            )
        })?;
    eprintln!(
        "caiflow: live page at http://{}/live",
        listener.local_addr()?
    );
    run.session.progress.keep_answers();
    let live = std::sync::Arc::new(caiflow_view::live::Live {
        run: store.display.clone(),
        progress: run.session.progress.clone(),
        budget: ui.budget,
        started: std::time::Instant::now(),
    });
    tokio::spawn(async move {
        if let Err(e) = caiflow_view::live::serve(live, listener, stop).await {
            eprintln!("caiflow: warning: the live page stopped: {e}");
        }
    });
    Ok(())
}

/// Run `sql` into `store` with progress, the summary and Ctrl-C handling: the first Ctrl-C
/// stops sending and gives requests in flight a grace period, a second stops at once.
/// `resume` is the command that continues the run, printed whenever it stops early.
#[allow(clippy::too_many_arguments)]
pub async fn execute_run(
    store: RunStore,
    endpoints: Endpoints,
    sql: &str,
    options: RunOptions,
    resume: &str,
    cluster: Option<ClusterRun>,
    before: RunUsage,
    lock: RunLock,
    ui: Option<LiveUi>,
) -> anyhow::Result<Exit> {
    let stop = options.stop.clone();
    let started_unix_ms = caiflow_run::sessions::unix_ms();
    let on_cluster = cluster.is_some();
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
    let ui_stop = CancellationToken::new();
    if let Some(ui) = &ui {
        serve_live(ui, &store, &run, ui_stop.clone()).await?;
    }
    let _ui_guard = ui_stop.drop_guard();
    let reporter = spawn_progress(run.session.progress.clone());
    let recorder = spawn_recorder(
        store.clone(),
        run.session.progress.clone(),
        started_unix_ms,
        on_cluster,
    );
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
    let record = SessionRecord::now(
        started_unix_ms,
        session_end(&end, budget_stop.is_some()),
        on_cluster,
        run.session.progress.stats(),
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
        return Ok(Exit::BudgetStopped);
    }
    match end {
        RunEnd::Interrupted if run.session.endpoints.batches().detached() => {
            let batches = run.session.endpoints.batches_in_flight();
            let requests: usize = batches.iter().map(|b| b.requests.len()).sum();
            eprintln!(
                "caiflow: detached with {} batch(es) in flight ({requests} requests); completed requests are kept",
                batches.len()
            );
            for b in &batches {
                eprintln!(
                    "  endpoint {}: {} batch {}  {} requests  {}",
                    b.endpoint,
                    b.provider,
                    b.id,
                    b.requests.len(),
                    b.status
                );
            }
            eprintln!("caiflow: to collect them and send the next wave: {resume}");
            return Ok(Exit::Success);
        }
        RunEnd::Interrupted => {
            eprintln!("caiflow: interrupted; completed requests are kept. To resume: {resume}");
            return Ok(Exit::Interrupted);
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
            return Ok(Exit::Failed);
        }
        RunEnd::Finished => {}
    }
    for (table, outcome) in &tables {
        match outcome {
            TableOutcome::Reused => eprintln!("  table {table}: reused"),
            TableOutcome::Computed { rows } => eprintln!("  table {table}: {rows} rows"),
        }
    }
    Ok(Exit::Success)
}
