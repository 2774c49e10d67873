//! [`LlmOptions`]: what every LLM-calling stage takes (endpoint, sampling, seed, system
//! prompt, few-shot turns, `retry_truncated`), their checks, and the request they make of a
//! row's conversation.

use std::sync::Arc;

use datafusion::common::plan_datafusion_err;
use datafusion::error::Result;

use super::args::StageArgs;
use super::row::InputRow;
use crate::constitution::FewShot;
use caiflow_llm::{ChatRequest, Message, SamplingParams};

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
    /// The SL few-shot examples (`few_shot` option); `None`: the stage reads `few_shot`
    /// itself, in its own layout (the judge's worked comparisons), and sends no SL turns.
    pub few_shot: Option<&'static str>,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: u32,
}

impl Default for LlmDefaults {
    fn default() -> Self {
        LlmDefaults {
            endpoint: "policy",
            few_shot: Some("default"),
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
        let few_shot = match defaults.few_shot {
            Some(default) => FewShot::resolve(&args.str_or("few_shot", default))
                .map_err(|e| plan_datafusion_err!("{}: {e}", args.function()))?,
            None => FewShot::resolve("none")
                .map_err(|e| plan_datafusion_err!("{}: {e}", args.function()))?,
        };
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
