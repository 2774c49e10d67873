//! Anthropic's Message Batches API: `POST /v1/messages/batches` with the requests inline,
//! `GET /v1/messages/batches/{id}` until `processing_status` is `ended`, then the results
//! (JSONL) from `GET /v1/messages/batches/{id}/results`. The results URL is built from the
//! configured base URL, not taken from the answer's `results_url`: a server that named
//! another host would be sent the API key.

use serde_json::{Value, json};

use super::{BatchApi, LineResult, Polled, checked_id, json_answer, read_results};
use crate::AttemptError;
use crate::ChatRequest;
use crate::anthropic::{AnthropicBackend, parse_message_body};
use crate::openai::ApiKey;

#[derive(Debug)]
pub struct AnthropicBatchApi {
    client: reqwest::Client,
    /// `{base_url}/v1/messages/batches`.
    url: String,
    version: String,
    api_key: Option<ApiKey>,
    /// Builds each request's `params` exactly as an online request's body.
    messages: AnthropicBackend,
    max_line: u64,
}

impl AnthropicBatchApi {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: Option<ApiKey>,
        version: &str,
        messages: AnthropicBackend,
        max_line: u64,
    ) -> Self {
        AnthropicBatchApi {
            client,
            url: format!("{}/v1/messages/batches", base_url.trim_end_matches('/')),
            version: version.to_string(),
            api_key,
            messages,
            max_line,
        }
    }

    fn headers(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let r = r.header("anthropic-version", &self.version);
        match &self.api_key {
            Some(k) => r.header("x-api-key", &k.0),
            None => r,
        }
    }

    async fn object(&self, r: reqwest::RequestBuilder) -> Result<Value, AttemptError> {
        json_answer(self.headers(r)).await
    }
}

/// One line of a batch's results.
pub fn parse_line(line: &[u8]) -> Option<(String, LineResult)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let id = v.get("custom_id")?.as_str()?.to_string();
    let result = v.get("result")?;
    let line = match result.get("type").and_then(Value::as_str)? {
        "succeeded" => LineResult::Answer(parse_message_body(
            &result
                .get("message")
                .cloned()
                .unwrap_or(Value::Null)
                .to_string(),
        )),
        "errored" => {
            let error = result.pointer("/error/error").unwrap_or(&Value::Null);
            let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            let shown: String = format!("{kind}: {message}").chars().take(300).collect();
            // The request itself was wrong: sending it again cannot help.
            let mut e = if matches!(
                kind,
                "invalid_request_error"
                    | "authentication_error"
                    | "permission_error"
                    | "not_found_error"
            ) {
                AttemptError::fatal(format!("batch line failed: {shown}"))
            } else {
                AttemptError::retryable(format!("batch line failed: {shown}"))
            };
            e.overloaded = kind == "overloaded_error" || kind == "rate_limit_error";
            LineResult::Answer(Err(e))
        }
        "canceled" | "expired" => LineResult::Unfinished,
        _ => return None,
    };
    Some((id, line))
}

#[async_trait::async_trait]
impl BatchApi for AnthropicBatchApi {
    fn provider(&self) -> &'static str {
        "anthropic"
    }

    fn provider_limits(&self) -> (usize, u64) {
        (
            super::config::ANTHROPIC_MAX_REQUESTS,
            super::config::ANTHROPIC_MAX_BYTES,
        )
    }

    fn encode(&self, custom_id: &str, request: &ChatRequest) -> Vec<u8> {
        let mut bytes = json!({"custom_id": custom_id, "params": self.messages.body(request)})
            .to_string()
            .into_bytes();
        // The comma that separates it from the next in the request body.
        bytes.push(b',');
        bytes
    }

    async fn submit(&self, items: &[Vec<u8>]) -> Result<String, AttemptError> {
        let mut body = Vec::with_capacity(items.iter().map(Vec::len).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"requests\":[");
        for item in items {
            body.extend_from_slice(item);
        }
        if body.last() == Some(&b',') {
            body.pop();
        }
        body.extend_from_slice(b"]}");
        let batch = self
            .object(
                self.client
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await?;
        checked_id(
            "batch",
            batch.get("id").and_then(Value::as_str).unwrap_or(""),
        )
    }

    async fn poll(&self, id: &str) -> Result<Polled, AttemptError> {
        let id = checked_id("batch", id)?;
        let batch = self
            .object(self.client.get(format!("{}/{id}", self.url)))
            .await?;
        let status: String = batch
            .get("processing_status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .chars()
            .take(40)
            .collect();
        Ok(Polled {
            ended: status == "ended",
            status,
            failed: None,
            files: vec![],
        })
    }

    async fn results(
        &self,
        id: &str,
        _polled: &Polled,
        deliver: &mut (dyn FnMut(String, LineResult) + Send),
    ) -> Result<(), AttemptError> {
        let id = checked_id("batch", id)?;
        let url = format!("{}/{id}/results", self.url);
        read_results(
            self.headers(self.client.get(url)),
            self.max_line,
            parse_line,
            deliver,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn result_lines() {
        let ok = br#"{"custom_id":"a","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}}}"#;
        assert!(
            matches!(parse_line(ok), Some((id, LineResult::Answer(Ok(c)))) if id == "a" && c.text == "hi")
        );
        let bad = br#"{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"no"}}}}"#;
        assert!(matches!(parse_line(bad), Some((_, LineResult::Answer(Err(e)))) if !e.retryable));
        let busy = br#"{"custom_id":"c","result":{"type":"errored","error":{"type":"error","error":{"type":"overloaded_error","message":"busy"}}}}"#;
        assert!(
            matches!(parse_line(busy), Some((_, LineResult::Answer(Err(e)))) if e.retryable && e.overloaded)
        );
        for kind in ["expired", "canceled"] {
            let line = format!(r#"{{"custom_id":"d","result":{{"type":"{kind}"}}}}"#);
            assert!(matches!(
                parse_line(line.as_bytes()),
                Some((_, LineResult::Unfinished))
            ));
        }
    }

    proptest! {
        #[test]
        fn any_line_parses_or_is_skipped(line in "\\PC{0,300}") {
            let _ = parse_line(line.as_bytes());
        }
    }
}
