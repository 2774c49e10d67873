//! The decode loop: one OS thread owns a loaded model and its KV cache and advances every
//! admitted request together.
//!
//! Each of `sequences` slots is one llama.cpp sequence with its own part of the KV cache. A
//! batch carries the next token of every generating sequence plus as much pending prompt as
//! fits, so new requests join between tokens instead of waiting for a round to end. A slot
//! keeps the tokens its cache holds; a new request goes to the free slot sharing the longest
//! prefix with its prompt and only the rest is evaluated. When another sequence holds (or is
//! evaluating) a longer shared prefix, the request copies that sequence's cache (waiting for
//! the evaluation first): the few-shot turns every SL-CAI prompt starts with are evaluated
//! once, not once per request.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::chat::ChatRenderer;
use crate::sampling;
use caiflow_llm::{AttemptError, ChatRequest, Completion};

/// Tokens evaluated per `decode` call at most (prompt chunks plus one token per sequence).
const BATCH_TOKENS: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    pub model_path: PathBuf,
    pub threads: usize,
    /// Sequences decoded together (the endpoint's `max_concurrency`).
    pub sequences: usize,
    /// KV cache per sequence, in tokens.
    pub context_tokens: u32,
}

type Reply = oneshot::Sender<Result<Completion, AttemptError>>;

struct Job {
    request: ChatRequest,
    /// Tokenize the joined turns as they are instead of rendering the chat template.
    raw_prompt: bool,
    /// Only count the prompt's tokens (answered with an empty completion whose
    /// `prompt_tokens` is the count): a dry run's exact figure.
    count_only: bool,
    reply: Reply,
}

/// The handle requests are submitted through; dropping the last one stops the thread and
/// frees the model.
#[derive(Debug)]
pub struct Engine {
    jobs: Sender<Job>,
}

impl Engine {
    /// Load the model on a new thread; returns once it is ready or failed to load.
    pub fn start(settings: EngineSettings) -> Result<Engine, String> {
        if !settings.model_path.is_file() {
            return Err(format!(
                "model file {} not found: run `caiflow model pull` to fetch the default model, or set model_path in caiflow.toml",
                settings.model_path.display()
            ));
        }
        let (jobs, inbox) = channel::<Job>();
        let (ready_tx, ready_rx) = channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name("caiflow-llama".into())
            .spawn(move || run(settings, inbox, ready_tx))
            .map_err(|e| format!("cannot start the model thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the model thread stopped while loading".to_string())??;
        Ok(Engine { jobs })
    }

    pub async fn submit(
        &self,
        request: ChatRequest,
        raw_prompt: bool,
    ) -> Result<Completion, AttemptError> {
        self.send(request, raw_prompt, false).await
    }

    /// The request's prompt tokens, as the model's tokenizer counts them.
    pub async fn count(&self, request: ChatRequest, raw_prompt: bool) -> Option<u64> {
        self.send(request, raw_prompt, true)
            .await
            .ok()
            .and_then(|c| c.prompt_tokens)
    }

    async fn send(
        &self,
        request: ChatRequest,
        raw_prompt: bool,
        count_only: bool,
    ) -> Result<Completion, AttemptError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                request,
                raw_prompt,
                count_only,
                reply,
            })
            .map_err(|_| AttemptError::fatal("the model thread is gone"))?;
        answer
            .await
            .map_err(|_| AttemptError::retryable("the model thread dropped the request"))?
    }
}

fn backend() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let enabled = std::env::var_os("CAIFLOW_LLAMA_LOG").is_some();
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(enabled),
            );
            LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The thread body: load, report readiness, then serve until every handle is dropped.
fn run(settings: EngineSettings, inbox: Receiver<Job>, ready: Sender<Result<(), String>>) {
    let started = std::time::Instant::now();
    let loaded = (|| {
        let backend = backend()?;
        let model =
            LlamaModel::load_from_file(backend, &settings.model_path, &LlamaModelParams::default())
                .map_err(|e| format!("cannot load {}: {e}", settings.model_path.display()))?;
        Ok::<_, String>((backend, model))
    })();
    let (backend, model) = match loaded {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let sequences = settings.sequences.max(1);
    let threads = settings.threads.max(1) as i32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.context_tokens * sequences as u32))
        .with_n_batch(BATCH_TOKENS as u32)
        .with_n_ubatch(BATCH_TOKENS as u32)
        .with_n_seq_max(sequences as u32)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create a llama.cpp context: {e}")));
            return;
        }
    };
    let renderer = match renderer_for(&model) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tracing::info!(
        "embedded model {} loaded in {:.1} s: {} sequences x {} tokens, {} thread(s)",
        settings.model_path.display(),
        started.elapsed().as_secs_f64(),
        sequences,
        settings.context_tokens,
        threads
    );
    let _ = ready.send(Ok(()));
    Decoder {
        model: &model,
        ctx,
        renderer,
        slots: (0..sequences).map(|_| Slot::default()).collect(),
        context_tokens: settings.context_tokens as usize,
        batch: LlamaBatch::new(BATCH_TOKENS, 1),
        waiting: Vec::new(),
    }
    .serve(inbox);
}

fn renderer_for(model: &LlamaModel) -> Result<ChatRenderer, String> {
    let template = model
        .chat_template(None)
        .ok()
        .and_then(|t| t.to_string().ok());
    let vocab = model.vocab();
    let text =
        |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    ChatRenderer::new(template, text(vocab.bos()), text(vocab.eos()))
}

/// One llama.cpp sequence: the tokens its KV cache holds, and the request it serves now.
#[derive(Default)]
struct Slot {
    cached: Vec<LlamaToken>,
    active: Option<Generation>,
}

/// A request being served.
struct Generation {
    reply: Reply,
    sampler: LlamaSampler,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the cache.
    prompt_done: usize,
    /// The sampled token to evaluate next.
    next: Option<LlamaToken>,
    /// Position in the batch whose logits belong to this sequence, after a decode.
    logits_at: Option<i32>,
    text: Vec<u8>,
    generated: u64,
    max_tokens: u64,
    stops: Vec<String>,
    top_logprobs: Option<usize>,
    logprobs: Vec<Vec<(String, f64)>>,
}

struct Decoder<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    renderer: ChatRenderer,
    slots: Vec<Slot>,
    context_tokens: usize,
    batch: LlamaBatch<'static>,
    /// Requests held back until a sequence has evaluated the prefix they share with it.
    waiting: Vec<Admission>,
}

/// A tokenized request, ready for a sequence.
struct Admission {
    reply: Reply,
    sampler: LlamaSampler,
    prompt: Vec<LlamaToken>,
    params: caiflow_llm::SamplingParams,
}

/// Copying a sequence's cache costs about as much as evaluating a token or two; below this
/// many shared tokens it is not worth it.
const WORTH_COPYING: usize = 32;

impl Decoder<'_> {
    fn serve(mut self, inbox: Receiver<Job>) {
        loop {
            if !self.admit(&inbox) {
                return;
            }
            self.drop_abandoned();
            if self.slots.iter().all(|s| s.active.is_none()) {
                continue;
            }
            self.step();
        }
    }

    /// Fill free slots from the inbox; blocks only when nothing is running. False when every
    /// handle is gone and nothing is left to do.
    fn admit(&mut self, inbox: &Receiver<Job>) -> bool {
        for admission in std::mem::take(&mut self.waiting) {
            self.place(admission);
        }
        while self.slots.iter().any(|s| s.active.is_none()) {
            let idle = self.slots.iter().all(|s| s.active.is_none());
            let job = if idle {
                match inbox.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match inbox.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => return true,
                    Err(TryRecvError::Disconnected) => return true,
                }
            };
            if let Some(admission) = self.prepare(job) {
                self.place(admission);
            }
        }
        true
    }

    /// Tokenize a request and build its sampler; a request that cannot run is answered here.
    fn prepare(&mut self, job: Job) -> Option<Admission> {
        let Job {
            request,
            raw_prompt,
            count_only,
            reply,
        } = job;
        let tokens = (|| {
            let text = if raw_prompt {
                request.joined_text()
            } else {
                self.renderer
                    .render(&request.messages)
                    .map_err(AttemptError::fatal)?
            };
            Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
        })();
        if count_only {
            // A count travels back as the prompt size of an empty completion.
            let _ = reply.send(tokens.map(|t| Completion {
                prompt_tokens: Some(t.len() as u64),
                ..Default::default()
            }));
            return None;
        }
        let prepared = tokens.and_then(|prompt| {
            if prompt.is_empty() {
                return Err(AttemptError::fatal(
                    "the prompt is empty after tokenization",
                ));
            }
            if prompt.len() >= self.context_tokens {
                return Err(AttemptError::fatal(format!(
                    "the prompt is {} tokens; each sequence's context holds {} (raise context_tokens)",
                    prompt.len(),
                    self.context_tokens
                )));
            }
            let sampler =
                sampling::sampler_for(self.model, &request.params).map_err(AttemptError::fatal)?;
            Ok((prompt, sampler))
        });
        match prepared {
            Ok((prompt, sampler)) => Some(Admission {
                reply,
                sampler,
                prompt,
                params: request.params,
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    /// Put a request in the free slot whose cache shares the longest prefix with it — or hold
    /// it back while another sequence is still evaluating a long prefix they share, so that
    /// prefix is evaluated once and copied (the first wave of SL-CAI requests all start with
    /// the same few-shot turns).
    fn place(&mut self, admission: Admission) {
        let free = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .map(|(i, s)| (i, common_prefix(&s.cached, &admission.prompt)))
            .max_by_key(|&(_, n)| n);
        let own = free.map_or(0, |(_, n)| n);
        let coming = self
            .slots
            .iter()
            .filter_map(|s| s.active.as_ref().map(|g| (s, g)))
            .map(|(s, g)| (s.cached.len(), common_prefix(&g.prompt, &admission.prompt)))
            .any(|(evaluated, common)| common >= own + WORTH_COPYING && evaluated < common);
        let Some((slot_id, shared)) = free.filter(|_| !coming) else {
            self.waiting.push(admission);
            return;
        };
        let Admission {
            reply,
            sampler,
            prompt,
            params,
        } = admission;
        let shared = self.borrow_prefix(slot_id, shared, &prompt);
        // Keep at least the last prompt token to evaluate: its logits give the first token.
        let keep = shared.min(prompt.len() - 1);
        if self
            .ctx
            .kv_cache_seq_rm(slot_id as i32, Some(keep as u32), None)
            .is_err()
        {
            let _ = self.ctx.kv_cache_seq_rm(slot_id as i32, None, None);
            self.slots[slot_id].cached.clear();
        } else {
            self.slots[slot_id].cached.truncate(keep);
        }
        let prompt_done = self.slots[slot_id].cached.len();
        tracing::debug!(
            slot = slot_id,
            prompt_tokens = prompt.len(),
            reused = prompt_done,
            "embedded: request admitted"
        );
        let room = (self.context_tokens - prompt.len()) as u64;
        let max_tokens = params.max_tokens.map_or(room, |m| (m as u64).min(room));
        self.slots[slot_id].active = Some(Generation {
            reply,
            sampler,
            prompt,
            prompt_done,
            next: None,
            logits_at: None,
            text: Vec::new(),
            generated: 0,
            max_tokens,
            stops: params.stop,
            top_logprobs: params.top_logprobs.map(|n| n as usize),
            logprobs: Vec::new(),
        });
    }

    /// When another sequence (busy or not) holds a much longer prefix of `prompt` than
    /// `slot_id` does, copy that sequence's cache into `slot_id`: the first wave of requests
    /// then evaluates the shared few-shot turns once instead of once per sequence. Returns
    /// the prefix `slot_id` now holds. All cached tokens have been decoded (admission happens
    /// between decodes), and a whole-sequence copy is what llama.cpp supports across
    /// sequences with separate caches; the tail past the prefix is removed by the caller.
    fn borrow_prefix(&mut self, slot_id: usize, own: usize, prompt: &[LlamaToken]) -> usize {
        let donor = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != slot_id)
            .map(|(i, s)| (i, common_prefix(&s.cached, prompt)))
            .max_by_key(|&(_, n)| n);
        match donor {
            Some((donor, n)) if n >= own + WORTH_COPYING => {
                if self
                    .ctx
                    .kv_cache_seq_cp(donor as i32, slot_id as i32, None, None)
                    .is_err()
                {
                    return own;
                }
                let copied = self.slots[donor].cached.clone();
                self.slots[slot_id].cached = copied;
                tracing::debug!(
                    from = donor,
                    to = slot_id,
                    tokens = n,
                    "embedded: prefix borrowed"
                );
                n
            }
            _ => own,
        }
    }

    /// Requests whose caller gave up (timeout, cancelled query) stop using a slot.
    fn drop_abandoned(&mut self) {
        self.waiting.retain(|a| !a.reply.is_closed());
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(|g| g.reply.is_closed()) {
                slot.active = None;
            }
        }
    }

    /// One decode: the next token of every generating sequence, then prompt chunks.
    fn step(&mut self) {
        self.batch.clear();
        let mut fill = || -> Result<(), String> {
            for (id, slot) in self.slots.iter_mut().enumerate() {
                let Some(g) = slot.active.as_mut() else {
                    continue;
                };
                g.logits_at = None;
                if let Some(token) = g.next.take() {
                    g.logits_at = Some(self.batch.n_tokens());
                    add(&mut self.batch, token, slot.cached.len(), id, true)?;
                    slot.cached.push(token);
                }
            }
            for (id, slot) in self.slots.iter_mut().enumerate() {
                let Some(g) = slot.active.as_mut() else {
                    continue;
                };
                while g.prompt_done < g.prompt.len()
                    && (self.batch.n_tokens() as usize) < BATCH_TOKENS
                {
                    let token = g.prompt[g.prompt_done];
                    let last = g.prompt_done + 1 == g.prompt.len();
                    if last {
                        g.logits_at = Some(self.batch.n_tokens());
                    }
                    add(&mut self.batch, token, slot.cached.len(), id, last)?;
                    slot.cached.push(token);
                    g.prompt_done += 1;
                }
            }
            Ok(())
        };
        if let Err(e) = fill() {
            self.fail_all(&format!("building the batch: {e}"));
            return;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            self.fail_all(&format!("llama.cpp decode failed: {e}"));
            return;
        }
        for slot in &mut self.slots {
            let Some(g) = slot.active.as_mut() else {
                continue;
            };
            let Some(at) = g.logits_at.take() else {
                continue;
            };
            let token = g.sampler.sample(&self.ctx, at);
            if let Some(n) = g.top_logprobs.filter(|&n| n > 0) {
                let vocab = self.model.vocab();
                let top = sampling::top_logprobs(self.ctx.get_logits_ith(at), n)
                    .into_iter()
                    .map(|(id, lp)| {
                        let piece = vocab.token_to_piece(LlamaToken(id as i32), true, None);
                        (String::from_utf8_lossy(&piece).into_owned(), lp)
                    })
                    .collect();
                g.logprobs.push(top);
            }
            if let Some(reason) = advance(self.model, g, token)
                && let Some(g) = slot.active.take()
            {
                finish(g, reason);
            }
        }
    }

    /// A failed decode leaves the cache in an unknown state: fail the requests (they are
    /// retried) and start the slots empty.
    fn fail_all(&mut self, message: &str) {
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if let Some(g) = slot.active.take() {
                let _ = g.reply.send(Err(AttemptError::retryable(message)));
            }
            let _ = self.ctx.kv_cache_seq_rm(id as i32, None, None);
            slot.cached.clear();
        }
    }
}

fn add(
    batch: &mut LlamaBatch,
    token: LlamaToken,
    pos: usize,
    seq: usize,
    logits: bool,
) -> Result<(), String> {
    batch
        .add(token, pos as i32, &[seq as i32], logits)
        .map_err(|e| e.to_string())
}

/// Take a sampled token; returns the finish reason when the generation is over.
fn advance(model: &LlamaModel, g: &mut Generation, token: LlamaToken) -> Option<&'static str> {
    let vocab = model.vocab();
    if vocab.is_eog(token) {
        return Some("stop");
    }
    g.generated += 1;
    g.text.extend(vocab.token_to_piece(token, false, None));
    if !g.stops.is_empty() {
        let text = String::from_utf8_lossy(&g.text);
        if let Some(at) = sampling::stop_at(&text, &g.stops) {
            let kept = text[..at].as_bytes().to_vec();
            g.text = kept;
            return Some("stop");
        }
    }
    if g.generated >= g.max_tokens {
        return Some("length");
    }
    g.next = Some(token);
    None
}

fn finish(g: Generation, reason: &str) {
    let completion = Completion {
        text: String::from_utf8_lossy(&g.text).into_owned(),
        finish_reason: Some(reason.to_string()),
        prompt_tokens: Some(g.prompt.len() as u64),
        completion_tokens: Some(g.generated),
        top_logprobs: g.top_logprobs.map(|_| g.logprobs),
        ..Default::default()
    };
    let _ = g.reply.send(Ok(completion));
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
