//! One LLM request of a stage: served from the run's journal when it was answered before,
//! else sent through the stage's endpoint (its budget, scheduler and retries); every new
//! outcome is journalled, counted in progress, and described by the [`Lineage`] it returns.

use std::sync::atomic::Ordering;

use super::env::StageEnv;
use super::lineage::Lineage;
use crate::progress::StageProgress;
use caiflow_llm::{CallOutcome, ChatRequest, Completion, LlmError};

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
    // Thinking is never part of an answer, whichever way the server or the journal gave it.
    let outcome = CallOutcome {
        result: outcome.result.map(caiflow_llm::reasoning::separate),
        ..outcome
    };
    if let Ok(c) = &outcome.result {
        let asked = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        p.note_answer(asked, &c.text);
        StageProgress::add(&p.tokens, c.completion_tokens.unwrap_or(0));
        StageProgress::add(&p.reasoning_tokens, c.reasoning_tokens.unwrap_or(0));
        StageProgress::add(&p.prompt_tokens, c.prompt_tokens.unwrap_or(0));
    }
    let lineage = lineage_of(env, request, &outcome);
    // A row's failure is data: the text of the error goes into its `error` column.
    (outcome.result.map_err(|e| e.to_string()), Some(lineage))
}
