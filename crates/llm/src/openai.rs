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
        }
    }

    fn body(&self, request: &ChatRequest) -> Value {
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
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// Parse a 200 body. A body that is not the expected JSON, or that holds no text, is a
/// retryable failure: servers under load do send truncated or empty answers.
pub(crate) fn parse_chat_body(body: &str) -> Result<Completion, AttemptError> {
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
    let text = choice
        .message
        .and_then(|m| m.content)
        .or(choice.text)
        .unwrap_or_default();
    if text.trim().is_empty() {
        return Err(AttemptError::retryable(format!(
            "empty completion (finish_reason {})",
            choice.finish_reason.as_deref().unwrap_or("none")
        )));
    }
    Ok(Completion {
        text,
        finish_reason: choice.finish_reason,
        prompt_tokens: parsed.usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: parsed.usage.as_ref().and_then(|u| u.completion_tokens),
        top_logprobs,
    })
}

#[async_trait::async_trait]
impl Backend for OpenAiBackend {
    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        let mut http = self.client.post(&self.url).json(&self.body(request));
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(&key.0);
        }
        let response = http.send().await.map_err(transport_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(transport_error)?;
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
    fn garbage_and_empty_are_retryable() {
        assert!(parse_chat_body("<html>").unwrap_err().retryable);
        let e = parse_chat_body(r#"{"choices":[{"message":{"content":null}}]}"#).unwrap_err();
        assert!(e.retryable && e.message.contains("empty"));
        assert!(parse_chat_body(r#"{"choices":[]}"#).unwrap_err().retryable);
    }
}
