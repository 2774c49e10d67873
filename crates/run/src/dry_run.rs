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
use crate::materialize::RunOptions;
use crate::store::RunStore;

/// What a dry run found, per LLM stage, and the endpoints' prices.
#[derive(Debug)]
pub struct DryRun {
    pub stages: Vec<StageStats>,
    /// Endpoint → (price, whether its prompt tokens are exact).
    pub endpoints: BTreeMap<String, (Option<Price>, bool)>,
    /// Endpoint → its online price, for those with a price (a batch endpoint's `price` is
    /// the batch price): every plan is priced both ways.
    pub online: BTreeMap<String, Price>,
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
    let online: BTreeMap<String, Price> = endpoints
        .iter()
        .filter_map(|e| Some((e.name.clone(), e.online_price.or(e.price)?)))
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
        online,
    })
}

/// A request count `n`, as the range `n-m` when a judge may add up to `reasks` re-asks.
fn count_range(n: u64, reasks: u64) -> String {
    match reasks {
        0 => n.to_string(),
        r => format!("{n}-{}", n + r),
    }
}

/// What an endpoint's (or all) lines add up to.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    /// Of the requests to send.
    usage: Usage,
    /// Upper bound on their completion tokens.
    upper: u64,
    /// Requests served from the journal.
    free: u64,
    /// Re-asks a judge may add.
    reasks: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.usage.add(&other.usage);
        self.upper += other.upper;
        self.free += other.free;
        self.reasks += other.reasks;
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
        let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
        for s in &self.stages {
            let requests = count_range(s.requests, s.possible_reasks);
            // A stage's upper bound on completion tokens is shared out by requests sent.
            let upper_per_request = s.max_completion_tokens as f64 / s.sent.max(1) as f64;
            if s.usage.is_empty() {
                out.push_str(&format!(
                    "{:<18} rows {:>7}  requests {:>9}  free {:>7} (from the journal)\n",
                    s.name, s.rows, requests, s.journal_hits
                ));
            }
            for (i, (endpoint, u)) in s.usage.iter().enumerate() {
                // The stage's journal hits and re-asks are counted with its first endpoint.
                let line = Totals {
                    usage: *u,
                    upper: (upper_per_request * u.requests as f64).round() as u64,
                    free: if i == 0 { s.journal_hits } else { 0 },
                    reasks: if i == 0 { s.possible_reasks } else { 0 },
                };
                totals.entry(endpoint.clone()).or_default().add(&line);
                out.push_str(&format!(
                    "{:<18} rows {:>7}  requests {:>9}  free {:>7}  endpoint {endpoint}  {}\n",
                    s.name,
                    s.rows,
                    requests,
                    line.free,
                    self.figures(endpoint, u, line.upper)
                ));
            }
        }
        let mut all = Totals::default();
        for (endpoint, t) in &totals {
            out.push_str(&format!(
                "endpoint {endpoint}: requests {}  free {}  {}\n",
                count_range(t.usage.requests + t.free, t.reasks),
                t.free,
                self.figures(endpoint, &t.usage, t.upper)
            ));
            all.add(t);
        }
        let cost = |c: f64| format!("${c:.4}");
        let priced = totals.keys().all(|e| self.price(e).is_some());
        let upper_cost: f64 = totals
            .iter()
            .map(|(e, t)| {
                self.price(e)
                    .map_or(0.0, |p| p.cost(t.usage.prompt_tokens, t.upper))
            })
            .sum();
        out.push_str(&format!(
            "total: requests to send {}  free {}  prompt tokens {}  completion tokens <= {}, expected {}{}\n",
            count_range(all.usage.requests, all.reasks),
            all.free,
            all.usage.prompt_tokens,
            all.upper,
            all.usage.completion_tokens,
            if priced && !totals.is_empty() {
                format!(
                    "  cost <= {}, expected {}",
                    cost(upper_cost),
                    cost(all.usage.cost)
                )
            } else {
                String::new()
            }
        ));
        if priced && !totals.is_empty() {
            let (online, batch) = self.both_ways(&totals);
            out.push_str(&format!(
                "expected cost online {}, through the batch APIs {} (saves {})\n",
                cost(online),
                cost(batch),
                cost(online - batch)
            ));
        }
        out
    }

    /// The expected cost at online prices and at batch prices (each endpoint's discount),
    /// prompt-cache reads priced alike.
    fn both_ways(&self, totals: &BTreeMap<String, Totals>) -> (f64, f64) {
        let mut online = 0.0;
        let mut batch = 0.0;
        for (endpoint, t) in totals {
            if let Some(p) = self.online.get(endpoint) {
                let u = &t.usage;
                online += p.cost_cached(u.prompt_tokens, u.cached_tokens, u.completion_tokens);
                batch +=
                    p.batched()
                        .cost_cached(u.prompt_tokens, u.cached_tokens, u.completion_tokens);
            }
        }
        (online, batch)
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
        if u.reasoning_tokens > 0 {
            f.push_str(&format!(" (reasoning {})", u.reasoning_tokens));
        }
        if u.cached_tokens > 0 {
            f.push_str(&format!(
                " ({} prompt tokens from the cache)",
                u.cached_tokens
            ));
        }
        if u.batched_requests > 0 {
            f.push_str("  batched");
        }
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
