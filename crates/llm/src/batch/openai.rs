//! OpenAI's Batch API: the requests as a JSONL file uploaded to `POST /files` (purpose
//! `batch`), `POST /batches` over it, `GET /batches/{id}` until it ends, then the output and
//! error files from `GET /files/{id}/content`. Works with any server that implements it
//! (OpenAI, Azure OpenAI's compatible path, vLLM's batch runner behind a shim).

use serde_json::{Value, json};

use super::{BatchApi, LineResult, Polled, checked_id, json_answer, read_results};
use crate::openai::{ApiKey, OpenAiBackend, parse_chat_body};
use crate::{AttemptError, ChatRequest, status_error, transport_error};

#[derive(Debug)]
pub struct OpenAiBatchApi {
    client: reqwest::Client,
    /// The URL `/files` and `/batches` are appended to (the endpoint's `base_url`).
    base: String,
    api_key: Option<ApiKey>,
    /// Builds each line's body exactly as an online request's.
    chat: OpenAiBackend,
    completion_window: String,
    max_line: u64,
}

impl OpenAiBatchApi {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: Option<ApiKey>,
        chat: OpenAiBackend,
        completion_window: Option<&str>,
        max_line: u64,
    ) -> Self {
        OpenAiBatchApi {
            client,
            base: base_url.trim_end_matches('/').to_string(),
            api_key,
            chat,
            completion_window: completion_window.unwrap_or("24h").to_string(),
            max_line,
        }
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => r.bearer_auth(&k.0),
            None => r,
        }
    }

    async fn object(&self, r: reqwest::RequestBuilder) -> Result<Value, AttemptError> {
        json_answer(self.auth(r)).await
    }
}

/// One line of an output or error file.
pub fn parse_line(line: &[u8]) -> Option<(String, LineResult)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let id = v.get("custom_id")?.as_str()?.to_string();
    if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
        let code = error.get("code").and_then(Value::as_str).unwrap_or("");
        if matches!(code, "batch_expired" | "batch_cancelled") {
            return Some((id, LineResult::Unfinished));
        }
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        let shown: String = format!("{code}: {message}").chars().take(300).collect();
        return Some((
            id,
            LineResult::Answer(Err(AttemptError::retryable(format!(
                "batch line failed: {shown}"
            )))),
        ));
    }
    let response = v.get("response")?;
    let code = response.get("status_code").and_then(Value::as_u64)?;
    let body = response
        .get("body")
        .cloned()
        .unwrap_or(Value::Null)
        .to_string();
    let result = match u16::try_from(code)
        .ok()
        .and_then(|c| reqwest::StatusCode::from_u16(c).ok())
    {
        Some(s) if s.is_success() => parse_chat_body(&body),
        Some(s) => Err(status_error(s, &reqwest::header::HeaderMap::new(), &body)),
        None => Err(AttemptError::retryable(format!(
            "batch line with status {code}"
        ))),
    };
    Some((id, LineResult::Answer(result)))
}

#[async_trait::async_trait]
impl BatchApi for OpenAiBatchApi {
    fn provider(&self) -> &'static str {
        "openai"
    }

    fn provider_limits(&self) -> (usize, u64) {
        (
            super::config::OPENAI_MAX_REQUESTS,
            super::config::OPENAI_MAX_BYTES,
        )
    }

    fn encode(&self, custom_id: &str, request: &ChatRequest) -> Vec<u8> {
        let line = json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": self.chat.body(request),
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        bytes
    }

    async fn submit(&self, items: &[Vec<u8>]) -> Result<String, AttemptError> {
        let file: Vec<u8> = items.concat();
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::bytes(file)
                    .file_name("caiflow-batch.jsonl")
                    .mime_str("application/jsonl")
                    .map_err(transport_error)?,
            );
        let uploaded = self
            .object(
                self.client
                    .post(format!("{}/files", self.base))
                    .multipart(form),
            )
            .await?;
        let file_id = checked_id(
            "file",
            uploaded.get("id").and_then(Value::as_str).unwrap_or(""),
        )?;
        let batch = self
            .object(
                self.client
                    .post(format!("{}/batches", self.base))
                    .json(&json!({
                        "input_file_id": file_id,
                        "endpoint": "/v1/chat/completions",
                        "completion_window": self.completion_window,
                        "metadata": {"created_by": "caiflow"},
                    })),
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
            .object(self.client.get(format!("{}/batches/{id}", self.base)))
            .await?;
        let status = batch
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .chars()
            .take(40)
            .collect::<String>();
        let ended = matches!(
            status.as_str(),
            "completed" | "expired" | "cancelled" | "failed"
        );
        let failed = (status == "failed").then(|| {
            let errors: Vec<String> = batch
                .pointer("/errors/data")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .take(3)
                        .filter_map(|e| e.get("message").and_then(Value::as_str))
                        .map(|m| m.chars().take(200).collect())
                        .collect()
                })
                .unwrap_or_default();
            if errors.is_empty() {
                "validation failed".to_string()
            } else {
                errors.join("; ")
            }
        });
        let mut files = vec![];
        for key in ["output_file_id", "error_file_id"] {
            if let Some(f) = batch.get(key).and_then(Value::as_str) {
                files.push(checked_id("file", f)?);
            }
        }
        Ok(Polled {
            status,
            ended,
            failed,
            files,
        })
    }

    async fn results(
        &self,
        _id: &str,
        polled: &Polled,
        deliver: &mut (dyn FnMut(String, LineResult) + Send),
    ) -> Result<(), AttemptError> {
        for file in &polled.files {
            let url = format!("{}/files/{file}/content", self.base);
            read_results(
                self.auth(self.client.get(url)),
                self.max_line,
                parse_line,
                deliver,
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lines_of_output_and_error_files() {
        let ok = br#"{"id":"r1","custom_id":"a","response":{"status_code":200,"body":{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}},"error":null}"#;
        let Some((id, LineResult::Answer(Ok(c)))) = parse_line(ok) else {
            panic!("a 200 line is an answer")
        };
        assert_eq!((id.as_str(), c.text.as_str()), ("a", "hi"));
        let bad = br#"{"custom_id":"b","response":{"status_code":400,"body":{"error":{"message":"no"}}},"error":null}"#;
        assert!(matches!(parse_line(bad), Some((_, LineResult::Answer(Err(e)))) if !e.retryable));
        let busy = br#"{"custom_id":"c","response":{"status_code":429,"body":{}},"error":null}"#;
        assert!(matches!(parse_line(busy), Some((_, LineResult::Answer(Err(e)))) if e.retryable));
        let expired = br#"{"custom_id":"d","response":null,"error":{"code":"batch_expired","message":"late"}}"#;
        assert!(matches!(
            parse_line(expired),
            Some((_, LineResult::Unfinished))
        ));
    }

    proptest! {
        #[test]
        fn any_line_parses_or_is_skipped(line in "\\PC{0,300}") {
            let _ = parse_line(line.as_bytes());
        }
    }
}
