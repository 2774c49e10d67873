//! `caiflow.toml`: named endpoints (`[endpoints.policy]`, `[endpoints.judge]`, …).
//!
//! API keys are never in the file or on the command line: an endpoint names the
//! environment variable that holds its key (`api_key_env = "NGC_API_KEY"`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chat_template::ChatTemplate;
use crate::error::{CaiError, Result};
use crate::llm::nemo::NemoPromptForm;
use crate::llm::retry::RetryPolicy;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointConfig>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// OpenAI-compatible `POST /chat/completions`.
    #[default]
    Openai,
    /// NeMo text-generation server, `PUT /generate`.
    Nemo,
    /// A GGUF model run inside caiflow by llama.cpp: no server at all.
    Embedded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    #[serde(default)]
    pub kind: BackendKind,
    /// OpenAI only: `chat` (default) or `completions` (base models; turns joined into one prompt).
    #[serde(default)]
    pub api: crate::llm::openai::OpenAiApi,
    /// For OpenAI-compatible servers, the URL that `/chat/completions` is appended to
    /// (for example `http://127.0.0.1:8080/v1`); for NeMo, the server root. Unused by
    /// `embedded`.
    #[serde(default)]
    pub base_url: String,
    #[serde(default = "default_model")]
    pub model: String,
    /// Name of the environment variable holding the API key, if the server needs one.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once to this endpoint, shared by every stage that uses it.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Per-attempt timeout. Default 120 s; 600 s for `embedded`, whose attempts include the
    /// wait for a free sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Adaptive concurrency and rate limits.
    #[serde(default)]
    pub scheduling: crate::llm::gate::GateConfig,
    /// Abort the run when more than this share of requests fail (after 20 requests).
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// NeMo only: how the conversation is sent.
    #[serde(default)]
    pub nemo_form: NemoPromptForm,
    /// NeMo only: turn markers for the string form and for finding the answer.
    #[serde(default)]
    pub chat_template: ChatTemplate,
    /// Embedded only: the GGUF file. Default: `$CAIFLOW_MODEL`, else [`DEFAULT_MODEL_PATH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<String>,
    /// Embedded only: decode threads. Default: 1 on machines with 2 cores or fewer (llama.cpp
    /// with 2 threads on 2 shared cores runs 3-4x slower), otherwise half the cores, at most 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Embedded only: context (prompt + answer) of each sequence, in tokens. Default 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
}

/// The model `caiflow model pull` installs, relative to the working directory.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

impl EndpointConfig {
    pub fn timeout(&self) -> std::time::Duration {
        let default = if self.kind == BackendKind::Embedded {
            600.0
        } else {
            120.0
        };
        // A negative or NaN value is refused by `validate`; never panic on it here.
        std::time::Duration::try_from_secs_f64(self.timeout_secs.unwrap_or(default))
            .unwrap_or(std::time::Duration::ZERO)
    }

    /// The model's name as lineage and request hashes record it: `model`, or for an
    /// embedded endpoint left at the default name, the GGUF file name without `.gguf`.
    pub fn model_name(&self) -> String {
        if self.kind != BackendKind::Embedded || self.model != default_model() {
            return self.model.clone();
        }
        let path = self.resolved_model_path();
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    }

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
fn default_concurrency() -> usize {
    8
}

impl EndpointConfig {
    pub fn openai(base_url: &str, model: &str) -> Self {
        EndpointConfig {
            kind: BackendKind::Openai,
            api: Default::default(),
            base_url: base_url.to_string(),
            model: model.to_string(),
            api_key_env: None,
            max_concurrency: default_concurrency(),
            timeout_secs: None,
            retry: RetryPolicy::default(),
            scheduling: Default::default(),
            max_error_rate: None,
            nemo_form: NemoPromptForm::default(),
            chat_template: ChatTemplate::default(),
            model_path: None,
            threads: None,
            context_tokens: None,
        }
    }

    /// A model run in process; `model_path` None means the default model.
    pub fn embedded(model_path: Option<&str>) -> Self {
        let mut e = Self::openai("", "default");
        e.kind = BackendKind::Embedded;
        e.model_path = model_path.map(str::to_string);
        e
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| CaiError::io(path, e))?;
        Self::parse(&text).map_err(|e| CaiError::bad_file(path, e.to_string()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| CaiError::Config(e.to_string()))?;
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
                return Err(CaiError::Config(format!(
                    "endpoints.{name}.max_concurrency must be at least 1"
                )));
            }
            if e.timeout().is_zero() {
                return Err(CaiError::Config(format!(
                    "endpoints.{name}.timeout_secs must be positive"
                )));
            }
            if e.retry.max_attempts == 0 {
                return Err(CaiError::Config(format!(
                    "endpoints.{name}.retry.max_attempts must be at least 1"
                )));
            }
            if e.kind == BackendKind::Embedded {
                if e.threads == Some(0) || e.context_tokens == Some(0) {
                    return Err(CaiError::Config(format!(
                        "endpoints.{name}: threads and context_tokens must be at least 1"
                    )));
                }
                continue;
            }
            if e.model_path.is_some() || e.threads.is_some() || e.context_tokens.is_some() {
                return Err(CaiError::Config(format!(
                    "endpoints.{name}: model_path, threads and context_tokens only apply to kind = \"embedded\""
                )));
            }
            url::Url::parse(&e.base_url).map_err(|err| {
                CaiError::Config(format!("endpoints.{name}.base_url '{}': {err}", e.base_url))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            c.endpoints["judge"].api_key_env.as_deref(),
            Some("NGC_API_KEY")
        );
        assert_eq!(c.endpoints["judge"].retry.max_attempts, 3);
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(Config::parse("[endpoints.p]\nbase_url='http://x'\nmax_concurency=3").is_err());
        assert!(Config::parse("[endpoints.p]\nbase_url='http://x'\nmax_concurrency=0").is_err());
        assert!(Config::parse("[endpoints.p]\nbase_url='not a url'").is_err());
    }
}
