//! `caiflow report`: how healthy a run's data is, as `report/report.json` (the figures) and
//! `report/index.html` (the same figures with charts: one self-contained file, inline SVG,
//! nothing loaded from the network, readable without JavaScript).
//!
//! The figures come from what the run stored, so any run can be reported on, at any time:
//! the per-stage figures (requests, retries, errors by reason, journal hits, tokens,
//! latency, truncated answers) from the run's newest session record that did work
//! ([`caiflow_run::sessions`]), the data's figures from its committed tables in one
//! streaming pass each ([`figures`]): an SL-CAI table is one with `response`, `revision`,
//! `principle_id` and `round`, an RL-CAI table one with `label`, `candidates`, `chosen` and
//! `rejected`.
//!
//! It depends on the run layer (CLI → report → run → engine).

pub mod card;
pub mod config;
pub mod depth;
pub mod error;
pub mod figures;
pub mod html;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::ReportConfig;
use caiflow_engine::CaiSession;
use caiflow_engine::progress::StageStats;
use caiflow_llm::Endpoints;
use caiflow_llm::Usage;
use caiflow_run::materialize::{manifests, register_run_tables};
use caiflow_run::sessions::{RunUsage, SQL_SESSION, SessionRecord, sessions, unix_ms};
use caiflow_run::store::RunStore;

pub use error::{ReportError, Result};
use figures::{RlAccumulator, RlFigures, SlAccumulator, SlFigures};

/// Everything in report.json. The SL-CAI and RL-CAI figures' keys are top-level keys
/// (absent when the run has no such table).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run: String,
    pub generated_unix_ms: u64,
    pub caiflow_version: String,
    /// Sessions recorded for the run (each `caiflow run` of it is one).
    pub sessions: usize,
    /// When the session the stage figures come from started (null: none recorded).
    pub stages_session_unix_ms: Option<u64>,
    /// Per stage: rows, requests, sent, journal hits, retries, errors by reason, tokens,
    /// latency p50/p95, truncated answers, rows dropped, records skipped.
    pub stages: Vec<StageStats>,
    /// Per LLM stage: the share of its answers cut off by `max_tokens`.
    pub truncated_share: BTreeMap<String, f64>,
    /// What the run's requests used over all its sessions (journal hits are free): stage →
    /// endpoint → {requests, prompt_tokens, completion_tokens, cost}.
    pub usage: BTreeMap<String, BTreeMap<String, Usage>>,
    /// The same, all stages and endpoints together.
    pub usage_total: Usage,
    /// Committed table → rows.
    pub tables: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub sl: Option<SlFigures>,
    #[serde(flatten)]
    pub rl: Option<RlFigures>,
    /// Of the stages' completion tokens (in the stage figures' session), a reasoning
    /// model's thinking.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// The judge audit per principle (`judge(…, audit => true)`; see [`depth`]).
    #[serde(default)]
    pub judge_audit: Option<depth::JudgeAudit>,
    /// Reasoning leakage (`critique(…, target => 'reasoning')`; see [`depth`]).
    #[serde(default)]
    pub reasoning_leakage: Option<depth::ReasoningLeakage>,
}

/// Where a report was written.
#[derive(Clone, Debug)]
pub struct Written {
    pub html: PathBuf,
    pub json: PathBuf,
}

/// The stage figures to show: the newest plan session (not a `caiflow sql` one) in which a
/// stage had rows.
fn working_session(all: &[SessionRecord]) -> Option<&SessionRecord> {
    all.iter()
        .rev()
        .find(|s| s.end != SQL_SESSION && s.stages.iter().any(|st| st.rows > 0 || st.requests > 0))
}

/// Compute the report of the run in `store`.
pub async fn build(store: &RunStore, config: &ReportConfig) -> Result<Report> {
    let all = sessions(store).await?;
    let session = working_session(&all);
    let stages = session.map(|s| s.stages.clone()).unwrap_or_default();
    let truncated_share = stages
        .iter()
        .filter(|s| s.llm && s.requests > 0)
        .map(|s| (s.name.clone(), s.truncated as f64 / s.requests as f64))
        .collect();
    let tables = manifests(store)
        .await?
        .into_iter()
        .filter(|m| m.damaged.is_none())
        .map(|m| (m.table, m.rows))
        .collect();

    let cai = CaiSession::new(Endpoints::default());
    let mut sl = None;
    let mut rl = None;
    let mut judge_audit = None;
    let mut reasoning_leakage = None;
    for name in register_run_tables(&cai, store).await? {
        let df = cai.ctx.table(name.as_str()).await?;
        if judge_audit.is_none() {
            judge_audit = depth::judge_audit(&cai, &name, &df).await?;
        }
        if reasoning_leakage.is_none() {
            reasoning_leakage = depth::reasoning_leakage(&cai, &name, &df).await?;
        }
        let has = |cols: &[&str]| {
            cols.iter()
                .all(|c| df.schema().has_column_with_unqualified_name(c))
        };
        if sl.is_none() && has(&["response", "revision", "principle_id", "round", "error"]) {
            let mut acc = SlAccumulator::new(&name, config);
            let mut stream = df
                .select_columns(&["round", "principle_id", "response", "revision", "error"])?
                .execute_stream()
                .await?;
            while let Some(batch) = stream.next().await {
                acc.add(&batch?)?;
            }
            sl = Some(acc.finish());
        } else if rl.is_none()
            && has(&[
                "label",
                "candidates",
                "chosen",
                "rejected",
                "candidate_order",
            ])
        {
            let mut acc = RlAccumulator::new(&name);
            let mut stream = df
                .select_columns(&[
                    "label",
                    "candidates",
                    "candidate_order",
                    "chosen",
                    "rejected",
                    "chosen_idx",
                    "rejected_idx",
                    "chosen_prob",
                ])?
                .execute_stream()
                .await?;
            while let Some(batch) = stream.next().await {
                acc.add(&batch?)?;
            }
            rl = Some(acc.finish());
        }
    }
    let usage = RunUsage::of(&all);
    Ok(Report {
        usage_total: usage.total(),
        usage: usage.stages,
        run: store.display.clone(),
        generated_unix_ms: unix_ms(),
        caiflow_version: env!("CARGO_PKG_VERSION").to_string(),
        sessions: all.len(),
        stages_session_unix_ms: session.map(|s| s.started_unix_ms),
        reasoning_tokens: stages.iter().map(|s| s.reasoning_tokens).sum(),
        stages,
        truncated_share,
        tables,
        sl,
        rl,
        judge_audit,
        reasoning_leakage,
    })
}

/// Write `report` as `index.html` and `report.json` into `out` (created if needed).
pub fn write(report: &Report, out: &Path) -> Result<Written> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| ReportError::Write { path, cause }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?).map_err(io(&json))?;
    let html = out.join("index.html");
    std::fs::write(&html, html::render(report)?).map_err(io(&html))?;
    Ok(Written { html, json })
}

/// Write `report` into the run itself (`report/index.html`, `report/report.json`), on any
/// store; returns where the HTML file is.
pub async fn save(report: &Report, store: &RunStore) -> Result<String> {
    store
        .put(
            "report/report.json",
            serde_json::to_vec_pretty(report)?.into(),
        )
        .await?;
    store
        .put(
            "report/index.html",
            html::render(report)?.into_bytes().into(),
        )
        .await?;
    Ok(match store.local_path("report/index.html") {
        Some(path) => path.display().to_string(),
        None => store.location("report/index.html"),
    })
}
