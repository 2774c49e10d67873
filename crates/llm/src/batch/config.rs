//! `batch = true` or `batch = { window_secs = …, … }` on an OpenAI or Anthropic endpoint.

use serde::{Deserialize, Serialize};

/// OpenAI Batch: requests per input file, and the file's size (200 MB).
pub const OPENAI_MAX_REQUESTS: usize = 50_000;
pub const OPENAI_MAX_BYTES: u64 = 200_000_000;
/// Anthropic Message Batches: requests per batch, and the request body's size (256 MB).
pub const ANTHROPIC_MAX_REQUESTS: usize = 100_000;
pub const ANTHROPIC_MAX_BYTES: u64 = 256_000_000;

/// How an endpoint batches its requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// How long the first waiting request waits for others to join its batch, in seconds
    /// (default 30): a batch is submitted when full or when its window has passed.
    #[serde(default = "default_window")]
    pub window_secs: f64,
    /// Seconds between polls of the batches in flight (default 30).
    #[serde(default = "default_poll")]
    pub poll_secs: f64,
    /// Requests per batch: at most, and by default, the provider's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<usize>,
    /// Bytes per batch (OpenAI's input file, Anthropic's request body): at most, and by
    /// default, the provider's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// OpenAI's `completion_window` (default `24h`, the only one it offers today).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_window: Option<String>,
}

fn default_window() -> f64 {
    30.0
}
fn default_poll() -> f64 {
    30.0
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            window_secs: default_window(),
            poll_secs: default_poll(),
            max_requests: None,
            max_bytes: None,
            completion_window: None,
        }
    }
}

impl BatchConfig {
    pub fn validate(&self, at: &str) -> Result<(), String> {
        for (key, v) in [
            ("window_secs", self.window_secs),
            ("poll_secs", self.poll_secs),
        ] {
            if !(0.0..=86_400.0).contains(&v) {
                return Err(format!(
                    "{at}.{key} = {v}: must be between 0 and 86400 seconds"
                ));
            }
        }
        if self.max_requests == Some(0) || self.max_bytes == Some(0) {
            return Err(format!(
                "{at}: max_requests and max_bytes must be at least 1"
            ));
        }
        if let Some(w) = &self.completion_window
            && !w.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(format!(
                "{at}.completion_window = {w:?}: a duration such as \"24h\""
            ));
        }
        Ok(())
    }

    /// Requests and bytes per batch: the settings, never above the provider's limits.
    pub fn limits(&self, provider_requests: usize, provider_bytes: u64) -> (usize, u64) {
        (
            self.max_requests
                .unwrap_or(provider_requests)
                .min(provider_requests),
            self.max_bytes.unwrap_or(provider_bytes).min(provider_bytes),
        )
    }

    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.window_secs.clamp(0.0, 86_400.0))
    }

    pub fn poll(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.poll_secs.clamp(0.001, 86_400.0))
    }
}

/// `batch = true` (the defaults), `batch = false` (none) or a table. A malformed table
/// keeps serde's own message (an unknown key names the keys there are); anything else says
/// what a `batch` setting can be.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BatchConfig>, D::Error> {
    struct Setting;
    impl<'de> serde::de::Visitor<'de> for Setting {
        type Value = Option<BatchConfig>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "true, false or a table such as { window_secs = 60, poll_secs = 30, max_requests = 1000 }",
            )
        }

        fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then(BatchConfig::default))
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            BatchConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Setting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Endpoint {
        #[serde(default, deserialize_with = "deserialize")]
        batch: Option<BatchConfig>,
    }

    fn parse(text: &str) -> Result<Option<BatchConfig>, String> {
        toml::from_str::<Endpoint>(text)
            .map(|e| e.batch)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_batch_setting_is_a_bool_or_a_table() {
        assert_eq!(parse("batch = true"), Ok(Some(BatchConfig::default())));
        assert_eq!(parse("batch = false"), Ok(None));
        assert_eq!(parse(""), Ok(None));
        let table = parse("batch = { window_secs = 5, max_requests = 10 }").unwrap();
        assert_eq!(table.as_ref().map(|t| t.window_secs), Some(5.0));
        assert_eq!(table.and_then(|t| t.max_requests), Some(10));
    }

    #[test]
    fn a_bad_batch_setting_says_what_is_wrong() {
        let typo = parse("batch = { windw_secs = 5 }").unwrap_err();
        assert!(typo.contains("unknown field `windw_secs`"), "{typo}");
        assert!(
            typo.contains("window_secs"),
            "names the keys there are: {typo}"
        );
        let kind = parse("batch = \"yes\"").unwrap_err();
        assert!(kind.contains("true, false or a table"), "{kind}");
        let value = parse("batch = { window_secs = \"soon\" }").unwrap_err();
        assert!(
            value.contains("window_secs") || value.contains("f64"),
            "{value}"
        );
    }
}
