//! caiflow-testkit (unpublished): test utilities shared by caiflow's tests and benchmarks.
//! It owns the one server caiflow's tests talk to when no real model is needed: an
//! OpenAI-compatible (and NeMo `/generate`) mock, also run standalone as `caiflow-mock`. It is
//! a dev-dependency only: nothing users build links axum.
//!
//! It answers deterministically and can be told to misbehave: a queue of faults served to
//! the next requests in order (hostile ones too: a huge `Retry-After`, absurd `usage`, an
//! endless or oversized body), or a marker in the last user message that makes every such
//! request fail (`[[fail:500]]`, `[[fail:400]]`) or answer late (`[[delay:1500]]`, in ms).
//! It counts requests, by fingerprint too.
//!
//! [`cluster::LocalCluster`] runs a scheduler and executors as processes on this machine.

mod anthropic;
pub mod batch;
pub mod cluster;
pub mod proc_status;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One misbehaviour, served to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited {
        retry_after_secs: u64,
    },
    /// Sleep this long before answering normally (longer than the client's timeout: a hang).
    Hang(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with empty content.
    Empty,
    /// The connection is dropped mid-response.
    Drop,
    /// 429 with this `Retry-After` value, verbatim (`1e20`, `inf`, a date).
    RetryAfter(String),
    /// 200 with this body, verbatim (a reply with absurd `usage`, say).
    Body(String),
    /// 200 whose body never ends (no Content-Length; chunks until the client hangs up).
    Endless,
    /// 200 with a body of this many bytes, announced by its Content-Length.
    Oversized(usize),
}

/// How the server behaves under load (the load-and-fault endpoint of benchmarks).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadProfile {
    /// Requests served at once; more wait in a queue (a server's batch size).
    pub capacity: Option<usize>,
    /// Latency of every answer, ± `jitter` (a share: 0.2 = ±20 %).
    pub latency: Duration,
    pub jitter: f64,
    /// Extra time per generated token (`max_tokens` of the request, else 16).
    pub per_token: Duration,
    /// Probability that a request gets a fault, chosen evenly among 500, 429 with
    /// Retry-After, a hang, a dropped connection, a non-JSON 200 and empty content.
    pub fault_rate: f64,
    /// How long a hang lasts (make it longer than the client's timeout).
    pub hang: Duration,
}

#[derive(Debug, Default)]
pub struct MockState {
    faults: Mutex<VecDeque<Fault>>,
    pub requests: AtomicU64,
    in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    by_fingerprint: Mutex<BTreeMap<String, u64>>,
    /// Every request body received, in order of arrival.
    bodies: Mutex<Vec<Value>>,
    /// Fixed latency added to every answer.
    latency: Mutex<Duration>,
    /// Skip keeping request bodies (long benchmarks).
    forget_bodies: std::sync::atomic::AtomicBool,
    /// When the first request since the last reset arrived.
    first_request: Mutex<Option<std::time::Instant>>,
    /// Canned answers served, in order, before the default one.
    replies: Mutex<VecDeque<String>>,
    profile: Mutex<LoadProfile>,
    capacity: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Top log-probabilities of the first token, returned when a request asks for them.
    logprobs: Mutex<Option<Vec<(String, f64)>>>,
    /// Scripted top log-probabilities, one set per request that asks for them, in order,
    /// before `logprobs`.
    scripted_logprobs: Mutex<VecDeque<Vec<(String, f64)>>>,
    /// How answers carry a reasoning model's thinking: `reasoning_content` or `reasoning`
    /// (a message field, with `completion_tokens_details.reasoning_tokens`), `think`
    /// (`<think>…</think>` before the content), or not at all.
    reasoning: Mutex<Option<String>>,
    /// Both providers' batch APIs: files, batches, their results.
    batches: Mutex<batch::Batches>,
    /// Prompt prefixes marked cacheable that were seen (the Anthropic mock's prompt cache).
    cached_prefixes: Mutex<std::collections::BTreeSet<String>>,
    /// Report OpenAI's automatic prompt caching: a prompt whose turns before the last were
    /// seen before has them counted as `prompt_tokens_details.cached_tokens`.
    openai_cache: std::sync::atomic::AtomicBool,
    /// Words the default answer is padded to (0: as it is).
    answer_words: std::sync::atomic::AtomicUsize,
    /// Cut answers longer than the request's `max_tokens` words (`finish_reason = length`).
    honor_max_tokens: std::sync::atomic::AtomicBool,
    /// Tokens reported in `usage` over all answers: a word is a token, and each message
    /// costs 3 more in the prompt.
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

pub struct MockServer {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockServer {
    /// Start on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<MockServer> {
        Self::start_on("127.0.0.1:0").await
    }

    async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<MockServer> {
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/messages", post(anthropic::messages))
            .route("/v1/files", post(batch::upload))
            .route("/v1/files/{id}/content", get(batch::file_content))
            .route("/v1/batches", post(batch::create_openai))
            .route("/v1/batches/{id}", get(batch::get_openai))
            .route("/v1/batches/{id}/cancel", post(batch::cancel_openai))
            .route("/v1/messages/batches", post(batch::create_anthropic))
            .route("/v1/messages/batches/{id}", get(batch::get_anthropic))
            .route(
                "/v1/messages/batches/{id}/results",
                get(batch::results_anthropic),
            )
            .route(
                "/v1/messages/batches/{id}/cancel",
                post(batch::cancel_anthropic),
            )
            .route("/stats", axum::routing::get(stats_handler))
            .route("/generate", put(generate))
            // The batch APIs take files and bodies of up to 200 MB (OpenAI) and 256 MB
            // (Anthropic); axum's default limit is 2 MB.
            .layer(axum::extract::DefaultBodyLimit::max(300 << 20))
            .with_state(state.clone());
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockServer { addr, state, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(faults);
    }

    /// Behave like a loaded server (capacity, latency with jitter, random faults).
    pub fn set_profile(&self, profile: LoadProfile) {
        *self
            .state
            .capacity
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = profile
            .capacity
            .map(|c| Arc::new(tokio::sync::Semaphore::new(c)));
        *self.state.latency.lock().unwrap_or_else(|p| p.into_inner()) = profile.latency;
        *self.state.profile.lock().unwrap_or_else(|p| p.into_inner()) = profile;
    }

    /// Keep request bodies for [`MockServer::bodies`] (the default) or not (long benchmarks,
    /// where they would dominate memory).
    pub fn keep_bodies(&self, keep: bool) {
        self.state.forget_bodies.store(!keep, Ordering::SeqCst);
    }

    /// Counters as JSON: requests, distinct and repeated fingerprints, peak concurrency.
    pub fn stats(&self) -> Value {
        stats(&self.state)
    }

    /// Start on a given address (the `caiflow-mock` binary).
    pub async fn start_on(addr: &str) -> std::io::Result<MockServer> {
        Self::serve(tokio::net::TcpListener::bind(addr).await?).await
    }

    /// Answer the next requests with these texts, in order.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = String>) {
        self.state
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }

    /// Return these (token, logprob) alternatives for the first token when asked for logprobs.
    pub fn set_logprobs(&self, top: Option<Vec<(String, f64)>>) {
        *self
            .state
            .logprobs
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = top;
    }

    /// Serve these top log-probabilities, one set per request that asks for logprobs, in
    /// order (then the fixed ones of [`Self::set_logprobs`]).
    pub fn push_logprobs(&self, sets: impl IntoIterator<Item = Vec<(String, f64)>>) {
        self.state
            .scripted_logprobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(sets);
    }

    /// Answer as a reasoning model: `"reasoning_content"`, `"reasoning"` (a message field)
    /// or `"think"` (`<think>…</think>` in the content); `None`: no thinking. The thinking
    /// is `Thinking about: {the last user turn's start}`.
    pub fn set_reasoning(&self, mode: Option<&str>) {
        *self
            .state
            .reasoning
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = mode.map(str::to_string);
    }

    /// Report cached prompt tokens as OpenAI's automatic caching does (see `openai_cache`).
    pub fn set_openai_cache(&self, on: bool) {
        self.state.openai_cache.store(on, Ordering::SeqCst);
    }

    /// Pad the default answer to `words` words (an answer of realistic size for memory
    /// benchmarks; 0 leaves it short).
    pub fn set_answer_words(&self, words: usize) {
        self.state.answer_words.store(words, Ordering::SeqCst);
    }

    /// Cut answers to the request's `max_tokens` words, with `finish_reason = length`, as a
    /// real server does (off by default: the default answer ignores `max_tokens`).
    pub fn honor_max_tokens(&self, on: bool) {
        self.state.honor_max_tokens.store(on, Ordering::SeqCst);
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.state
            .bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// When the first request since [`MockServer::reset_first_request`] arrived.
    pub fn first_request_at(&self) -> Option<std::time::Instant> {
        *self
            .state
            .first_request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn reset_first_request(&self) {
        *self
            .state
            .first_request
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Requests whose fingerprint was seen more than once.
    pub fn repeated(&self) -> u64 {
        let map = self
            .state
            .by_fingerprint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.values().map(|n| n.saturating_sub(1)).sum()
    }
}

fn last_user_text(body: &Value) -> String {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        return messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content").and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
    }
    body.get("sentences")
        .and_then(|s| s.get(0))
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| s.to_string())
        })
        .unwrap_or_default()
}

struct InFlight<'a>(&'a MockState);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The number in a `[[name:N]]` marker.
fn marker(text: &str, open: &str) -> Option<u64> {
    text.split(open).nth(1)?.split("]]").next()?.parse().ok()
}

/// Shared bookkeeping; returns the fault to serve, if any.
async fn admit(state: &MockState, body: &Value) -> Option<Fault> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    state
        .first_request
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(std::time::Instant::now);
    let fingerprint = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    *state
        .by_fingerprint
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(fingerprint)
        .or_default() += 1;
    if !state.forget_bodies.load(Ordering::Relaxed) {
        state
            .bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(body.clone());
    }
    let profile = state
        .profile
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut latency = *state.latency.lock().unwrap_or_else(|p| p.into_inner());
    if profile.jitter > 0.0 && !latency.is_zero() {
        let f = 1.0 + profile.jitter * (2.0 * rand::random::<f64>() - 1.0);
        latency = latency.mul_f64(f.max(0.0));
    }
    if !profile.per_token.is_zero() {
        let tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16) as u32;
        latency += profile.per_token * tokens;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if profile.fault_rate > 0.0 && rand::random::<f64>() < profile.fault_rate {
        let hang = if profile.hang.is_zero() {
            Duration::from_secs(5)
        } else {
            profile.hang
        };
        return Some(match rand::random::<u32>() % 6 {
            0 => Fault::Status(500),
            1 => Fault::RateLimited {
                retry_after_secs: 0,
            },
            2 => Fault::Hang(hang),
            3 => Fault::Drop,
            4 => Fault::Garbage,
            _ => Fault::Empty,
        });
    }
    let text = last_user_text(body);
    let conversation = body.to_string();
    if let Some(ms) = marker(&conversation, "[[delay:") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = text
        .split("[[fail:")
        .nth(1)
        .and_then(|r| r.split("]]").next())
        .and_then(|c| c.parse().ok())
    {
        return Some(Fault::Status(code));
    }
    state
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front()
}

async fn serve_fault(fault: Option<Fault>) -> Result<(), Response> {
    match fault {
        None => Ok(()),
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err((status, json!({"error": {"message": format!("injected {code}")}}).to_string()).into_response())
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", retry_after_secs.into());
            Err((StatusCode::TOO_MANY_REQUESTS, headers, "slow down").into_response())
        }
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Some(Fault::Garbage) => Err((StatusCode::OK, "<html>definitely not json").into_response()),
        Some(Fault::Drop) => {
            // A body that fails mid-stream: the server drops the connection.
            let failing = futures::stream::once(async { Err::<bytes::Bytes, std::io::Error>(std::io::Error::other("dropped")) });
            Err((StatusCode::OK, axum::body::Body::from_stream(failing)).into_response())
        }
        Some(Fault::RetryAfter(value)) => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = value.parse() {
                headers.insert("retry-after", v);
            }
            Err((StatusCode::TOO_MANY_REQUESTS, headers, "slow down").into_response())
        }
        Some(Fault::Body(body)) => Err((StatusCode::OK, body).into_response()),
        Some(Fault::Endless) => {
            let chunk = bytes::Bytes::from(vec![b' '; 64 << 10]);
            let endless = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            Err((StatusCode::OK, axum::body::Body::from_stream(endless)).into_response())
        }
        Some(Fault::Oversized(n)) => Err((StatusCode::OK, vec![b'x'; n]).into_response()),
        Some(Fault::Empty) => Err((
            StatusCode::OK,
            json!({"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}).to_string(),
        )
            .into_response()),
    }
}

fn stats(state: &MockState) -> Value {
    let map = state
        .by_fingerprint
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    json!({
        "requests": state.requests.load(Ordering::SeqCst),
        "distinct": map.len(),
        "repeated": map.values().map(|n| n.saturating_sub(1)).sum::<u64>(),
        "peak_in_flight": state.peak_in_flight.load(Ordering::SeqCst),
        "prompt_tokens": state.prompt_tokens.load(Ordering::SeqCst),
        "completion_tokens": state.completion_tokens.load(Ordering::SeqCst),
    })
}

async fn stats_handler(State(state): State<Arc<MockState>>) -> Response {
    (StatusCode::OK, stats(&state).to_string()).into_response()
}

/// A deterministic answer that shows what it answered.
pub fn mock_answer(prompt: &str) -> String {
    let head: String = prompt.chars().take(60).collect();
    format!("Mock answer about: {head}")
}

/// `answer` followed by filler words up to `words` words in all.
fn padded(mut answer: String, words: usize) -> String {
    const FILLER: [&str; 8] = [
        "harmless", "honest", "helpful", "careful", "answer", "about", "the", "request",
    ];
    let have = answer.split_whitespace().count();
    for i in have..words {
        answer.push(' ');
        answer.push_str(FILLER[i % FILLER.len()]);
    }
    answer
}

/// The default answer, tagged with the temperature when one was sent (so candidates sampled
/// at different temperatures differ).
fn default_answer(body: &Value) -> String {
    let answer = mock_answer(&last_user_text(body));
    match body.get("temperature").and_then(Value::as_f64) {
        Some(t) => format!("{answer} (t={t})"),
        None => answer,
    }
}

async fn chat(State(state): State<Arc<MockState>>, body: axum::Json<Value>) -> Response {
    let body = body.0;
    let peak = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak_in_flight.fetch_max(peak, Ordering::SeqCst);
    let _guard = InFlight(&state);
    let capacity = state
        .capacity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _slot = match &capacity {
        Some(c) => c.clone().acquire_owned().await.ok(),
        None => None,
    };
    if let Err(r) = serve_fault(admit(&state, &body).await).await {
        return r;
    }
    let canned = state
        .replies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    let content = canned.unwrap_or_else(|| {
        padded(
            default_answer(&body),
            state.answer_words.load(Ordering::Relaxed),
        )
    });
    let mut finish = "stop";
    let mut content = content;
    let limit = body.get("max_tokens").and_then(Value::as_u64);
    if let Some(limit) = limit.filter(|_| state.honor_max_tokens.load(Ordering::Relaxed))
        && content.split_whitespace().count() as u64 > limit
    {
        content = content
            .split_whitespace()
            .take(limit as usize)
            .collect::<Vec<_>>()
            .join(" ");
        finish = "length";
    }
    let prompt_tokens: u64 = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    m.get("content")
                        .and_then(Value::as_str)
                        .map_or(0, |c| c.split_whitespace().count() as u64)
                        + 3
                })
                .sum()
        })
        .unwrap_or(0);
    let mode = state
        .reasoning
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let thinking = mode.as_ref().map(|_| {
        let head: String = last_user_text(&body).chars().take(40).collect();
        format!("Thinking about: {head}")
    });
    let reasoning_tokens = thinking
        .as_deref()
        .map_or(0, |t| t.split_whitespace().count() as u64);
    let completion_tokens = content.split_whitespace().count() as u64 + reasoning_tokens;
    state
        .prompt_tokens
        .fetch_add(prompt_tokens, Ordering::SeqCst);
    state
        .completion_tokens
        .fetch_add(completion_tokens, Ordering::SeqCst);
    let mut message = json!({"role": "assistant", "content": content});
    let mut usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    if state.openai_cache.load(Ordering::Relaxed)
        && let Some((_, prefix)) = body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.split_last())
        && !prefix.is_empty()
    {
        let key = hex::encode(Sha256::digest(
            Value::from(prefix.to_vec()).to_string().as_bytes(),
        ));
        let seen = !state
            .cached_prefixes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        if seen {
            let cached: u64 = prefix
                .iter()
                .map(|m| {
                    m.get("content")
                        .and_then(Value::as_str)
                        .map_or(0, |c| c.split_whitespace().count() as u64)
                        + 3
                })
                .sum();
            usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
        }
    }
    match (mode.as_deref(), &thinking) {
        (Some("think"), Some(t)) => {
            message["content"] = json!(format!("<think>\n{t}\n</think>\n\n{content}"))
        }
        (Some(field), Some(t)) => {
            message[field] = json!(t);
            usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning_tokens});
        }
        _ => {}
    }
    let mut choice = json!({"index": 0, "message": message, "finish_reason": finish});
    let wants_logprobs = body
        .get("logprobs")
        .is_some_and(|v| v.as_bool() == Some(true));
    let scripted = wants_logprobs
        .then(|| {
            state
                .scripted_logprobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
        })
        .flatten();
    if let Some(top) = scripted.or_else(|| {
        state
            .logprobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|_| wants_logprobs)
    }) {
        let alternatives: Vec<Value> = top
            .iter()
            .map(|(t, l)| json!({"token": t, "logprob": l}))
            .collect();
        let (token, logprob) = top.first().cloned().unwrap_or_default();
        // A one-token answer is the most likely token, as a real server's greedy one is.
        if limit == Some(1) && !token.is_empty() {
            choice["message"]["content"] = json!(token);
        }
        choice["logprobs"] = json!({"content": [{"token": token, "logprob": logprob, "top_logprobs": alternatives}]});
    }
    let reply = json!({
        "id": "mock",
        "object": "chat.completion",
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "choices": [choice],
        "usage": usage,
    });
    (StatusCode::OK, reply.to_string()).into_response()
}

async fn generate(State(state): State<Arc<MockState>>, body: axum::Json<Value>) -> Response {
    let body = body.0;
    let _guard = {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(&state)
    };
    if let Err(r) = serve_fault(admit(&state, &body).await).await {
        return r;
    }
    let sentence = body
        .get("sentences")
        .and_then(|s| s.get(0))
        .cloned()
        .unwrap_or(Value::Null);
    let prompt = match &sentence {
        Value::String(s) => s.clone(),
        other => caiflow_llm::chat_template::ChatTemplate::default().render(
            &serde_json::from_value::<Vec<caiflow_llm::Message>>(other.clone()).unwrap_or_default(),
            true,
        ),
    };
    let full = format!("{prompt}{}\n<extra_id_1>", mock_answer("generate"));
    (StatusCode::OK, json!({"sentences": [full]}).to_string()).into_response()
}
