//! What requests cost and how far a run may go: prices, budgets, and the [`Ledger`] that
//! reserves a request's worst case before it is sent.
//!
//! A request is admitted only if every ledger it is charged to (the run's, and its
//! endpoint's own) can take its worst case on top of what is spent and what is reserved by
//! requests in flight: prompt tokens (estimated, see [`estimate_prompt_tokens`]) plus its
//! `max_tokens`. When the answer arrives the reservation is replaced by what the server says
//! it used. So a budget is never passed by more than the estimate's error, and the first
//! request refused leaves every request in flight to finish.

use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::ChatRequest;

/// Prices of an endpoint, in US dollars per million tokens (`price = { … }` in
/// caiflow.toml).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Input tokens read from the provider's prompt cache (default: the input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
    /// The share taken off every price when requests go through the provider's batch API
    /// (default 0.5: both OpenAI and Anthropic sell batched tokens at half price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_discount: Option<f64>,
}

impl Price {
    /// The price of batched requests: every rate less the batch discount.
    pub fn batched(&self) -> Price {
        let keep = 1.0 - self.batch_discount.unwrap_or(0.5).clamp(0.0, 1.0);
        Price {
            input_per_mtok: self.input_per_mtok * keep,
            output_per_mtok: self.output_per_mtok * keep,
            cached_input_per_mtok: self.cached_input_per_mtok.map(|p| p * keep),
            batch_discount: self.batch_discount,
        }
    }

    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        self.cost_cached(prompt_tokens, 0, completion_tokens)
    }

    /// The cost when `cached` of the prompt tokens were read from the prompt cache.
    pub fn cost_cached(&self, prompt_tokens: u64, cached: u64, completion_tokens: u64) -> f64 {
        let cached = cached.min(prompt_tokens);
        let cached_price = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        ((prompt_tokens - cached) as f64 * self.input_per_mtok
            + cached as f64 * cached_price
            + completion_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// Limits on what a run (or one endpoint in it) may spend, over all its sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Prompt + completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// US dollars, from the endpoints' prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// Requests sent (journal hits are free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        self.max_tokens.is_none() && self.max_cost.is_none() && self.max_requests.is_none()
    }

    /// A value that cannot be a limit, named as `scope` names the budget.
    pub fn validate(&self, scope: &str) -> Result<(), String> {
        if self.max_tokens == Some(0) || self.max_requests == Some(0) {
            return Err(format!(
                "{scope}: max_tokens and max_requests must be at least 1"
            ));
        }
        if let Some(c) = self.max_cost
            && !(c > 0.0 && c.is_finite())
        {
            return Err(format!("{scope}: max_cost = {c} must be a positive amount"));
        }
        Ok(())
    }
}

/// What requests used: sent requests, their tokens and cost. Journal hits are not usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `completion_tokens`, how many were a reasoning model's thinking (billed as output).
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Of `prompt_tokens`, how many were read from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
    pub cost: f64,
    /// Of the requests, how many went through a provider's batch API.
    #[serde(default)]
    pub batched_requests: u64,
    /// What those would have cost more online (US dollars): the batch discount earned.
    #[serde(default)]
    pub batch_saved: f64,
}

impl<'a> std::iter::Sum<&'a Usage> for Usage {
    fn sum<I: Iterator<Item = &'a Usage>>(iter: I) -> Usage {
        let mut total = Usage::default();
        for u in iter {
            total.add(u);
        }
        total
    }
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    pub fn add(&mut self, other: &Usage) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cost += other.cost;
        self.batched_requests = self.batched_requests.saturating_add(other.batched_requests);
        self.batch_saved += other.batch_saved;
    }

    fn sub(&mut self, other: &Usage) {
        self.requests = self.requests.saturating_sub(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_sub(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_sub(other.completion_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_sub(other.reasoning_tokens);
        self.cached_tokens = self.cached_tokens.saturating_sub(other.cached_tokens);
        self.cost = (self.cost - other.cost).max(0.0);
    }
}

/// The documented estimate of a request's prompt tokens when no tokenizer is at hand: a
/// token per 4 bytes of each message (rounded up) plus 4 per message for the chat
/// template's markers (OpenAI's rule of thumb for English text).
pub fn estimate_prompt_tokens(request: &ChatRequest) -> u64 {
    request
        .messages
        .iter()
        .map(|m| (m.content.len() as u64).div_ceil(4) + 4)
        .sum()
}

#[derive(Debug, Default)]
struct Books {
    /// Spent by earlier sessions and by this one.
    spent: Usage,
    /// Worst cases of requests in flight.
    reserved: Usage,
}

/// One budget's books: what is spent and what requests in flight may still spend.
#[derive(Debug)]
pub struct Ledger {
    /// Whose budget: "run" (the command line's `--max-…`) or "endpoints.NAME.budget".
    scope: String,
    budget: Budget,
    books: Mutex<Books>,
    /// The limit the first refused request would have passed: no request is admitted any
    /// more.
    exhausted: OnceLock<Limit>,
}

impl Ledger {
    /// A ledger for `budget`; `spent` is what earlier sessions of the run used.
    pub fn new(scope: &str, budget: Budget, spent: Usage) -> Arc<Ledger> {
        Arc::new(Ledger {
            scope: scope.to_string(),
            budget,
            books: Mutex::new(Books {
                spent,
                reserved: Usage::default(),
            }),
            exhausted: OnceLock::new(),
        })
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the budget stopped admitting requests.
    pub fn exhausted(&self) -> bool {
        self.exhausted.get().is_some()
    }

    /// Requests admitted and not answered yet.
    pub fn in_flight(&self) -> u64 {
        self.books().reserved.requests
    }

    pub fn spent(&self) -> Usage {
        self.books().spent
    }

    /// How a limit is written: `--max-tokens` for the run, else the config key.
    fn limit_name(&self, what: &str) -> String {
        if self.scope == "run" {
            format!("--max-{what}")
        } else {
            format!("{}.max_{what}", self.scope)
        }
    }

    /// Which limit `worst` would pass on top of what is spent and reserved, if any.
    fn refusal(&self, books: &Books, worst: &Usage) -> Option<Limit> {
        let b = &self.budget;
        let (spent, reserved) = (&books.spent, &books.reserved);
        let over = |limit: Option<f64>, spent: f64, reserved: f64, next: f64| {
            limit.is_some_and(|l| spent + reserved + next > l)
        };
        if over(
            b.max_requests.map(|v| v as f64),
            spent.requests as f64,
            reserved.requests as f64,
            worst.requests as f64,
        ) {
            Some(Limit::Requests)
        } else if over(
            b.max_tokens.map(|v| v as f64),
            spent.tokens() as f64,
            reserved.tokens() as f64,
            worst.tokens() as f64,
        ) {
            Some(Limit::Tokens)
        } else if over(b.max_cost, spent.cost, reserved.cost, worst.cost) {
            Some(Limit::Cost)
        } else {
            None
        }
    }

    /// Which budget stopped admitting requests and what is spent now (when it has).
    pub fn stop_message(&self) -> Option<String> {
        let limit = *self.exhausted.get()?;
        let spent = self.spent();
        let b = &self.budget;
        Some(match limit {
            Limit::Requests => format!(
                "request budget reached ({} {}): {} requests sent in this run",
                self.limit_name("requests"),
                b.max_requests.unwrap_or(0),
                spent.requests
            ),
            Limit::Tokens => format!(
                "token budget reached ({} {}): {} tokens spent in this run ({} prompt + {} completion)",
                self.limit_name("tokens"),
                b.max_tokens.unwrap_or(0),
                spent.tokens(),
                spent.prompt_tokens,
                spent.completion_tokens
            ),
            Limit::Cost => format!(
                "cost budget reached ({} {}): ${:.4} spent in this run",
                self.limit_name("cost"),
                b.max_cost.unwrap_or(0.0),
                spent.cost
            ),
        })
    }
}

/// The limit of a budget that stopped a run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Limit {
    Requests,
    Tokens,
    Cost,
}

/// A request's worst case held in its ledgers until [`Reservation::settle`] (or drop, which
/// releases it as if nothing was spent).
#[derive(Debug)]
pub struct Reservation {
    ledgers: Vec<Arc<Ledger>>,
    worst: Usage,
    open: bool,
}

/// Reserve `worst` in every ledger, or none: the first that cannot take it is marked
/// exhausted (no request is admitted to it any more) and its stop message returned.
pub fn reserve(ledgers: &[Arc<Ledger>], worst: Usage) -> Result<Reservation, String> {
    for (i, ledger) in ledgers.iter().enumerate() {
        let mut books = ledger.books();
        let refused = match ledger.exhausted.get() {
            Some(limit) => Some(*limit),
            None => ledger.refusal(&books, &worst),
        };
        if let Some(limit) = refused {
            drop(books);
            release(&ledgers[..i], &worst);
            ledger.exhausted.get_or_init(|| limit);
            return Err(ledger.stop_message().unwrap_or_default());
        }
        books.reserved.add(&worst);
    }
    Ok(Reservation {
        ledgers: ledgers.to_vec(),
        worst,
        open: true,
    })
}

fn release(ledgers: &[Arc<Ledger>], worst: &Usage) {
    for l in ledgers {
        l.books().reserved.sub(worst);
    }
}

impl Reservation {
    /// Replace the worst case by what was used.
    pub fn settle(mut self, used: &Usage) {
        for l in &self.ledgers {
            let mut books = l.books();
            books.reserved.sub(&self.worst);
            books.spent.add(used);
        }
        self.open = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            release(&self.ledgers, &self.worst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u64) -> Usage {
        Usage {
            requests: 1,
            prompt_tokens: n,
            ..Default::default()
        }
    }

    #[test]
    fn reservations_hold_the_worst_case_until_settled() {
        let budget = Budget {
            max_tokens: Some(100),
            ..Default::default()
        };
        let run = Ledger::new("run", budget, tokens(10));
        let a = reserve(std::slice::from_ref(&run), tokens(50)).expect("fits");
        // 10 spent + 50 reserved + 50 > 100: refused, and the ledger stays closed.
        let refused = reserve(std::slice::from_ref(&run), tokens(50)).expect_err("over");
        assert!(
            refused.contains("token budget reached (--max-tokens 100)"),
            "{refused}"
        );
        assert!(run.exhausted());
        assert_eq!(run.in_flight(), 1);
        a.settle(&tokens(20));
        assert_eq!(run.spent().prompt_tokens, 30);
        assert_eq!(run.in_flight(), 0);
        assert!(reserve(std::slice::from_ref(&run), tokens(1)).is_err());
    }

    #[test]
    fn a_refusal_in_one_ledger_releases_the_others() {
        let run = Ledger::new("run", Budget::default(), Usage::default());
        let endpoint = Ledger::new(
            "endpoints.judge.budget",
            Budget {
                max_requests: Some(1),
                ..Default::default()
            },
            Usage::default(),
        );
        let both = [run.clone(), endpoint.clone()];
        let first = reserve(&both, tokens(5)).expect("first");
        let second = reserve(&both, tokens(5)).expect_err("second request");
        assert!(
            second.contains("endpoints.judge.budget.max_requests 1"),
            "{second}"
        );
        assert_eq!(run.in_flight(), 1);
        drop(first);
        assert_eq!((run.in_flight(), run.spent().requests), (0, 0));
    }

    #[test]
    fn prices_and_estimates() {
        let p = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 4.0,
            cached_input_per_mtok: Some(0.1),
            batch_discount: None,
        };
        assert!((p.cost(1_000_000, 500_000) - 3.0).abs() < 1e-9);
        // Batched: half of everything by default.
        assert!((p.batched().cost(1_000_000, 500_000) - 1.5).abs() < 1e-9);
        // 900k of the million prompt tokens read from the cache at a tenth of the price.
        assert!((p.cost_cached(1_000_000, 900_000, 500_000) - 2.19).abs() < 1e-9);
        let r = ChatRequest {
            messages: vec![crate::Message::user("12345678")],
            params: Default::default(),
        };
        assert_eq!(estimate_prompt_tokens(&r), 6);
    }
}
