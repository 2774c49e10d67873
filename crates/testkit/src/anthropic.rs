//! Anthropic's Messages API on the mock (`POST /v1/messages`): the request checked as the
//! real API checks it (an `anthropic-version` header, `max_tokens`, turns alternating from
//! the user, no system turn among them), content blocks back (a `thinking` block first in
//! reasoning mode), and usage with the prompt cache: a prefix marked `cache_control` is
//! created the first time it is seen and read every time after.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{InFlight, MockState, admit, mock_answer, serve_fault};

fn invalid(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
            .to_string(),
    )
        .into_response()
}

/// A turn's or the system prompt's text: a string, or text blocks.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn has_breakpoint(content: &Value) -> bool {
    content
        .as_array()
        .is_some_and(|blocks| blocks.iter().any(|b| b.get("cache_control").is_some()))
}

pub(crate) async fn messages(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    let peak = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak_in_flight.fetch_max(peak, Ordering::SeqCst);
    let _guard = InFlight(&state);
    if !headers.contains_key("anthropic-version") {
        return invalid("anthropic-version: header is required");
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return invalid("max_tokens: Field required");
    }
    let Some(turns) = body.get("messages").and_then(Value::as_array) else {
        return invalid("messages: Field required");
    };
    for (i, t) in turns.iter().enumerate() {
        let want = if i % 2 == 0 { "user" } else { "assistant" };
        if t.get("role").and_then(Value::as_str) != Some(want) {
            return invalid(&format!(
                "messages.{i}.role: roles must alternate between \"user\" and \"assistant\", starting with \"user\""
            ));
        }
    }
    if let Err(r) = serve_fault(admit(&state, &body).await).await {
        return r;
    }
    // Prompt size and the cached prefix (up to the last breakpoint), a word a token.
    let system = body.get("system").cloned().unwrap_or(Value::Null);
    let mut hasher = Sha256::new();
    hasher.update(text_of(&system).as_bytes());
    let mut total = words(&text_of(&system));
    let mut cached: Option<(u64, String)> =
        has_breakpoint(&system).then(|| (total, hex::encode(hasher.clone().finalize())));
    for t in turns {
        let content = t.get("content").cloned().unwrap_or(Value::Null);
        let text = text_of(&content);
        total += words(&text) + 3;
        hasher.update(text.as_bytes());
        if has_breakpoint(&content) {
            cached = Some((total, hex::encode(hasher.clone().finalize())));
        }
    }
    let (created, read) = match cached {
        Some((prefix, key)) => {
            let seen = !state
                .cached_prefixes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
            if seen { (0, prefix) } else { (prefix, 0) }
        }
        None => (0, 0),
    };
    let last_user = turns
        .iter()
        .rev()
        .find(|t| t.get("role").and_then(Value::as_str) == Some("user"))
        .map(|t| text_of(t.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let canned = state
        .replies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    let answer = canned.unwrap_or_else(|| mock_answer(&last_user));
    let mut content = vec![];
    let thinking = state
        .reasoning
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some()
        .then(|| {
            let head: String = last_user.chars().take(40).collect();
            format!("Thinking about: {head}")
        });
    if let Some(t) = &thinking {
        content.push(json!({"type": "thinking", "thinking": t, "signature": "mock"}));
    }
    content.push(json!({"type": "text", "text": answer}));
    let output = words(&answer) + thinking.as_deref().map_or(0, words);
    state.prompt_tokens.fetch_add(total, Ordering::SeqCst);
    state.completion_tokens.fetch_add(output, Ordering::SeqCst);
    let reply = json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": total.saturating_sub(created).saturating_sub(read),
            "output_tokens": output,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        },
    });
    (StatusCode::OK, reply.to_string()).into_response()
}
