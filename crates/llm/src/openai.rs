//! OpenAI-compatible servers: OpenAI, NVIDIA NIM and the NGC API, vLLM, TGI, llama.cpp's
//! server, Ollama. Chat completions (`POST {base_url}/chat/completions`) by default; the
//! legacy completions API (`POST {base_url}/completions`) for base models, where the turns
//! are joined into one prompt.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{AttemptError, Backend, ChatRequest, Completion, status_error, transport_error};

/// Which OpenAI API an endpoint speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiApi {
    #[default]
    Chat,
    Completions,
}

#[derive(Debug)]
pub struct OpenAiBackend {
    client: reqwest::Client,
    api: OpenAiApi,
    url: String,
    model: String,
    /// Read from the environment once, at start; never logged (Debug prints only whether set).
    api_key: Option<ApiKey>,
    /// The largest response body read, in bytes.
    max_body: u64,
}

/// A secret that does not print.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl OpenAiBackend {
    pub fn new(
        client: reqwest::Client,
        api: OpenAiApi,
        base_url: &str,
        model: &str,
        api_key: Option<ApiKey>,
    ) -> Self {
        let path = match api {
            OpenAiApi::Chat => "chat/completions",
            OpenAiApi::Completions => "completions",
        };
        OpenAiBackend {
            client,
            api,
            url: format!("{}/{path}", base_url.trim_end_matches('/')),
            model: model.to_string(),
            api_key,
            max_body: crate::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Read at most `bytes` of a response body (see [`crate::read_response`]).
    pub fn with_max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The request body, as sent online and inside a batch line.
    pub fn body(&self, request: &ChatRequest) -> Value {
        let p = &request.params;
        let mut body = match self.api {
            OpenAiApi::Chat => json!({ "model": self.model, "messages": request.messages }),
            OpenAiApi::Completions => {
                json!({ "model": self.model, "prompt": request.joined_text() })
            }
        };
        let obj = body.as_object_mut().expect("json! object");
        if let Some(t) = p.temperature {
            obj.insert("temperature".into(), json!(t));
        }
        if let Some(v) = p.top_p {
            obj.insert("top_p".into(), json!(v));
        }
        // top_k is an extension (vLLM, llama.cpp, NIM); OpenAI itself rejects it, so it is
        // only sent when a stage asks for it.
        if let Some(v) = p.top_k {
            obj.insert("top_k".into(), json!(v));
        }
        if let Some(v) = p.max_tokens {
            obj.insert("max_tokens".into(), json!(v));
        }
        if let Some(v) = p.seed {
            obj.insert("seed".into(), json!(v));
        }
        if !p.stop.is_empty() {
            obj.insert("stop".into(), json!(p.stop));
        }
        if let Some(format) = &p.response_format {
            obj.insert("response_format".into(), format.clone());
        }
        if let Some(k) = p.top_logprobs {
            match self.api {
                OpenAiApi::Chat => {
                    obj.insert("logprobs".into(), json!(true));
                    obj.insert("top_logprobs".into(), json!(k));
                }
                OpenAiApi::Completions => {
                    obj.insert("logprobs".into(), json!(k));
                }
            }
        }
        body
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    /// The completions API's text.
    text: Option<String>,
    finish_reason: Option<String>,
    logprobs: Option<Value>,
}

/// Top log-probabilities per generated token, from either shape servers use:
/// `{"content": [{"top_logprobs": [{"token", "logprob"}]}]}` (chat, llama.cpp) or the legacy
/// completions `{"top_logprobs": [{"token": logprob}]}`.
fn parse_top_logprobs(v: &Value) -> Option<Vec<Vec<(String, f64)>>> {
    if let Some(content) = v.get("content").and_then(Value::as_array) {
        return Some(
            content
                .iter()
                .map(|pos| {
                    pos.get("top_logprobs")
                        .and_then(Value::as_array)
                        .map(|alts| {
                            alts.iter()
                                .filter_map(|a| {
                                    Some((
                                        a.get("token")?.as_str()?.to_string(),
                                        a.get("logprob")?.as_f64()?,
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect(),
        );
    }
    let legacy = v.get("top_logprobs")?.as_array()?;
    Some(
        legacy
            .iter()
            .map(|pos| {
                pos.as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(t, l)| Some((t.clone(), l.as_f64()?)))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect(),
    )
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
    /// vLLM, SGLang, DeepSeek, llama.cpp (`--reasoning-format deepseek`).
    reasoning_content: Option<String>,
    /// OpenRouter, newer vLLM.
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default, deserialize_with = "lenient_count")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_count")]
    completion_tokens: Option<u64>,
    /// `{"reasoning_tokens": n, …}` (OpenAI, vLLM); any other shape is no count.
    completion_tokens_details: Option<Value>,
    /// `{"cached_tokens": n, …}` (OpenAI's automatic prompt caching, vLLM).
    prompt_tokens_details: Option<Value>,
}

/// A token count as servers send it: a count that is not a non-negative integer (a float, a
/// negative, a string, a number beyond u64) is unknown rather than a failed answer.
fn lenient_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(d)?.as_u64())
}

/// Parse a 200 body. A body that is not the expected JSON, or that holds no text, is a
/// retryable failure: servers under load do send truncated or empty answers.
pub fn parse_chat_body(body: &str) -> Result<Completion, AttemptError> {
    let parsed: ChatResponse = serde_json::from_str(body).map_err(|e| {
        let snippet: String = body.chars().take(120).collect();
        AttemptError::retryable(format!("malformed response body ({e}): {snippet:?}"))
    })?;
    let choice = parsed
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| AttemptError::retryable("response has no choices"))?;
    let top_logprobs = choice.logprobs.as_ref().and_then(parse_top_logprobs);
    let (content, reasoning) = match choice.message {
        Some(m) => (m.content, m.reasoning_content.or(m.reasoning)),
        None => (None, None),
    };
    let completion = crate::reasoning::separate(Completion {
        text: content.or(choice.text).unwrap_or_default(),
        reasoning,
        reasoning_tokens: crate::plausible_tokens(
            "reasoning tokens",
            parsed
                .usage
                .as_ref()
                .and_then(|u| u.completion_tokens_details.as_ref())
                .and_then(|d| d.get("reasoning_tokens"))
                .and_then(Value::as_u64),
        ),
        cached_tokens: crate::plausible_tokens(
            "cached tokens",
            parsed
                .usage
                .as_ref()
                .and_then(|u| u.prompt_tokens_details.as_ref())
                .and_then(|d| d.get("cached_tokens"))
                .and_then(Value::as_u64),
        )
        .filter(|n| *n > 0),
        finish_reason: choice.finish_reason,
        prompt_tokens: crate::plausible_tokens(
            "prompt tokens",
            parsed.usage.as_ref().and_then(|u| u.prompt_tokens),
        ),
        completion_tokens: crate::plausible_tokens(
            "completion tokens",
            parsed.usage.as_ref().and_then(|u| u.completion_tokens),
        ),
        top_logprobs,
    });
    if completion.text.trim().is_empty() {
        let finish = completion.finish_reason.as_deref().unwrap_or("none");
        return Err(AttemptError::retryable(match &completion.reasoning {
            Some(r) => format!(
                "empty answer after {} bytes of reasoning (finish_reason {finish}): raise max_tokens so the model can finish thinking",
                r.len()
            ),
            None => format!("empty completion (finish_reason {finish})"),
        }));
    }
    Ok(completion)
}

#[async_trait::async_trait]
impl Backend for OpenAiBackend {
    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        let mut http = self.client.post(&self.url).json(&self.body(request));
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(&key.0);
        }
        let response = http.send().await.map_err(transport_error)?;
        let (status, headers, body) = crate::read_response(response, self.max_body).await?;
        if !status.is_success() {
            return Err(status_error(status, &headers, &body));
        }
        parse_chat_body(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_usage_and_text() {
        let c = parse_chat_body(
            r#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        )
        .unwrap();
        assert_eq!(c.text, "hi");
        assert_eq!(c.prompt_tokens, Some(3));
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn reads_both_logprob_shapes() {
        let chat = parse_chat_body(
            r#"{"choices":[{"message":{"content":"A"},"logprobs":{"content":[{"token":"A","logprob":-0.1,"top_logprobs":[{"token":"A","logprob":-0.1},{"token":"B","logprob":-2.5}]}]}}]}"#,
        )
        .unwrap();
        assert_eq!(chat.top_logprobs.unwrap()[0][1], ("B".to_string(), -2.5));
        let legacy = parse_chat_body(
            r#"{"choices":[{"text":"A","logprobs":{"tokens":["A"],"top_logprobs":[{"A":-0.2," B":-1.0}]}}]}"#,
        )
        .unwrap();
        assert_eq!(legacy.text, "A");
        assert_eq!(legacy.top_logprobs.unwrap()[0].len(), 2);
    }

    #[test]
    fn absurd_token_counts_are_unknown() {
        let c = parse_chat_body(
            r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":9223372036854775808,"completion_tokens":-3}}"#,
        )
        .unwrap();
        assert_eq!((c.prompt_tokens, c.completion_tokens), (None, None));
        let c = parse_chat_body(
            r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1e300}}"#,
        );
        assert!(c.is_ok_and(|c| c.prompt_tokens.is_none()));
    }

    proptest::proptest! {
        /// No reply body makes the parser panic.
        #[test]
        fn any_body_parses_or_fails_cleanly(body in "\\PC{0,300}") {
            let _ = parse_chat_body(&body);
        }

        #[test]
        fn any_usage_and_logprobs_parse_or_fail_cleanly(
            p in proptest::num::i128::ANY, c in proptest::num::f64::ANY,
            token in "\\PC{0,8}", lp in proptest::num::f64::ANY,
        ) {
            let body = format!(
                r#"{{"choices":[{{"message":{{"content":"x"}},"logprobs":{{"content":[{{"top_logprobs":[{{"token":{},"logprob":{}}}]}}]}}}}],"usage":{{"prompt_tokens":{p},"completion_tokens":{c}}}}}"#,
                serde_json::to_string(&token).unwrap_or_default(), lp
            );
            if let Ok(done) = parse_chat_body(&body) {
                proptest::prop_assert!(done.prompt_tokens.is_none_or(|t| t <= crate::MAX_PLAUSIBLE_TOKENS));
            }
        }
    }

    #[test]
    fn garbage_and_empty_are_retryable() {
        assert!(parse_chat_body("<html>").unwrap_err().retryable);
        let e = parse_chat_body(r#"{"choices":[{"message":{"content":null}}]}"#).unwrap_err();
        assert!(e.retryable && e.message.contains("empty"));
        assert!(parse_chat_body(r#"{"choices":[]}"#).unwrap_err().retryable);
    }
}
