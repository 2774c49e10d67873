//! `caiflow run --dry-run`: a backend that answers every request at once, sending nothing,
//! so a plan runs through to the end and every request it would send is counted.
//!
//! The answer stands for the expected one: half of the request's `max_tokens` (the
//! documented expected completion), a filler of about that many tokens after a verdict
//! that a judge can read (`{"chosen": 1, "rejected": 2}`), so later turns, built on earlier
//! answers, have about the size they will have. Prompt tokens are exact when the wrapped
//! backend can count them (the embedded model's tokenizer), else the estimate of
//! [`crate::spend::estimate_prompt_tokens`]. An endpoint with `reasoning_tokens = N` (a
//! reasoning model) thinks N tokens more per answer, within `max_tokens`.

use std::sync::Arc;

use crate::spend::estimate_prompt_tokens;
use crate::{AttemptError, Backend, ChatRequest, Completion};

#[derive(Debug)]
pub struct DryBackend {
    /// The endpoint's real backend, asked only to count prompt tokens.
    pub inner: Arc<dyn Backend>,
    /// The endpoint's expected thinking per answer (`reasoning_tokens`), added to each
    /// answer as reasoning.
    pub reasoning_tokens: u64,
    /// The endpoint marks the shared prefix cacheable (`cache_prompt`): every turn before
    /// the last counts as read from the cache (the expected case once a prefix was seen).
    pub cache_prefix: bool,
}

/// The verdict a dry answer starts with: readable by the judge.
const VERDICT: &str = "{\"chosen\": 1, \"rejected\": 2} ";

/// The completion tokens a dry run expects of a request: half its `max_tokens`.
pub fn expected_completion_tokens(request: &ChatRequest) -> u64 {
    (u64::from(request.params.max_tokens.unwrap_or(512)) / 2).max(1)
}

/// The estimated tokens of a request's turns before the last: the prefix the next request
/// of the same conversation (or the same system prompt and few-shot turns) shares.
pub fn cached_prefix_tokens(request: &ChatRequest) -> u64 {
    match request.messages.split_last() {
        Some((_, prefix)) if !prefix.is_empty() => estimate_prompt_tokens(&ChatRequest {
            messages: prefix.to_vec(),
            params: Default::default(),
        }),
        _ => 0,
    }
}

#[async_trait::async_trait]
impl Backend for DryBackend {
    async fn prepare(&self) -> Result<(), crate::LlmError> {
        self.inner.prepare().await
    }

    async fn count_prompt_tokens(&self, request: &ChatRequest) -> Option<u64> {
        self.inner.count_prompt_tokens(request).await
    }

    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        let prompt = match self.inner.count_prompt_tokens(request).await {
            Some(n) => n,
            None => estimate_prompt_tokens(request),
        };
        let expected = expected_completion_tokens(request);
        // About a token per 4 bytes, as the estimate counts them.
        let filler = (expected as usize).saturating_sub(VERDICT.len() / 4);
        let mut text = String::with_capacity(VERDICT.len() + filler * 4);
        text.push_str(VERDICT);
        for _ in 0..filler {
            text.push_str("abc ");
        }
        // Thinking shares max_tokens with the answer, as servers count it.
        let max = u64::from(request.params.max_tokens.unwrap_or(512)).max(expected);
        let generated = expected.saturating_add(self.reasoning_tokens).min(max);
        let thinking = generated
            .saturating_sub(expected)
            .min(self.reasoning_tokens);
        Ok(Completion {
            text,
            finish_reason: Some("stop".into()),
            prompt_tokens: Some(prompt),
            completion_tokens: Some(generated),
            reasoning: (thinking > 0).then(|| "hmm ".repeat(thinking.min(1 << 16) as usize)),
            reasoning_tokens: (thinking > 0).then_some(thinking),
            cached_tokens: self
                .cache_prefix
                .then(|| cached_prefix_tokens(request))
                .filter(|n| *n > 0),
            top_logprobs: request
                .params
                .top_logprobs
                .map(|_| vec![vec![("A".to_string(), -0.4), ("B".to_string(), -1.1)]]),
        })
    }
}
