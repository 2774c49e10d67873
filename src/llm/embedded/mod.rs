//! The `embedded` backend: a GGUF model run inside caiflow by llama.cpp (`llama-cpp-2`).
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
use std::sync::{Arc, LazyLock, Mutex, Weak};

use super::{AttemptError, Backend, ChatRequest, Completion};
use crate::config::EndpointConfig;

pub use engine::EngineSettings;

/// An endpoint's handle on a (possibly shared) engine, loaded on first use.
#[derive(Debug)]
pub struct EmbeddedBackend {
    settings: EngineSettings,
    /// `api = "completions"`: send the turns joined, without the chat template (base models).
    raw_prompt: bool,
    engine: tokio::sync::OnceCell<Result<Arc<engine::Engine>, String>>,
}

impl EmbeddedBackend {
    pub fn new(config: &EndpointConfig) -> Self {
        EmbeddedBackend {
            settings: EngineSettings {
                model_path: config.resolved_model_path(),
                threads: config.resolved_threads(),
                sequences: config.max_concurrency,
                context_tokens: config.resolved_context_tokens(),
            },
            raw_prompt: config.api == crate::llm::openai::OpenAiApi::Completions,
            engine: tokio::sync::OnceCell::new(),
        }
    }

    async fn engine(&self) -> Result<Arc<engine::Engine>, String> {
        self.engine
            .get_or_init(|| async {
                let settings = self.settings.clone();
                tokio::task::spawn_blocking(move || shared_engine(&settings))
                    .await
                    .map_err(|e| format!("loading the model panicked: {e}"))?
            })
            .await
            .clone()
    }
}

#[async_trait::async_trait]
impl Backend for EmbeddedBackend {
    async fn prepare(&self) -> Result<(), String> {
        self.engine().await.map(|_| ())
    }

    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        let engine = self.engine().await.map_err(AttemptError::fatal)?;
        engine.submit(request.clone(), self.raw_prompt).await
    }
}

/// Engines alive in this process, by settings: a second endpoint on the same model gets the
/// running engine instead of loading the weights again.
fn shared_engine(settings: &EngineSettings) -> Result<Arc<engine::Engine>, String> {
    static ENGINES: LazyLock<Mutex<HashMap<EngineKey, Weak<engine::Engine>>>> =
        LazyLock::new(Default::default);
    let key = EngineKey::of(settings);
    let mut engines = ENGINES
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
