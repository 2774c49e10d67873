//! `caiflow.toml`: named endpoints (`[endpoints.policy]`, `[endpoints.judge]`, …).
//!
//! API keys are never in the file or on the command line: an endpoint names the
//! environment variable that holds its key (`api_key_env = "NGC_API_KEY"`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chat_template::ChatTemplate;
use crate::error::{LlmError, Result};
use crate::nemo::NemoPromptForm;
use crate::retry::RetryPolicy;

/// The endpoints of `caiflow.toml` (`[endpoints.NAME]`). The file's other sections belong to
/// the crates that use them (`[tables]`: caiflow-run, `[report]`: caiflow-report) and are
/// ignored here; the binary checks that every section is one of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointConfig>,
}

/// One endpoint: what every kind has (model name, budget, timeout, retries, scheduling,
/// fault policy) and what its kind needs ([`BackendConfig`], chosen by `kind`).
///
/// In `caiflow.toml` it is one flat table; `kind` (default `openai`) decides which other
/// keys are allowed, so a key of another kind (`model_path` on an OpenAI endpoint) is an
/// error naming the keys that kind takes.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    pub model: String,
    /// Requests in flight at once to this endpoint, shared by every stage that uses it.
    pub max_concurrency: usize,
    /// Per-attempt timeout. Default 120 s; 600 s for `embedded`, whose attempts include the
    /// wait for a free sequence.
    pub timeout_secs: Option<f64>,
    pub retry: RetryPolicy,
    /// Adaptive concurrency and rate limits.
    pub scheduling: crate::gate::GateConfig,
    /// Abort the run when more than this share of requests fail (after 20 requests).
    pub max_error_rate: Option<f64>,
    /// US dollars per million input and output tokens: costs in summaries and reports, and
    /// what `max_cost` budgets count.
    pub price: Option<crate::spend::Price>,
    /// What requests to this endpoint may spend in a run, over all its sessions.
    pub budget: crate::spend::Budget,
    /// The largest response body read from this endpoint's server, in MiB (default 16): a
    /// longer or endless body fails the request instead of filling memory.
    pub max_response_mib: Option<u64>,
    /// A reasoning model's expected thinking per answer, in tokens: dry runs add it to each
    /// request's expected completion (and report it as reasoning), so a plan on a reasoning
    /// model is priced with its thinking. Runs count the real thinking whatever this says.
    pub reasoning_tokens: Option<u32>,
    pub backend: BackendConfig,
}

/// What one kind of endpoint needs, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendConfig {
    /// OpenAI-compatible `POST /chat/completions` (or `/completions`).
    Openai(OpenAiConfig),
    /// NeMo text-generation server, `PUT /generate`.
    Nemo(NemoConfig),
    /// A GGUF model run inside caiflow by llama.cpp: no server at all.
    Embedded(EmbeddedConfig),
    /// Anthropic's Messages API, `POST /v1/messages`.
    Anthropic(AnthropicConfig),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicConfig {
    /// The server root (`/v1/messages` is appended). Default `https://api.anthropic.com`.
    #[serde(default = "default_anthropic_url")]
    pub base_url: String,
    /// Name of the environment variable holding the API key (sent as `x-api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The `anthropic-version` header. Default `2023-06-01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic_version: Option<String>,
    /// Mark the shared prefix (system prompt, the conversation before the last turn)
    /// cacheable (`cache_control`).
    #[serde(default)]
    pub cache_prompt: bool,
    /// Send requests through the Message Batches API (`batch = true` or `batch = { … }`).
    #[serde(
        default,
        deserialize_with = "crate::batch::config::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub batch: Option<crate::batch::config::BatchConfig>,
}

fn default_anthropic_url() -> String {
    "https://api.anthropic.com".into()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The URL that `/chat/completions` is appended to (e.g. `http://127.0.0.1:8080/v1`).
    pub base_url: String,
    /// `chat` (default) or `completions` (base models; turns joined into one prompt).
    #[serde(default)]
    pub api: crate::openai::OpenAiApi,
    /// Name of the environment variable holding the API key, if the server needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Send requests through the Batch API (`batch = true` or `batch = { … }`).
    #[serde(
        default,
        deserialize_with = "crate::batch::config::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub batch: Option<crate::batch::config::BatchConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemoConfig {
    /// The server root (`/generate` is appended).
    pub base_url: String,
    /// How the conversation is sent.
    #[serde(default)]
    pub nemo_form: NemoPromptForm,
    /// Turn markers for the string form and for finding the answer.
    #[serde(default)]
    pub chat_template: ChatTemplate,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The GGUF file. Default: `$CAIFLOW_MODEL`, else [`DEFAULT_MODEL_PATH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<String>,
    /// `chat` (default: the GGUF's chat template) or `completions` (the turns as they are).
    #[serde(default)]
    pub api: crate::openai::OpenAiApi,
    /// Decode threads. Default: 1 on machines with 2 cores or fewer (llama.cpp with 2
    /// threads on 2 shared cores runs 3-4x slower), otherwise half the cores, at most 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Context (prompt + answer) of each sequence, in tokens. Default 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
}

/// The keys every kind takes, as [`EndpointConfig`]'s own fields.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CommonKeys {
    #[serde(default = "default_model")]
    model: String,
    /// Default 8; 10,000 on a batch endpoint (requests waiting in batches at once).
    #[serde(default)]
    max_concurrency: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_secs: Option<f64>,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    scheduling: crate::gate::GateConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    price: Option<crate::spend::Price>,
    #[serde(default, skip_serializing_if = "crate::spend::Budget::is_empty")]
    budget: crate::spend::Budget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_response_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u32>,
}

const COMMON_KEYS: [&str; 10] = [
    "model",
    "max_concurrency",
    "timeout_secs",
    "retry",
    "scheduling",
    "max_error_rate",
    "price",
    "budget",
    "max_response_mib",
    "reasoning_tokens",
];

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        if !table.contains_key("kind") {
            table.insert("kind".into(), toml::Value::String("openai".into()));
        }
        let mut common = toml::Table::new();
        for key in COMMON_KEYS {
            if let Some(v) = table.remove(key) {
                common.insert(key.to_string(), v);
            }
        }
        let c: CommonKeys = common.try_into().map_err(D::Error::custom)?;
        let backend: BackendConfig = table.try_into().map_err(D::Error::custom)?;
        let batched = match &backend {
            BackendConfig::Openai(o) => o.batch.is_some(),
            BackendConfig::Anthropic(a) => a.batch.is_some(),
            _ => false,
        };
        Ok(EndpointConfig {
            model: c.model,
            max_concurrency: c.max_concurrency.unwrap_or(if batched {
                DEFAULT_BATCH_CONCURRENCY
            } else {
                default_concurrency()
            }),
            timeout_secs: c.timeout_secs,
            retry: c.retry,
            scheduling: c.scheduling,
            max_error_rate: c.max_error_rate,
            price: c.price,
            budget: c.budget,
            max_response_mib: c.max_response_mib,
            reasoning_tokens: c.reasoning_tokens,
            backend,
        })
    }
}

impl Serialize for EndpointConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            #[serde(flatten)]
            common: CommonKeys,
            #[serde(flatten)]
            backend: &'a BackendConfig,
        }
        Flat {
            common: CommonKeys {
                model: self.model.clone(),
                max_concurrency: Some(self.max_concurrency),
                timeout_secs: self.timeout_secs,
                retry: self.retry.clone(),
                scheduling: self.scheduling.clone(),
                max_error_rate: self.max_error_rate,
                price: self.price,
                budget: self.budget,
                max_response_mib: self.max_response_mib,
                reasoning_tokens: self.reasoning_tokens,
            },
            backend: &self.backend,
        }
        .serialize(s)
    }
}

/// `url` with any user name and password replaced by `***` (`https://***@host/v1`), for
/// messages, saved configurations and anything sent to other processes. Text that does not
/// parse as a URL is returned with everything before an `@` hidden, to be safe.
pub fn redact_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        },
    }
}

impl Config {
    /// This configuration as it may be stored or shown: URLs without credentials (API keys
    /// are never in it: only the names of their environment variables).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for e in c.endpoints.values_mut() {
            match &mut e.backend {
                BackendConfig::Openai(o) => o.base_url = redact_userinfo(&o.base_url),
                BackendConfig::Nemo(n) => n.base_url = redact_userinfo(&n.base_url),
                BackendConfig::Anthropic(a) => a.base_url = redact_userinfo(&a.base_url),
                BackendConfig::Embedded(_) => {}
            }
        }
        c
    }
}

/// The model `caiflow model pull` installs, relative to the working directory.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

impl EndpointConfig {
    fn with_backend(model: &str, backend: BackendConfig) -> Self {
        EndpointConfig {
            model: model.to_string(),
            max_concurrency: default_concurrency(),
            timeout_secs: None,
            retry: RetryPolicy::default(),
            scheduling: Default::default(),
            max_error_rate: None,
            price: None,
            budget: Default::default(),
            max_response_mib: None,
            reasoning_tokens: None,
            backend,
        }
    }

    pub fn openai(base_url: &str, model: &str) -> Self {
        Self::with_backend(
            model,
            BackendConfig::Openai(OpenAiConfig {
                base_url: base_url.to_string(),
                ..Default::default()
            }),
        )
    }

    /// A NeMo text-generation server at `base_url` (its root).
    pub fn nemo(base_url: &str, model: &str) -> Self {
        Self::with_backend(
            model,
            BackendConfig::Nemo(NemoConfig {
                base_url: base_url.to_string(),
                ..Default::default()
            }),
        )
    }

    /// A model run in process; `model_path` None means the default model.
    pub fn embedded(model_path: Option<&str>) -> Self {
        Self::with_backend(
            "default",
            BackendConfig::Embedded(EmbeddedConfig {
                model_path: model_path.map(str::to_string),
                ..Default::default()
            }),
        )
    }

    /// One of `n` equal shares of this endpoint's limits, for one of `n` processes that use
    /// it at once (executors of a cluster): `max_concurrency`, requests and tokens per
    /// minute divided by `n` (rounded down, at least one request in flight), so together
    /// they never exceed the endpoint's limits.
    pub fn share(&self, n: usize) -> EndpointConfig {
        let n = n.max(1);
        let mut share = self.clone();
        share.max_concurrency = (self.max_concurrency / n).max(1);
        let per = |v: Option<f64>| v.map(|v| v / n as f64);
        share.scheduling.requests_per_minute = per(self.scheduling.requests_per_minute);
        share.scheduling.tokens_per_minute = per(self.scheduling.tokens_per_minute);
        share
    }

    /// The embedded settings, when this is an embedded endpoint.
    pub fn embedded_mut(&mut self) -> Option<&mut EmbeddedConfig> {
        match &mut self.backend {
            BackendConfig::Embedded(e) => Some(e),
            _ => None,
        }
    }

    /// The server's address, for HTTP kinds.
    pub fn base_url(&self) -> Option<&str> {
        match &self.backend {
            BackendConfig::Openai(o) => Some(&o.base_url),
            BackendConfig::Nemo(n) => Some(&n.base_url),
            BackendConfig::Anthropic(a) => Some(&a.base_url),
            BackendConfig::Embedded(_) => None,
        }
    }

    /// The batch settings, when requests to this endpoint go through its provider's batch API.
    pub fn batch(&self) -> Option<&crate::batch::config::BatchConfig> {
        match &self.backend {
            BackendConfig::Openai(o) => o.batch.as_ref(),
            BackendConfig::Anthropic(a) => a.batch.as_ref(),
            _ => None,
        }
    }

    /// The largest response body read, in bytes (`max_response_mib`, default 16 MiB).
    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_mib
            .map_or(crate::DEFAULT_MAX_RESPONSE_BYTES, |m| {
                m.saturating_mul(1 << 20)
            })
    }

    pub fn timeout(&self) -> std::time::Duration {
        let default = match self.backend {
            BackendConfig::Embedded(_) => 600.0,
            _ => 120.0,
        };
        // A negative or NaN value is refused by `validate`; never panic on it here.
        std::time::Duration::try_from_secs_f64(self.timeout_secs.unwrap_or(default))
            .unwrap_or(std::time::Duration::ZERO)
    }

    /// The model's name as lineage and request hashes record it: `model`, or for an
    /// embedded endpoint left at the default name, the GGUF file name without `.gguf`.
    pub fn model_name(&self) -> String {
        match &self.backend {
            BackendConfig::Embedded(e) if self.model == default_model() => {
                let path = e.resolved_model_path();
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string())
            }
            _ => self.model.clone(),
        }
    }
}

impl EmbeddedConfig {
    /// The GGUF file an embedded endpoint loads.
    pub fn resolved_model_path(&self) -> std::path::PathBuf {
        match &self.model_path {
            Some(p) => p.into(),
            None => std::env::var_os("CAIFLOW_MODEL")
                .map(Into::into)
                .unwrap_or_else(|| DEFAULT_MODEL_PATH.into()),
        }
    }

    pub fn resolved_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cores <= 2 { 1 } else { (cores / 2).min(8) }
        })
    }

    pub fn resolved_context_tokens(&self) -> u32 {
        self.context_tokens.unwrap_or(2048)
    }
}

fn default_model() -> String {
    "default".into()
}
/// Requests a batch endpoint lets wait in batches at once, unless `max_concurrency` says.
pub const DEFAULT_BATCH_CONCURRENCY: usize = 10_000;

fn default_concurrency() -> usize {
    8
}

/// A TOML error on one line: where, and what (toml's own message spans several lines).
fn toml_error(text: &str, e: &toml::de::Error) -> LlmError {
    LlmError::Config(describe_toml_error(text, e))
}

/// A TOML error of `text` (a configuration file) as one line: "line L, column C: what". For
/// every crate that reads its own section of `caiflow.toml`.
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let place = e
        .span()
        .map(|span| {
            // The text before the error (all of it if the span is not on a char boundary).
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        })
        .unwrap_or_default();
    let message: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("{place}{}", message.join(" "))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| LlmError::io(path, e))?;
        Self::parse(&text).map_err(|e| LlmError::ConfigFile {
            path: path.to_path_buf(),
            cause: Box::new(e),
        })
    }

    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration used without a file: `policy` and `judge` are the embedded model
    /// (one engine serves both), or, when `CAIFLOW_BASE_URL` is set, that OpenAI-compatible
    /// server.
    pub fn local_default() -> Config {
        let base = std::env::var("CAIFLOW_BASE_URL").ok();
        let mut endpoints = BTreeMap::new();
        for name in ["policy", "judge"] {
            let endpoint = match &base {
                Some(url) => EndpointConfig::openai(url, "default"),
                None => EndpointConfig::embedded(None),
            };
            endpoints.insert(name.to_string(), endpoint);
        }
        Config { endpoints }
    }

    fn validate(&self) -> Result<()> {
        for (name, e) in &self.endpoints {
            if e.max_concurrency == 0 {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}.max_concurrency must be at least 1"
                )));
            }
            if e.timeout().is_zero() {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}.timeout_secs must be positive"
                )));
            }
            if e.max_response_mib == Some(0) {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}.max_response_mib = 0: must be at least 1"
                )));
            }
            if let Some(r) = e.max_error_rate
                && !(0.0..=1.0).contains(&r)
            {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}.max_error_rate = {r}: must be in [0, 1]"
                )));
            }
            if let Some(p) = &e.price
                && !(p.input_per_mtok >= 0.0
                    && p.output_per_mtok >= 0.0
                    && p.input_per_mtok.is_finite()
                    && p.output_per_mtok.is_finite())
            {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}.price: input_per_mtok and output_per_mtok must be non-negative amounts"
                )));
            }
            e.budget
                .validate(&format!("endpoints.{name}.budget"))
                .map_err(LlmError::Config)?;
            if [
                e.scheduling.requests_per_minute,
                e.scheduling.tokens_per_minute,
            ]
            .into_iter()
            .flatten()
            .any(|v| !(v > 0.0 && v.is_finite()))
            {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}.scheduling: requests_per_minute and tokens_per_minute must be positive"
                )));
            }
            if e.retry.max_attempts == 0 {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}.retry.max_attempts must be at least 1"
                )));
            }
            if let Some(b) = e.batch() {
                b.validate(&format!("endpoints.{name}.batch"))
                    .map_err(LlmError::Config)?;
                if matches!(&e.backend, BackendConfig::Openai(o) if o.api == crate::openai::OpenAiApi::Completions)
                {
                    return Err(LlmError::Config(format!(
                        "endpoints.{name}: batch works with api = \"chat\" only (the providers' batch APIs take chat requests)"
                    )));
                }
            }
            if let BackendConfig::Embedded(m) = &e.backend
                && (m.threads == Some(0) || m.context_tokens == Some(0))
            {
                return Err(LlmError::Config(format!(
                    "endpoints.{name}: threads and context_tokens must be at least 1"
                )));
            }
            if let Some(url) = e.base_url() {
                url::Url::parse(url).map_err(|err| {
                    LlmError::Config(format!("endpoints.{name}.base_url '{url}': {err}"))
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text as caiflow.toml is a configuration or a one-line error, never a panic.
        #[test]
        fn any_config_text_parses_or_fails_cleanly(text in "\\PC{0,200}") {
            if let Err(e) = Config::parse(&text) {
                proptest::prop_assert!(!e.to_string().contains('\n'), "{e}");
            }
        }

        #[test]
        fn any_endpoint_values_parse_or_fail_cleanly(
            concurrency in proptest::num::i64::ANY, timeout in proptest::num::f64::ANY,
            mib in proptest::num::i64::ANY, url in "\\PC{0,30}",
        ) {
            let text = format!(
                "[endpoints.p]\nbase_url = {url:?}\nmax_concurrency = {concurrency}\ntimeout_secs = {timeout:?}\nmax_response_mib = {mib}\n"
            );
            if let Ok(c) = Config::parse(&text) {
                let e = &c.endpoints["p"];
                proptest::prop_assert!(e.max_concurrency >= 1 && !e.timeout().is_zero());
                let _ = e.max_response_bytes();
            }
        }
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_userinfo("https://user:s3cret@api.example.com/v1"),
            "https://***@api.example.com/v1"
        );
        assert_eq!(
            redact_userinfo("http://127.0.0.1:8080/v1"),
            "http://127.0.0.1:8080/v1"
        );
        assert!(!redact_userinfo("not a url:pw@host").contains("pw"));
    }

    #[test]
    fn parses_endpoints_with_defaults() {
        let c = Config::parse(
            r#"
            [endpoints.policy]
            base_url = "http://127.0.0.1:9/v1"
            [endpoints.judge]
            kind = "openai"
            base_url = "https://integrate.api.nvidia.com/v1"
            model = "meta/llama-3.1-70b-instruct"
            api_key_env = "NGC_API_KEY"
            max_concurrency = 4
            retry = { max_attempts = 3 }
            "#,
        )
        .unwrap();
        assert_eq!(c.endpoints["policy"].max_concurrency, 8);
        let BackendConfig::Openai(judge) = &c.endpoints["judge"].backend else {
            panic!("judge is an OpenAI endpoint");
        };
        assert_eq!(judge.api_key_env.as_deref(), Some("NGC_API_KEY"));
        assert_eq!(c.endpoints["judge"].retry.max_attempts, 3);
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(Config::parse("[endpoints.p]\nbase_url='http://x'\nmax_concurency=3").is_err());
        assert!(Config::parse("[endpoints.p]\nbase_url='http://x'\nmax_concurrency=0").is_err());
        assert!(Config::parse("[endpoints.p]\nbase_url='not a url'").is_err());
        // A key of another kind is refused, naming the keys this kind takes.
        let e = Config::parse("[endpoints.p]\nbase_url='http://x'\nmodel_path='m.gguf'")
            .expect_err("model_path on an OpenAI endpoint");
        assert!(e.to_string().contains("model_path"), "{e}");
        let e = Config::parse("[endpoints.p]\nkind='local'").expect_err("unknown kind");
        assert!(e.to_string().contains("local"), "{e}");
    }

    #[test]
    fn kinds_take_their_own_keys() {
        let c = Config::parse(
            "[endpoints.m]\nkind='embedded'\nthreads=2\nmax_concurrency=4\n\
             [endpoints.n]\nkind='nemo'\nbase_url='http://127.0.0.1:9'\nnemo_form='chat'\n",
        )
        .expect("config");
        assert_eq!(c.endpoints["m"].max_concurrency, 4);
        assert!(
            matches!(&c.endpoints["m"].backend, BackendConfig::Embedded(e) if e.threads == Some(2))
        );
        assert!(matches!(c.endpoints["n"].backend, BackendConfig::Nemo(_)));
        let again: Config =
            toml::from_str(&toml::to_string(&c).expect("serialize")).expect("parse");
        assert_eq!(again, c);
    }
}
