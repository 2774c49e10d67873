//! The canonical request hash: one identity per logical request, computed once, from explicit
//! bytes. It keys the request journal (resume) and appears in every row's lineage.
//!
//! The bytes are length-prefixed fields in a fixed order — scheme, prompt-template version,
//! model, each message's role and content (CRLF normalized to LF), then every sampling
//! parameter with a presence byte — so the hash depends on nothing but the request: not on a
//! JSON library's key order or float formatting. JSON values inside a request (a
//! `response_format` schema) are written with their object keys sorted.

use sha2::{Digest, Sha256};

use crate::{ChatRequest, SamplingParams};

/// The scheme that computes [`RequestHash`]es; journals record it, so a journal written by
/// another scheme is recognized instead of silently never matching.
pub const REQUEST_HASH_SCHEME: &str = "caiflow-request-v2";

/// Bumped whenever the way stages build prompts changes, so old journalled results are not
/// reused for new prompts.
pub const PROMPT_TEMPLATE_VERSION: u32 = 1;

/// The SHA-256 of a request's canonical bytes, as 64 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestHash(String);

impl RequestHash {
    /// The hash of `request` sent to `model`.
    pub fn of(model: &str, request: &ChatRequest) -> RequestHash {
        let mut w = Canonical(Sha256::new());
        w.bytes(REQUEST_HASH_SCHEME.as_bytes());
        w.u64(PROMPT_TEMPLATE_VERSION as u64);
        w.bytes(model.as_bytes());
        w.u64(request.messages.len() as u64);
        for m in &request.messages {
            w.bytes(m.role.as_bytes());
            w.bytes(m.content.replace("\r\n", "\n").as_bytes());
        }
        w.params(&request.params);
        RequestHash(hex::encode(w.0.finalize()))
    }

    /// A hash read back from storage (a journal line, a lineage column).
    pub fn from_hex(hex: impl Into<String>) -> RequestHash {
        RequestHash(hex.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes typed values into the hasher, each unambiguous on its own.
struct Canonical(Sha256);

impl Canonical {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    fn u64(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }

    fn opt<T>(&mut self, v: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.0.update([0u8]),
            Some(v) => {
                self.0.update([1u8]);
                write(self, v);
            }
        }
    }

    fn params(&mut self, p: &SamplingParams) {
        // Fields in a fixed order; a new field goes at the end (and bumps the scheme).
        self.opt(p.temperature, |w, v| w.u64(v.to_bits()));
        self.opt(p.top_p, |w, v| w.u64(v.to_bits()));
        self.opt(p.top_k, |w, v| w.u64(v as u64));
        self.opt(p.max_tokens, |w, v| w.u64(v as u64));
        self.opt(p.seed, |w, v| w.u64(v));
        self.u64(p.stop.len() as u64);
        for s in &p.stop {
            self.bytes(s.as_bytes());
        }
        self.opt(p.top_logprobs, |w, v| w.u64(v as u64));
        self.opt(p.response_format.as_ref(), |w, v| w.json(v));
    }

    /// A JSON value with object keys sorted, numbers as their shortest text.
    fn json(&mut self, v: &serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Null => self.0.update([b'n']),
            Value::Bool(b) => self.0.update([b'b', *b as u8]),
            Value::Number(n) => {
                self.0.update([b'#']);
                self.bytes(n.to_string().as_bytes());
            }
            Value::String(s) => {
                self.0.update([b's']);
                self.bytes(s.as_bytes());
            }
            Value::Array(items) => {
                self.0.update([b'[']);
                self.u64(items.len() as u64);
                for i in items {
                    self.json(i);
                }
            }
            Value::Object(map) => {
                self.0.update([b'{']);
                self.u64(map.len() as u64);
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                for k in keys {
                    self.bytes(k.as_bytes());
                    self.json(&map[k]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::new("system", "Be harmless."),
                Message::user("How do I pick a lock?"),
            ],
            params: SamplingParams {
                temperature: Some(0.7),
                max_tokens: Some(256),
                seed: Some(42),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_known_request_has_a_known_hash() {
        // Pinned: if this changes, journals written before no longer match. Change it only
        // together with REQUEST_HASH_SCHEME. (Computed independently from the layout in the
        // module doc: sha256 of the length-prefixed fields, f64 bits and integers as u64 LE.)
        assert_eq!(
            RequestHash::of("smollm2", &request()).as_str(),
            "ff2783e2e1d3b8bdbfab23c37ae54e7d7daf8d09775323938cad54416f0040e3"
        );
    }

    #[test]
    fn every_part_of_a_request_counts_and_json_key_order_does_not() {
        let base = RequestHash::of("m", &request());
        assert_ne!(base, RequestHash::of("other", &request()));
        let mut r = request();
        r.params.seed = Some(43);
        assert_ne!(base, RequestHash::of("m", &r));
        let mut r = request();
        r.params.top_k = Some(0);
        assert_ne!(base, RequestHash::of("m", &r), "None differs from Some(0)");
        let mut r = request();
        r.messages[1].content = "How do I pick a lock?".replace(' ', "\r\n");
        let mut crlf = request();
        crlf.messages[1].content = "How do I pick a lock?".replace(' ', "\n");
        assert_eq!(RequestHash::of("m", &r), RequestHash::of("m", &crlf));

        let a: serde_json::Value =
            serde_json::from_str(r#"{"type": "json_schema", "schema": {"a": 1, "b": [true]}}"#)
                .expect("json");
        let b: serde_json::Value =
            serde_json::from_str(r#"{"schema": {"b": [true], "a": 1}, "type": "json_schema"}"#)
                .expect("json");
        let (mut ra, mut rb) = (request(), request());
        ra.params.response_format = Some(a);
        rb.params.response_format = Some(b);
        assert_eq!(RequestHash::of("m", &ra), RequestHash::of("m", &rb));
        assert_ne!(RequestHash::of("m", &ra), base);
    }
}
