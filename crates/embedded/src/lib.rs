//! caiflow's `embedded` backend: a GGUF model run inside caiflow by llama.cpp
//! (`llama-cpp-2`). The only crate that links C++ (llama.cpp) or renders Jinja chat
//! templates (minijinja); it implements [`caiflow_llm::Backend`] and is plugged into the LLM
//! layer through [`EmbeddedFactory`], so it must not know about tables, runs or stages.
//!
//! One [`engine`] thread per loaded model owns the weights and the KV cache and decodes every
//! request in flight together, one token of each per batch (continuous batching, as llama.cpp's
//! own server does). Endpoints that name the same model file and settings share that engine,
//! so `policy` and `judge` on the default model load it once and fill one batch.

mod chat;
mod engine;
mod sampling;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use caiflow_llm::config::{BackendConfig, EmbeddedConfig, EndpointConfig};
use caiflow_llm::{AttemptError, Backend, BackendFactory, ChatRequest, Completion, LlmError};

pub use engine::EngineSettings;

/// An endpoint's handle on a (possibly shared) engine, loaded on first use.
#[derive(Debug)]
pub struct EmbeddedBackend {
    settings: EngineSettings,
    /// `api = "completions"`: send the turns joined, without the chat template (base models).
    raw_prompt: bool,
    engine: tokio::sync::OnceCell<Result<Arc<engine::Engine>, String>>,
    engines: Arc<Engines>,
}

/// Builds `embedded` endpoints; endpoints built by one factory that name the same model file
/// and settings share one engine.
#[derive(Debug, Default)]
pub struct EmbeddedFactory {
    engines: Arc<Engines>,
}

impl BackendFactory for EmbeddedFactory {
    fn backend(&self, _name: &str, config: &EndpointConfig) -> Result<Arc<dyn Backend>, LlmError> {
        Ok(Arc::new(EmbeddedBackend::with_engines(
            config,
            self.engines.clone(),
        )))
    }
}

impl EmbeddedBackend {
    /// A backend with an engine of its own (endpoints share engines through
    /// [`EmbeddedFactory`]).
    pub fn new(config: &EndpointConfig) -> Self {
        Self::with_engines(config, Arc::default())
    }

    fn with_engines(config: &EndpointConfig, engines: Arc<Engines>) -> Self {
        let embedded = match &config.backend {
            BackendConfig::Embedded(e) => e.clone(),
            // Another kind's settings are not this backend's; its defaults apply.
            _ => EmbeddedConfig::default(),
        };
        EmbeddedBackend {
            engines,
            settings: EngineSettings {
                model_path: embedded.resolved_model_path(),
                threads: embedded.resolved_threads(),
                sequences: config.max_concurrency,
                context_tokens: embedded.resolved_context_tokens(),
            },
            raw_prompt: embedded.api == caiflow_llm::openai::OpenAiApi::Completions,
            engine: tokio::sync::OnceCell::new(),
        }
    }

    async fn engine(&self) -> Result<Arc<engine::Engine>, String> {
        self.engine
            .get_or_init(|| async {
                let settings = self.settings.clone();
                let engines = self.engines.clone();
                tokio::task::spawn_blocking(move || engines.get(&settings))
                    .await
                    .map_err(|e| format!("loading the model panicked: {e}"))?
            })
            .await
            .clone()
    }
}

#[async_trait::async_trait]
impl Backend for EmbeddedBackend {
    async fn prepare(&self) -> Result<(), LlmError> {
        self.engine().await.map(|_| ()).map_err(LlmError::Backend)
    }

    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        let engine = self.engine().await.map_err(AttemptError::fatal)?;
        engine.submit(request.clone(), self.raw_prompt).await
    }

    async fn count_prompt_tokens(&self, request: &ChatRequest) -> Option<u64> {
        let engine = self.engine().await.ok()?;
        engine.count(request.clone(), self.raw_prompt).await
    }
}

/// Engines alive, by settings: a second endpoint on the same model gets the running engine
/// instead of loading the weights again.
#[derive(Debug, Default)]
struct Engines(Mutex<HashMap<EngineKey, Weak<engine::Engine>>>);

impl Engines {
    fn get(&self, settings: &EngineSettings) -> Result<Arc<engine::Engine>, String> {
        let key = EngineKey::of(settings);
        let mut engines = self
            .0
            .lock()
            .map_err(|_| "the engine registry is poisoned".to_string())?;
        if let Some(engine) = engines.get(&key).and_then(Weak::upgrade) {
            return Ok(engine);
        }
        let engine = Arc::new(engine::Engine::start(settings.clone())?);
        engines.retain(|_, e| e.strong_count() > 0);
        engines.insert(key, Arc::downgrade(&engine));
        Ok(engine)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EngineKey {
    model_path: PathBuf,
    threads: usize,
    sequences: usize,
    context_tokens: u32,
}

impl EngineKey {
    fn of(s: &EngineSettings) -> Self {
        EngineKey {
            model_path: std::fs::canonicalize(&s.model_path)
                .unwrap_or_else(|_| s.model_path.clone()),
            threads: s.threads,
            sequences: s.sequences,
            context_tokens: s.context_tokens,
        }
    }
}
