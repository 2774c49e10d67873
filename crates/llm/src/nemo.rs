//! NeMo's text-generation server (`PUT /generate`), used by NeMo-Aligner's CAI scripts.
//!
//! The reply echoes prompt + completion; the answer is the text after the last assistant
//! marker and before the last end-of-turn marker. Temperature must stay > 0 there, so a
//! temperature of 0 is sent as greedy decoding instead.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AttemptError, Backend, ChatRequest, Completion, status_error, transport_error};
use crate::chat_template::ChatTemplate;

/// How the conversation travels in `sentences`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NemoPromptForm {
    /// One string rendered with the chat template (the classic NeMo form).
    #[default]
    String,
    /// A list of `{role, content}` turns that the server collates itself.
    Chat,
}

#[derive(Debug)]
pub struct NemoBackend {
    client: reqwest::Client,
    url: String,
    template: ChatTemplate,
    form: NemoPromptForm,
    /// The largest response body read, in bytes.
    max_body: u64,
}

/// NeMo's server takes at most this many sentences in one request.
pub const MAX_SENTENCES_PER_REQUEST: usize = 128;

impl NemoBackend {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        template: ChatTemplate,
        form: NemoPromptForm,
    ) -> Self {
        NemoBackend {
            client,
            url: format!("{}/generate", base_url.trim_end_matches('/')),
            template,
            form,
            max_body: crate::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Read at most `bytes` of a response body (see [`crate::read_response`]).
    pub fn with_max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let p = &request.params;
        let sentence = match self.form {
            NemoPromptForm::String => json!(self.template.render(&request.messages, true)),
            NemoPromptForm::Chat => json!(request.messages),
        };
        let temperature = p.temperature.unwrap_or(1.0);
        let greedy = temperature <= 0.0;
        let mut end_strings = vec![self.template.eos.clone(), "<|endoftext|>".to_string()];
        end_strings.extend(p.stop.iter().cloned());
        json!({
            "sentences": [sentence],
            "tokens_to_generate": p.max_tokens.unwrap_or(256),
            "temperature": if greedy { 1.0 } else { temperature },
            "greedy": greedy,
            "top_k": p.top_k.unwrap_or(0),
            "top_p": p.top_p.unwrap_or(if greedy { 0.0 } else { 1.0 }),
            "repetition_penalty": 1.0,
            "add_BOS": false,
            "all_probs": false,
            "compute_logprob": false,
            "min_tokens_to_generate": 0,
            "end_strings": end_strings,
            "random_seed": p.seed,
        })
    }
}

#[derive(Deserialize)]
struct GenerateResponse {
    sentences: Option<Vec<Option<String>>>,
}

pub(crate) fn parse_generate_body(
    body: &str,
    template: &ChatTemplate,
) -> Result<Completion, AttemptError> {
    let parsed: GenerateResponse = serde_json::from_str(body).map_err(|e| {
        let snippet: String = body.chars().take(120).collect();
        AttemptError::retryable(format!("malformed /generate body ({e}): {snippet:?}"))
    })?;
    // A null sentence is a failure, never the text "None".
    let full = parsed
        .sentences
        .and_then(|s| s.into_iter().next().flatten())
        .ok_or_else(|| AttemptError::retryable("/generate returned no sentence"))?;
    let text = template.extract_answer(&full).to_string();
    if text.is_empty() {
        return Err(AttemptError::retryable(
            "/generate returned an empty answer",
        ));
    }
    Ok(Completion {
        text,
        finish_reason: None,
        prompt_tokens: None,
        ..Default::default()
    })
}

#[async_trait::async_trait]
impl Backend for NemoBackend {
    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        let response = self
            .client
            .put(&self.url)
            .json(&self.body(request))
            .send()
            .await
            .map_err(transport_error)?;
        let (status, headers, body) = crate::read_response(response, self.max_body).await?;
        if !status.is_success() {
            return Err(status_error(status, &headers, &body));
        }
        parse_generate_body(&body, &self.template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, SamplingParams};

    #[test]
    fn zero_temperature_becomes_greedy() {
        let b = NemoBackend::new(
            reqwest::Client::new(),
            "http://x",
            ChatTemplate::default(),
            NemoPromptForm::String,
        );
        let req = ChatRequest {
            messages: vec![Message::user("q")],
            params: SamplingParams {
                temperature: Some(0.0),
                ..Default::default()
            },
        };
        let body = b.body(&req);
        assert_eq!(body["greedy"], json!(true));
        assert!(body["temperature"].as_f64().unwrap() > 0.0);
        assert!(
            body["sentences"][0]
                .as_str()
                .unwrap()
                .ends_with("<extra_id_1>Assistant\n")
        );
    }

    #[test]
    fn null_sentence_is_an_error_not_none_text() {
        let t = ChatTemplate::default();
        assert!(parse_generate_body(r#"{"sentences":[null]}"#, &t).is_err());
        assert!(parse_generate_body(r#"{"sentences":null}"#, &t).is_err());
        let ok = parse_generate_body(
            r#"{"sentences":["<extra_id_0>System\n\n<extra_id_1>User\nq\n<extra_id_1>Assistant\nfine\n<extra_id_1>"]}"#,
            &t,
        )
        .unwrap();
        assert_eq!(ok.text, "fine");
    }
}
