//! Anthropic's Messages API (`POST {base_url}/v1/messages`), natively: the system prompt
//! apart from the turns, `max_tokens` always sent, `stop_sequences`, `temperature` /
//! `top_p` / `top_k`, `x-api-key` and `anthropic-version` headers. Answers are content
//! blocks: `text` blocks are the answer, `thinking` blocks the reasoning (kept apart, as
//! every backend's). Usage counts input, output and the prompt cache's creation and reads.
//!
//! **Prompt caching** (`cache_prompt = true`): every CAI request repeats the same system
//! prompt and few-shot turns, and each round of a conversation repeats the round before.
//! The system prompt and the turn before the request's last one are marked
//! `cache_control: {"type": "ephemeral"}`, so a request reads the prefix the previous one
//! wrote (Anthropic caches up to four breakpoints; reads cost a tenth of input).
//!
//! Errors: 429 and 529 (overloaded) are retried with the server's `Retry-After`, as any
//! 5xx; 401/403 stop the endpoint (a bad key); other 4xx fail the request.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{AttemptError, Backend, ChatRequest, Completion, status_error, transport_error};
use crate::openai::ApiKey;

/// The API version sent when the config names none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` is required by the API; a request that sets none asks for this many.
const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug)]
pub struct AnthropicBackend {
    client: reqwest::Client,
    url: String,
    model: String,
    version: String,
    api_key: Option<ApiKey>,
    cache_prompt: bool,
    max_body: u64,
}

impl AnthropicBackend {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        model: &str,
        api_key: Option<ApiKey>,
        version: Option<&str>,
        cache_prompt: bool,
    ) -> Self {
        AnthropicBackend {
            client,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            model: model.to_string(),
            version: version.unwrap_or(DEFAULT_ANTHROPIC_VERSION).to_string(),
            api_key,
            cache_prompt,
            max_body: crate::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Read at most `bytes` of a response body (see [`crate::read_response`]).
    pub fn with_max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The request body: system messages joined into `system`, the turns with consecutive
    /// same-role turns merged (the API wants them alternating, starting with the user).
    pub fn body(&self, request: &ChatRequest) -> Value {
        let p = &request.params;
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect();
        let mut turns: Vec<(String, String)> = vec![];
        for m in request.messages.iter().filter(|m| m.role != "system") {
            let role = if m.role == "assistant" {
                "assistant"
            } else {
                "user"
            };
            match turns.last_mut() {
                Some((r, content)) if r == role => {
                    content.push_str("\n\n");
                    content.push_str(&m.content);
                }
                _ => turns.push((role.to_string(), m.content.clone())),
            }
        }
        if turns.first().is_some_and(|(r, _)| r == "assistant") {
            turns.insert(0, ("user".into(), "(conversation continues)".into()));
        }
        // The turn before the last: the end of the prefix the next request shares.
        let breakpoint = turns.len().checked_sub(2);
        let messages: Vec<Value> = turns
            .iter()
            .enumerate()
            .map(|(i, (role, content))| {
                if self.cache_prompt && Some(i) == breakpoint {
                    json!({"role": role, "content": [
                        {"type": "text", "text": content, "cache_control": {"type": "ephemeral"}}
                    ]})
                } else {
                    json!({"role": role, "content": content})
                }
            })
            .collect();
        let mut body = json!({
            "model": self.model,
            "max_tokens": p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            "messages": messages,
        });
        let obj = body.as_object_mut().expect("json! object");
        if !system.is_empty() {
            let text = system.join("\n\n");
            obj.insert(
                "system".into(),
                if self.cache_prompt {
                    json!([{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}])
                } else {
                    json!(text)
                },
            );
        }
        if let Some(t) = p.temperature {
            // Anthropic's range is [0, 1]; caiflow's stages allow up to 2.
            obj.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
        }
        if let Some(v) = p.top_p {
            obj.insert("top_p".into(), json!(v));
        }
        if let Some(v) = p.top_k {
            obj.insert("top_k".into(), json!(v));
        }
        if !p.stop.is_empty() {
            obj.insert("stop_sequences".into(), json!(p.stop));
        }
        body
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    content: Vec<Value>,
    stop_reason: Option<String>,
    usage: Option<Value>,
}

/// A count in `usage`, or None when absent or not a plausible non-negative integer.
fn count(usage: Option<&Value>, key: &str) -> Option<u64> {
    crate::plausible_tokens(key, usage?.get(key)?.as_u64())
}

/// Parse a 200 body of the Messages API.
pub fn parse_message_body(body: &str) -> Result<Completion, AttemptError> {
    let parsed: MessageResponse = serde_json::from_str(body).map_err(|e| {
        let snippet: String = body.chars().take(120).collect();
        AttemptError::retryable(format!("malformed response body ({e}): {snippet:?}"))
    })?;
    let mut text = String::new();
    let mut thinking = String::new();
    for block in &parsed.content {
        let part = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or_default();
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(part("text")),
            Some("thinking") => thinking.push_str(part("thinking")),
            _ => {}
        }
    }
    let usage = parsed.usage.as_ref();
    let input = count(usage, "input_tokens");
    let created = count(usage, "cache_creation_input_tokens").unwrap_or(0);
    let read = count(usage, "cache_read_input_tokens").unwrap_or(0);
    let completion = crate::reasoning::separate(Completion {
        text,
        reasoning: Some(thinking).filter(|t| !t.trim().is_empty()),
        finish_reason: parsed.stop_reason.map(|r| match r.as_str() {
            "max_tokens" => "length".to_string(),
            "end_turn" | "stop_sequence" => "stop".to_string(),
            _ => r,
        }),
        // Every prompt token, cached or not: what the prompt was.
        prompt_tokens: input.map(|i| i.saturating_add(created).saturating_add(read)),
        completion_tokens: count(usage, "output_tokens"),
        cached_tokens: (read > 0).then_some(read),
        ..Default::default()
    });
    if completion.text.trim().is_empty() {
        return Err(AttemptError::retryable(format!(
            "empty completion (stop_reason {})",
            completion.finish_reason.as_deref().unwrap_or("none")
        )));
    }
    Ok(completion)
}

#[async_trait::async_trait]
impl Backend for AnthropicBackend {
    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        let mut http = self
            .client
            .post(&self.url)
            .header("anthropic-version", &self.version)
            .json(&self.body(request));
        if let Some(key) = &self.api_key {
            http = http.header("x-api-key", &key.0);
        }
        let response = http.send().await.map_err(transport_error)?;
        let (status, headers, body) = crate::read_response(response, self.max_body).await?;
        if !status.is_success() {
            return Err(status_error(status, &headers, &body));
        }
        parse_message_body(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, SamplingParams};
    use proptest::prelude::*;

    fn backend(cache: bool) -> AnthropicBackend {
        AnthropicBackend::new(
            reqwest::Client::new(),
            "http://x",
            "claude",
            None,
            None,
            cache,
        )
    }

    #[test]
    fn system_apart_turns_alternating_max_tokens_always() {
        let request = ChatRequest {
            messages: vec![
                Message::new("system", "be kind"),
                Message::user("a"),
                Message::user("b"),
                Message::assistant("c"),
                Message::user("d"),
            ],
            params: SamplingParams {
                temperature: Some(1.5),
                stop: vec!["\n\nHuman:".into()],
                ..Default::default()
            },
        };
        let body = backend(false).body(&request);
        assert_eq!(body["system"], "be kind");
        assert_eq!(body["max_tokens"], 1024);
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["stop_sequences"][0], "\n\nHuman:");
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(body["messages"][0]["content"], "a\n\nb");
        let cached = backend(true).body(&request);
        assert_eq!(cached["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            cached["messages"][1]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert!(cached["messages"][2]["content"].is_string());
    }

    #[test]
    fn blocks_usage_and_stop_reasons() {
        let c = parse_message_body(
            r#"{"content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"No."}],"stop_reason":"max_tokens","usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":90}}"#,
        )
        .unwrap();
        assert_eq!(c.text, "No.");
        assert_eq!(c.reasoning.as_deref(), Some("hmm"));
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        assert_eq!(c.prompt_tokens, Some(100));
        assert_eq!(c.cached_tokens, Some(90));
        assert!(parse_message_body(r#"{"content":[]}"#).is_err());
    }

    proptest! {
        #[test]
        fn any_body_parses_or_fails_cleanly(body in "\\PC{0,300}") {
            let _ = parse_message_body(&body);
        }
    }
}
