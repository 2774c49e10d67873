//! The journal's line format: one JSON object per request outcome, keyed by its request
//! hash, and splitting a segment's bytes into lines.

use serde::{Deserialize, Serialize};

use caiflow_llm::{Completion, LlmError, RequestHash};

use crate::error::{Result, RunError};

/// One journal line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Line {
    /// Request hash.
    pub(super) h: String,
    pub(super) ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) top_logprobs: Option<Vec<Vec<(String, f64)>>>,
    /// A reasoning model's thinking, apart from `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reasoning_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

impl Line {
    pub(super) fn new(
        hash: &RequestHash,
        result: &std::result::Result<Completion, LlmError>,
    ) -> Line {
        match result {
            Ok(c) => Line {
                h: hash.to_string(),
                ok: true,
                text: Some(c.text.clone()),
                finish_reason: c.finish_reason.clone(),
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                top_logprobs: c.top_logprobs.clone(),
                reasoning: c.reasoning.clone(),
                reasoning_tokens: c.reasoning_tokens,
                error: None,
            },
            Err(e) => Line {
                h: hash.to_string(),
                ok: false,
                text: None,
                finish_reason: None,
                prompt_tokens: None,
                completion_tokens: None,
                top_logprobs: None,
                reasoning: None,
                reasoning_tokens: None,
                error: Some(e.to_string()),
            },
        }
    }

    /// The completion this line holds, in its canonical shape (a line written before
    /// thinking was kept apart has it split off its text here).
    pub(super) fn completion(self) -> Completion {
        caiflow_llm::reasoning::separate(Completion {
            text: self.text.unwrap_or_default(),
            finish_reason: self.finish_reason,
            // A journal written before counts were checked may hold absurd ones: never
            // served into a table (they fail its Int64 columns on every resume).
            prompt_tokens: caiflow_llm::plausible_tokens("prompt tokens", self.prompt_tokens),
            completion_tokens: caiflow_llm::plausible_tokens(
                "completion tokens",
                self.completion_tokens,
            ),
            top_logprobs: self.top_logprobs,
            reasoning: self.reasoning,
            reasoning_tokens: caiflow_llm::plausible_tokens(
                "reasoning tokens",
                self.reasoning_tokens,
            ),
            // A journalled answer is free: what its prompt cached then is not usage now.
            cached_tokens: None,
        })
    }

    /// The line as JSON with its newline.
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(self).map_err(|e| RunError::Json {
            what: "encoding a journal line".into(),
            cause: e,
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// What an index needs of a line, read without copying its text.
#[derive(Deserialize)]
pub(super) struct Head<'a> {
    #[serde(borrow)]
    h: &'a str,
    ok: bool,
}

/// The first 8 bytes of a hex request hash, the key of the index.
pub(super) fn key_of(hash: &str) -> Option<u64> {
    u64::from_str_radix(hash.get(..16)?, 16).ok()
}

/// Splits a segment's bytes, arriving in chunks, into lines with their offsets.
#[derive(Default)]
pub(super) struct Lines {
    pub(super) carry: Vec<u8>,
    /// Offset of the first byte of `carry` in the segment.
    pub(super) offset: u64,
}

impl Lines {
    /// Feed a chunk; `line` gets each whole line (without its newline) and its offset.
    pub(super) fn feed(&mut self, chunk: &[u8], mut line: impl FnMut(u64, &[u8])) {
        self.carry.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.carry[start..].iter().position(|b| *b == b'\n') {
            line(self.offset + start as u64, &self.carry[start..start + end]);
            start += end + 1;
        }
        self.carry.drain(..start);
        self.offset += start as u64;
    }
}

/// The index key of a line and whether it is a success, when the line is readable.
pub(super) fn line_key(raw: &[u8]) -> Option<(u64, bool)> {
    let head = serde_json::from_slice::<Head>(raw).ok()?;
    Some((key_of(head.h)?, head.ok))
}
