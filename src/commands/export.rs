//! `caiflow export RUN --format F`: a run's table as a trainer's files, with a dataset card.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use caiflow_engine::CaiSession;
use caiflow_engine::export::{ExportFormat, ExportOptions};
use caiflow_llm::Endpoints;
use caiflow_llm::chat_template::ChatTemplate;
use caiflow_run::materialize::register_run_tables;
use caiflow_run::store::RunStore;

use super::Exit;
use crate::config;

/// `caiflow export RUN --format F`.
pub async fn export(
    run: String,
    format: ExportFormat,
    table: Option<String>,
    out: Option<PathBuf>,
    mut options: ExportOptions,
    chat_template: Option<PathBuf>,
) -> anyhow::Result<Exit> {
    let store = RunStore::open_spec(&run)?;
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
    // SL-CAI runs have no `preferences`: their preference pairs are `sl_pairs`.
    let table = table.unwrap_or_else(|| {
        let default = format.default_table();
        if default == "preferences"
            && !names.iter().any(|n| n == default)
            && names.iter().any(|n| n == "sl_pairs")
        {
            "sl_pairs".to_string()
        } else {
            default.to_string()
        }
    });
    if !names.contains(&table) {
        bail!(
            "run {} has no committed table '{table}' (it has: {})",
            store.display,
            names.join(", ")
        );
    }
    let df = session.ctx.table(table.as_str()).await?;
    let report = caiflow_engine::export::export(df, format, &options, &out)
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
    let health = caiflow_report::build(&store, &config::load_report(None)?)
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
    Ok(Exit::Success)
}
