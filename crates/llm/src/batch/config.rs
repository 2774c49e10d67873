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

/// `batch = true` (the defaults), `batch = false` (none) or a table.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BatchConfig>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Setting {
        On(bool),
        Table(BatchConfig),
    }
    Ok(match Setting::deserialize(d)? {
        Setting::On(true) => Some(BatchConfig::default()),
        Setting::On(false) => None,
        Setting::Table(t) => Some(t),
    })
}
