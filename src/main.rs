//! The `caiflow` command line: parse ([`cli`]), dispatch to a command ([`commands`]), and
//! turn how it ended into the exit code. Everything else is in the library crates; what the
//! terminal shows is in [`ui`], the configuration file's sections in [`config`].

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod cli;
mod commands;
mod config;
mod shell;
mod ui;

use caiflow_engine::export::ExportOptions;
use cli::{Cli, Command, ModelCommand};
use commands::Exit;

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

fn main() -> ExitCode {
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
        Ok(runtime) => runtime.block_on(run_main()).into(),
        Err(e) => {
            eprintln!("caiflow: error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_main() -> Exit {
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
        Command::Run(args) => commands::run::run(args).await,
        Command::Repair { run, table, config } => {
            commands::repair::repair(run, table, config).await
        }
        Command::Inspect { run } => commands::inspect::inspect(run).await,
        Command::View {
            run,
            port,
            bind,
            config,
        } => commands::view::view(run, &bind, port, config).await,
        Command::Report { run, out, config } => commands::report::report(run, out, config).await,
        Command::Vacuum {
            run,
            keep,
            retain_hours,
        } => commands::vacuum::vacuum(run, keep, retain_hours).await,
        Command::Export {
            run,
            format,
            table,
            out,
            prefix,
            chat_template,
            keep_truncated,
        } => {
            let options = ExportOptions {
                prefix,
                keep_truncated,
                ..Default::default()
            };
            commands::export::export(run, format, table, out, options, chat_template).await
        }
        Command::Sql {
            execute,
            run,
            config,
            max_rows,
            cluster,
        } => commands::sql::sql(execute, run, config, max_rows, cluster).await,
        Command::Cluster { action } => commands::cluster::cluster(action).await,
        Command::Model {
            action:
                ModelCommand::Pull {
                    source,
                    dir,
                    sha256,
                },
        } => commands::model::pull(source, dir, sha256).await,
    };
    result.unwrap_or_else(|e| {
        let message = caiflow_cluster::client::readable_error(&format!("{e:#}"));
        eprintln!("caiflow: error: {}", ui::without_wrappers(&message));
        Exit::Failed
    })
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
