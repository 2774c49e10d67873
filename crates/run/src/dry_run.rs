//! `caiflow run --dry-run`: what a plan will send and cost, before it sends anything.
//!
//! The plan runs for real, through the same stages, with every endpoint answering at once
//! without sending ([`caiflow_llm::dry::DryBackend`]) and its tables written to a temporary
//! store that is deleted afterwards. So request counts are those of the real run (rows ×
//! rounds, rows × temperatures, …), first-turn requests are rendered exactly, and requests
//! the run's journal already holds are served from it, as the real run would, and shown as
//! free. Later turns are built on stand-in answers of the expected length; a judge that
//! could ask again shows its requests as a range.

use std::collections::BTreeMap;

use caiflow_engine::progress::StageStats;
use caiflow_llm::{Endpoints, Price, Usage};

use crate::error::{Result, RunError};
use crate::execute::{PlanRun, RunEnd};
use crate::run::RunOptions;
use crate::store::RunStore;

/// What a dry run found, per LLM stage, and the endpoints' prices.
#[derive(Debug)]
pub struct DryRun {
    pub stages: Vec<StageStats>,
    /// Endpoint → (price, whether its prompt tokens are exact).
    pub endpoints: BTreeMap<String, (Option<Price>, bool)>,
}

/// Run `sql` dry: `endpoints` must be dry ones ([`Endpoints::dry_run`]); `exact` names the
/// endpoints whose prompt tokens are counted by a tokenizer; `journal_of` is the run whose
/// journal serves requests it holds (if it exists).
pub async fn dry_run(
    sql: &str,
    endpoints: Endpoints,
    exact: &[String],
    journal_of: Option<RunStore>,
    options: RunOptions,
) -> Result<DryRun> {
    let scratch = tempfile::tempdir()
        .map_err(|e| RunError::Store(format!("a temporary folder for the dry run: {e}")))?;
    let store = RunStore::open(&scratch.path().display().to_string(), "dry-run")?;
    let prices: BTreeMap<String, (Option<Price>, bool)> = endpoints
        .iter()
        .map(|e| (e.name.clone(), (e.price, exact.contains(&e.name))))
        .collect();
    let run = PlanRun::dry(store, endpoints, journal_of).await?;
    let (end, _) = run
        .execute(
            sql,
            options,
            std::time::Duration::ZERO,
            caiflow_llm::CancellationToken::new(),
            |_| {},
        )
        .await;
    match end {
        RunEnd::Finished => {}
        RunEnd::Failed(e) => return Err(e),
        RunEnd::Interrupted => return Err(RunError::Store("the dry run was interrupted".into())),
    }
    let stages = run
        .session
        .progress
        .stats()
        .into_iter()
        .filter(|s| s.llm)
        .collect();
    Ok(DryRun {
        stages,
        endpoints: prices,
    })
}

/// A request count, with the re-asks a judge may add as a range.
fn requests(s: &StageStats) -> String {
    match s.possible_reasks {
        0 => s.requests.to_string(),
        n => format!("{}-{}", s.requests, s.requests + n),
    }
}

impl DryRun {
    fn price(&self, endpoint: &str) -> Option<Price> {
        self.endpoints.get(endpoint).and_then(|(p, _)| *p)
    }

    /// The report: a line per LLM stage (and endpoint it calls), then totals per endpoint.
    /// Tokens and cost are those of the requests to send; journalled ones are free.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut totals: BTreeMap<String, (Usage, u64, u64, u64)> = BTreeMap::new();
        for s in &self.stages {
            // A stage's upper bound on completion tokens is shared out by requests sent.
            let upper_per_request = s.max_completion_tokens as f64 / s.sent.max(1) as f64;
            let endpoints: Vec<(&String, &Usage)> = s.usage.iter().collect();
            if endpoints.is_empty() {
                out.push_str(&format!(
                    "{:<18} rows {:>7}  requests {:>9}  free {:>7} (from the journal)\n",
                    s.name,
                    s.rows,
                    requests(s),
                    s.journal_hits
                ));
            }
            for (i, (endpoint, u)) in endpoints.into_iter().enumerate() {
                let upper = (upper_per_request * u.requests as f64).round() as u64;
                let (hits, reasks) = if i == 0 {
                    (s.journal_hits, s.possible_reasks)
                } else {
                    (0, 0)
                };
                let t = totals.entry(endpoint.clone()).or_default();
                t.0.add(u);
                t.1 += upper;
                t.2 += hits;
                t.3 += reasks;
                out.push_str(&format!(
                    "{:<18} rows {:>7}  requests {:>9}  free {:>7}  endpoint {endpoint}  {}\n",
                    s.name,
                    s.rows,
                    requests(s),
                    hits,
                    self.figures(endpoint, u, upper)
                ));
            }
        }
        let mut all = (Usage::default(), 0, 0, 0);
        for (endpoint, (u, upper, hits, reasks)) in &totals {
            let range = match reasks {
                0 => String::new(),
                n => format!("-{}", u.requests + hits + n),
            };
            out.push_str(&format!(
                "endpoint {endpoint}: requests {}{range}  free {hits}  {}\n",
                u.requests + hits,
                self.figures(endpoint, u, *upper)
            ));
            all.0.add(u);
            all.1 += upper;
            all.2 += hits;
            all.3 += reasks;
        }
        let cost = |c: f64| format!("${c:.4}");
        let priced = totals.keys().all(|e| self.price(e).is_some());
        let upper_cost: f64 = totals
            .iter()
            .map(|(e, (u, upper, _, _))| {
                self.price(e)
                    .map_or(0.0, |p| p.cost(u.prompt_tokens, *upper))
            })
            .sum();
        out.push_str(&format!(
            "total: requests to send {}{}  free {}  prompt tokens {}  completion tokens <= {}, expected {}{}\n",
            all.0.requests,
            match all.3 {
                0 => String::new(),
                n => format!("-{}", all.0.requests + n),
            },
            all.2,
            all.0.prompt_tokens,
            all.1,
            all.0.completion_tokens,
            if priced && !totals.is_empty() {
                format!("  cost <= {}, expected {}", cost(upper_cost), cost(all.0.cost))
            } else {
                String::new()
            }
        ));
        out
    }

    /// `prompt tokens N (exact|estimate)  completion tokens <= U, expected E  cost …`.
    fn figures(&self, endpoint: &str, u: &Usage, upper: u64) -> String {
        let exact = self.endpoints.get(endpoint).is_some_and(|(_, e)| *e);
        let mut f = format!(
            "prompt tokens {} ({})  completion tokens <= {upper}, expected {}",
            u.prompt_tokens,
            if exact { "exact" } else { "estimate" },
            u.completion_tokens
        );
        if let Some(p) = self.price(endpoint) {
            f.push_str(&format!(
                "  cost <= ${:.4}, expected ${:.4}",
                p.cost(u.prompt_tokens, upper),
                u.cost
            ));
        }
        f
    }
}
