//! What every LLM-calling stage shares: its options (endpoint, sampling, seed, few-shot),
//! request building, and the lineage it records for each request.

use std::sync::Arc;

use datafusion::common::plan_datafusion_err;
use datafusion::error::Result;

use super::args::StageArgs;
use super::cells::Cell;
use super::exec::StageEnv;
pub use super::lineage::{Lineage, lineage_field};
use super::row::InputRow;
use crate::constitution::FewShot;
use crate::progress::StageProgress;
use std::sync::atomic::Ordering;

use caiflow_llm::{CallOutcome, ChatRequest, Completion, LlmError, Message, SamplingParams};

/// Options common to respond, critique and revise.
#[derive(Clone, Debug)]
pub struct LlmOptions {
    pub endpoint: String,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: u32,
    pub seed: u64,
    pub system: Option<String>,
    pub few_shot: Arc<FewShot>,
    /// Ask once more, with this `max_tokens`, when an answer is cut off by `max_tokens`.
    pub retry_truncated: Option<u32>,
}

/// Per-stage defaults of [`LlmOptions`].
#[derive(Clone, Debug)]
pub struct LlmDefaults {
    pub endpoint: &'static str,
    pub few_shot: &'static str,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: u32,
}

impl Default for LlmDefaults {
    fn default() -> Self {
        LlmDefaults {
            endpoint: "policy",
            few_shot: "default",
            temperature: 0.7,
            top_p: None,
            top_k: None,
            max_tokens: 512,
        }
    }
}

impl LlmOptions {
    pub fn parse(args: &StageArgs) -> Result<Self> {
        Self::parse_with(args, &LlmDefaults::default())
    }

    /// Parse with stage-specific defaults (sample and judge differ from the SL stages).
    pub fn parse_with(args: &StageArgs, defaults: &LlmDefaults) -> Result<Self> {
        let few_shot = FewShot::resolve(&args.str_or("few_shot", defaults.few_shot))
            .map_err(|e| plan_datafusion_err!("{}: {e}", args.function()))?;
        let options = LlmOptions {
            endpoint: args.str_or("endpoint", defaults.endpoint),
            temperature: args.parsed_or("temperature", defaults.temperature)?,
            top_p: args.parsed("top_p")?.or(defaults.top_p),
            top_k: args.parsed("top_k")?.or(defaults.top_k),
            max_tokens: args.parsed_or("max_tokens", defaults.max_tokens)?,
            seed: args.parsed_or("seed", 42)?,
            system: args.str("system").map(str::to_string),
            few_shot: Arc::new(few_shot),
            retry_truncated: args.parsed("retry_truncated")?,
        };
        options.validate(args)?;
        Ok(options)
    }

    /// Every sampling option in its range (checked when the plan is made, before anything
    /// is sent).
    fn validate(&self, args: &StageArgs) -> Result<()> {
        args.check(
            "temperature",
            self.temperature,
            valid_temperature(self.temperature),
            "[0, 2]",
        )?;
        if let Some(p) = self.top_p {
            args.check("top_p", p, p > 0.0 && p <= 1.0, "(0, 1]")?;
        }
        if let Some(k) = self.top_k {
            args.check("top_k", k, k >= 1, ">= 1")?;
        }
        args.check("max_tokens", self.max_tokens, self.max_tokens >= 1, ">= 1")?;
        if let Some(n) = self.retry_truncated {
            args.check(
                "retry_truncated",
                n,
                n > self.max_tokens,
                &format!("> max_tokens ({})", self.max_tokens),
            )?;
        }
        Ok(())
    }

    /// System prompt and few-shot turns, then the row's own turns.
    pub fn messages(&self, turns: Vec<Message>) -> Vec<Message> {
        let mut messages = Vec::with_capacity(turns.len() + 1 + self.few_shot.samples.len() * 6);
        if let Some(s) = &self.system {
            messages.push(Message::new("system", s));
        }
        messages.extend(self.few_shot.messages());
        messages.extend(turns);
        messages
    }

    /// A request whose sampling seed is derived from the stage seed and the row's keys, so
    /// each row samples differently but reproducibly.
    pub fn request(&self, turns: Vec<Message>, key: &[&[u8]]) -> ChatRequest {
        let mut parts: Vec<&[u8]> = vec![b"sampling"];
        let seed = self.seed.to_le_bytes();
        parts.push(&seed);
        parts.extend_from_slice(key);
        let b = crate::keys::seed_bytes(&parts);
        // 31 bits: some servers keep the seed in a signed 32-bit integer.
        let row_seed = (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 1) as u64;
        ChatRequest {
            messages: self.messages(turns),
            params: SamplingParams {
                temperature: Some(self.temperature),
                top_p: self.top_p,
                top_k: self.top_k,
                max_tokens: Some(self.max_tokens),
                seed: Some(row_seed),
                stop: vec![],
                top_logprobs: None,
                response_format: None,
            },
        }
    }
}

/// The OpenAI `response_format` asking for JSON that follows `schema` (a JSON schema's
/// text; `name` names it), for `function`'s `json_schema` option.
pub fn json_response_format(function: &str, name: &str, schema: &str) -> Result<serde_json::Value> {
    let schema: serde_json::Value = serde_json::from_str(schema)
        .map_err(|e| plan_datafusion_err!("{function}: json_schema is not JSON: {e}"))?;
    Ok(serde_json::json!({
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema}
    }))
}

/// Whether a sampling temperature is in the range every server takes, [0, 2].
pub fn valid_temperature(t: f64) -> bool {
    (0.0..=2.0).contains(&t)
}

/// The row's conversation: the `conversation` column when the input has one (multi-turn
/// red-team transcripts), otherwise the single user turn `prompt`.
pub fn base_turns(row: &InputRow) -> Option<Vec<Message>> {
    if let Some(turns) = row.messages("conversation").filter(|t| !t.is_empty()) {
        return Some(turns);
    }
    row.str("prompt").map(|p| vec![Message::user(p)])
}

/// The lineage of one request and its outcome.
fn lineage_of(env: &StageEnv, request: &ChatRequest, outcome: &CallOutcome) -> Lineage {
    let p = &request.params;
    let completion = outcome.result.as_ref().ok();
    let endpoint = env.endpoint.as_ref();
    Lineage {
        request_hash: Some(outcome.request_hash.to_string()),
        model: endpoint.map(|e| e.model.clone()),
        endpoint: endpoint.map(|e| e.name.clone()),
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        max_tokens: p.max_tokens,
        seed: p.seed,
        attempts: Some(outcome.attempts),
        latency_ms: Some(outcome.latency_ms),
        prompt_tokens: completion.and_then(|c| c.prompt_tokens),
        completion_tokens: completion.and_then(|c| c.completion_tokens),
        finish_reason: completion.and_then(|c| c.finish_reason.clone()),
        worker: Some(env.worker.to_string()),
    }
}

/// Send a request through the stage's endpoint; returns the text or the error, plus lineage.
pub async fn call(
    env: &StageEnv,
    request: &ChatRequest,
) -> (Result<String, String>, Option<Lineage>) {
    let (result, lineage) = complete(env, request).await;
    (result.map(|c| c.text), lineage)
}

/// Send a request, or serve it from the run's journal when it was completed before (then
/// `attempts` is 0 in the lineage). Every new outcome is journalled; failures are journalled
/// as failures and never served. An answer cut off by `max_tokens` is asked once more with
/// the stage's `retry_truncated` tokens, when it has that option.
pub async fn complete(
    env: &StageEnv,
    request: &ChatRequest,
) -> (Result<Completion, String>, Option<Lineage>) {
    let (result, lineage) = complete_once(env, request).await;
    let cut_off = matches!(&result, Ok(c) if c.finish_reason.as_deref() == Some("length"));
    let (result, lineage) = match env.retry_truncated {
        Some(tokens) if cut_off => {
            StageProgress::add(&env.progress.truncated_retried, 1);
            let mut again = request.clone();
            again.params.max_tokens = Some(tokens);
            complete_once(env, &again).await
        }
        _ => (result, lineage),
    };
    if matches!(&result, Ok(c) if c.finish_reason.as_deref() == Some("length")) {
        StageProgress::add(&env.progress.truncated, 1);
    }
    (result, lineage)
}

async fn complete_once(
    env: &StageEnv,
    request: &ChatRequest,
) -> (Result<Completion, String>, Option<Lineage>) {
    let Some(endpoint) = env.endpoint.as_ref() else {
        return (Err("stage has no endpoint".into()), None);
    };
    // The one hash of this request: the journal's key, the endpoint's and the lineage's.
    let hash = endpoint.request_hash(request);
    let journalled = match env.journal.as_ref() {
        Some(j) => j.0.lookup(&hash).await.map(|c| CallOutcome {
            request_hash: hash.clone(),
            result: Ok(c),
            attempts: 0,
            latency_ms: 0,
            usage: Default::default(),
        }),
        None => None,
    };
    let p = &env.progress;
    StageProgress::add(&p.requests, 1);
    let outcome = match journalled {
        Some(o) => {
            StageProgress::add(&p.journal_hits, 1);
            o
        }
        None => {
            let o = endpoint
                .call_with_priority(request, hash, env.priority)
                .await;
            match &o.result {
                // Not sent: nothing to journal (a re-run sends it).
                Err(LlmError::Budget(_)) => env.budget_refused.store(true, Ordering::Relaxed),
                Err(LlmError::Interrupted) => {}
                _ => {
                    if let Some(j) = &env.journal {
                        j.0.record(&o.request_hash, &o.result);
                    }
                    StageProgress::add(
                        &p.max_completion_tokens,
                        u64::from(request.params.max_tokens.unwrap_or(0)),
                    );
                }
            }
            StageProgress::add(&p.attempts, o.attempts as u64);
            if o.attempts > 0 {
                p.latency(o.latency_ms);
                p.spend(&endpoint.name, &o.usage);
            }
            o
        }
    };
    if let Ok(c) = &outcome.result {
        StageProgress::add(&p.tokens, c.completion_tokens.unwrap_or(0));
        StageProgress::add(&p.prompt_tokens, c.prompt_tokens.unwrap_or(0));
    }
    let lineage = lineage_of(env, request, &outcome);
    // A row's failure is data: the text of the error goes into its `error` column.
    (outcome.result.map_err(|e| e.to_string()), Some(lineage))
}

pub fn text(value: Option<String>) -> Cell {
    Cell::Str(value)
}

/// A null lineage cell (no request was made for the row).
pub fn null_lineage() -> Cell {
    Cell::Lineage(None)
}

/// Count an output row's error in the stage's progress.
pub fn count_error(env: &StageEnv, error: &Option<String>) {
    if let Some(e) = error {
        env.progress.error(e);
    }
}

/// Why a row was skipped: an upstream stage failed (its error is carried) or a needed
/// input cell is null.
pub fn upstream_error(row: &InputRow, missing: &str) -> String {
    match row.str("error") {
        Some(e) => e.to_string(),
        None => format!("input column '{missing}' is null"),
    }
}
