//! A named endpoint: backend + shared concurrency budget + timeout + retries + counters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, Config, EndpointConfig};
use crate::error::{LlmError, Result};
use crate::gate::{Gate, GateConfig};
use crate::hash::RequestHash;
use crate::nemo::NemoBackend;
use crate::openai::{ApiKey, OpenAiBackend};
use crate::retry::RetryPolicy;
use crate::spend::{Budget, Ledger, Price, Usage, estimate_prompt_tokens};
use crate::{AttemptError, Backend, ChatRequest, Completion};

/// Builds the backends of endpoint kinds this crate does not implement itself (the embedded
/// model, in its own crate), so the LLM layer needs no dependency on them.
pub trait BackendFactory: Send + Sync {
    fn backend(&self, name: &str, config: &EndpointConfig) -> Result<Arc<dyn Backend>>;
}

/// Requests an endpoint must have answered before its error rate can abort a run.
pub const MIN_ERROR_SAMPLE: u64 = 20;

/// The result of one logical request after all attempts.
#[derive(Clone, Debug)]
pub struct CallOutcome {
    pub request_hash: RequestHash,
    pub result: Result<Completion, LlmError>,
    pub attempts: u32,
    pub latency_ms: u64,
    /// What the request used (tokens, cost): zero unless it was sent and answered.
    pub usage: Usage,
}

/// Live counters, read by the progress reporter.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    pub requests: AtomicU64,
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
}

#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    pub model: String,
    backend: Arc<dyn Backend>,
    gate: Arc<Gate>,
    max_concurrency: usize,
    /// Abort the run when more than this share of requests fail (after a minimum sample).
    max_error_rate: Option<f64>,
    /// Set when no request to this endpoint can succeed any more (refused key, error rate).
    aborted: std::sync::OnceLock<String>,
    timeout: Duration,
    retry: RetryPolicy,
    /// The server's address, for the reachability check (None for in-process backends).
    base_url: Option<String>,
    /// The outcome of [`Endpoint::preflight`], checked once.
    ready: tokio::sync::OnceCell<Result<(), LlmError>>,
    /// Cancelled when the run stops: nothing more is sent.
    stop: CancellationToken,
    pub counters: EndpointCounters,
    /// What a million tokens cost, when known.
    pub price: Option<Price>,
    /// This endpoint's own budget (`budget = { … }`).
    pub budget: Budget,
    /// The ledgers every request is charged to (the run's, the endpoint's), once set.
    ledgers: std::sync::OnceLock<Vec<Arc<Ledger>>>,
    /// The largest ratio seen of a prompt's real tokens to its estimate (at least 1): worst
    /// cases are reserved with it.
    prompt_ratio: std::sync::Mutex<f64>,
    /// A dry run's stand-in (see [`crate::dry`]): its answers are fillers, not model text.
    pub dry: bool,
    /// Batch mode: the queue its requests wait in (see [`crate::batch`]).
    pub batcher: Option<Arc<crate::batch::Batcher>>,
    /// The online price of a batch endpoint (`price` is then the batch price): what the
    /// same requests would have cost without batching.
    pub online_price: Option<Price>,
    /// Requests go through the provider's batch API (priced so even in a dry run).
    pub batched: bool,
}

impl Endpoint {
    pub fn new(
        name: &str,
        model: &str,
        backend: Arc<dyn Backend>,
        max_concurrency: usize,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Self {
        Endpoint {
            name: name.to_string(),
            model: model.to_string(),
            backend,
            gate: Gate::new(max_concurrency, GateConfig::default()),
            max_concurrency,
            max_error_rate: None,
            aborted: std::sync::OnceLock::new(),
            timeout,
            retry,
            base_url: None,
            ready: tokio::sync::OnceCell::new(),
            stop: CancellationToken::new(),
            counters: EndpointCounters::default(),
            price: None,
            budget: Budget::default(),
            ledgers: std::sync::OnceLock::new(),
            prompt_ratio: std::sync::Mutex::new(1.0),
            dry: false,
            batcher: None,
            online_price: None,
            batched: false,
        }
    }

    /// The cost of `prompt` + `completion` tokens at this endpoint's price (0 without one).
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        self.price.map_or(0.0, |p| p.cost(prompt, completion))
    }

    /// Charge every request from now on to `ledgers` (set once; later calls are ignored).
    pub fn charge_to(&self, ledgers: Vec<Arc<Ledger>>) {
        let _ = self.ledgers.set(ledgers);
    }

    /// Why a budget this endpoint is charged to stopped admitting requests, if one did.
    pub fn budget_stop(&self) -> Option<String> {
        self.ledgers.get()?.iter().find_map(|l| l.stop_message())
    }

    /// Whether requests admitted by this endpoint's ledgers (of any endpoint charged to the
    /// same run budget) are still in flight.
    pub fn budget_in_flight(&self) -> bool {
        self.ledgers
            .get()
            .is_some_and(|ls| ls.iter().any(|l| l.in_flight() > 0))
    }

    /// A request's worst case: estimated prompt tokens (scaled by the largest error seen so
    /// far) plus its `max_tokens`, and their cost.
    fn worst_case(&self, request: &ChatRequest) -> (Usage, u64) {
        let estimate = estimate_prompt_tokens(request);
        let ratio = *self.prompt_ratio.lock().unwrap_or_else(|p| p.into_inner());
        let prompt = (estimate as f64 * ratio).ceil() as u64;
        let completion = u64::from(request.params.max_tokens.unwrap_or(4096));
        (
            Usage {
                requests: 1,
                prompt_tokens: prompt,
                completion_tokens: completion,
                cost: self.cost(prompt, completion),
                ..Default::default()
            },
            estimate,
        )
    }

    /// What an answered request used; a server that reports no usage is counted by the
    /// estimate (prompt) and the answer's length (a token per 4 bytes).
    fn used(&self, completion: &Completion, estimate: u64) -> Usage {
        let prompt = completion.prompt_tokens.unwrap_or(estimate);
        let generated = completion
            .completion_tokens
            .unwrap_or_else(|| (completion.text.len() as u64).div_ceil(4));
        if completion.prompt_tokens.is_some() && estimate > 0 {
            let mut ratio = self.prompt_ratio.lock().unwrap_or_else(|p| p.into_inner());
            *ratio = ratio.max(prompt as f64 / estimate as f64);
        }
        Usage {
            requests: 1,
            prompt_tokens: prompt,
            completion_tokens: generated,
            reasoning_tokens: completion.reasoning_tokens.unwrap_or(0).min(generated),
            cached_tokens: completion.cached_tokens.unwrap_or(0).min(prompt),
            cost: self.price.map_or(0.0, |p| {
                p.cost_cached(prompt, completion.cached_tokens.unwrap_or(0), generated)
            }),
            batched_requests: u64::from(self.batched),
            batch_saved: match (self.online_price, self.price) {
                (Some(online), Some(batch)) => {
                    let cached = completion.cached_tokens.unwrap_or(0);
                    online.cost_cached(prompt, cached, generated)
                        - batch.cost_cached(prompt, cached, generated)
                }
                _ => 0.0,
            },
        }
    }

    /// Check, once per endpoint, that its server accepts connections (or that an in-process
    /// model loads), so a wrong URL, a server that is down or a missing model file fails the
    /// query at once, naming the cause, instead of turning every row into a retried error.
    pub async fn preflight(&self) -> Result<(), LlmError> {
        let unavailable = |at: Option<&str>, reason: String| LlmError::Unavailable {
            endpoint: self.name.clone(),
            at: at.map(str::to_string),
            reason,
        };
        let Some(base_url) = &self.base_url else {
            return self
                .ready
                .get_or_init(|| async {
                    self.backend
                        .prepare()
                        .await
                        .map_err(|e| unavailable(None, e.to_string()))
                })
                .await
                .clone();
        };
        // Messages name the server without the credentials a URL may carry.
        let shown = crate::config::redact_userinfo(base_url);
        let base_url = &shown;
        self.ready
            .get_or_init(|| async {
                let url = url::Url::parse(base_url)
                    .map_err(|e| unavailable(None, format!("bad base_url {base_url}: {e}")))?;
                let host = url.host_str().unwrap_or("localhost").to_string();
                let port = url.port_or_known_default().unwrap_or(80);
                let connect = tokio::net::TcpStream::connect((host.as_str(), port));
                match tokio::time::timeout(Duration::from_secs(10), connect).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(unavailable(Some(base_url), format!("is unreachable: {e}"))),
                    Err(_) => Err(unavailable(
                        Some(base_url),
                        "is unreachable: no answer to connect in 10 s".into(),
                    )),
                }
            })
            .await
            .clone()
    }

    /// One line for the run summary.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        format!(
            "endpoint {}: {} requests, {} attempts, {} failed, {} completion tokens, peak {} in flight (budget {}, limit now {})",
            self.name,
            c.requests.load(Ordering::Relaxed),
            c.attempts.load(Ordering::Relaxed),
            c.failures.load(Ordering::Relaxed),
            c.completion_tokens.load(Ordering::Relaxed),
            c.peak_in_flight.load(Ordering::Relaxed),
            self.max_concurrency,
            self.gate.limit()
        )
    }

    pub fn from_config(
        name: &str,
        config: &EndpointConfig,
        client: reqwest::Client,
        factory: Option<&dyn BackendFactory>,
    ) -> Result<Self> {
        let key = |var: &Option<String>| -> Result<Option<ApiKey>> {
            match var {
                None => Ok(None),
                Some(var) => Ok(Some(ApiKey(std::env::var(var).map_err(|_| {
                    LlmError::MissingApiKey {
                        endpoint: name.to_string(),
                        var: var.clone(),
                    }
                })?))),
            }
        };
        let max_body = config.max_response_bytes();
        let mut batch_api: Option<Arc<dyn crate::batch::BatchApi>> = None;
        let backend: Arc<dyn Backend> = match &config.backend {
            BackendConfig::Openai(o) => {
                let api_key = key(&o.api_key_env)?;
                let chat = |client| {
                    OpenAiBackend::new(client, o.api, &o.base_url, &config.model, api_key.clone())
                        .with_max_body(max_body)
                };
                if let Some(b) = &o.batch {
                    batch_api = Some(Arc::new(crate::batch::openai::OpenAiBatchApi::new(
                        client.clone(),
                        &o.base_url,
                        api_key.clone(),
                        chat(client.clone()),
                        b.completion_window.as_deref(),
                        max_body,
                    )));
                }
                Arc::new(chat(client))
            }
            BackendConfig::Anthropic(a) => {
                let api_key = key(&a.api_key_env)?;
                let messages = |client| {
                    crate::anthropic::AnthropicBackend::new(
                        client,
                        &a.base_url,
                        &config.model,
                        api_key.clone(),
                        a.anthropic_version.as_deref(),
                        a.cache_prompt,
                    )
                    .with_max_body(max_body)
                };
                if a.batch.is_some() {
                    batch_api = Some(Arc::new(crate::batch::anthropic::AnthropicBatchApi::new(
                        client.clone(),
                        &a.base_url,
                        api_key.clone(),
                        a.anthropic_version
                            .as_deref()
                            .unwrap_or(crate::anthropic::DEFAULT_ANTHROPIC_VERSION),
                        messages(client.clone()),
                        max_body,
                    )));
                }
                Arc::new(messages(client))
            }
            BackendConfig::Nemo(n) => Arc::new(
                NemoBackend::new(client, &n.base_url, n.chat_template.clone(), n.nemo_form)
                    .with_max_body(config.max_response_bytes()),
            ),
            BackendConfig::Embedded(_) => match factory {
                Some(f) => f.backend(name, config)?,
                None => {
                    return Err(LlmError::Config(format!(
                        "endpoint '{name}' is embedded, but this caiflow was built without the `embedded` feature"
                    )));
                }
            },
        };
        let mut endpoint = Self::new(
            name,
            &config.model_name(),
            backend,
            config.max_concurrency,
            config.timeout(),
            config.retry.clone(),
        );
        endpoint.base_url = config.base_url().map(str::to_string);
        endpoint.gate = Gate::new(config.max_concurrency, config.scheduling.clone());
        endpoint.max_error_rate = config.max_error_rate;
        endpoint.price = config.price;
        endpoint.budget = config.budget;
        if let (Some(api), Some(b)) = (batch_api, config.batch()) {
            let batch = crate::batch::BatchBackend::new(name, &config.model_name(), api, b.clone());
            endpoint.batcher = Some(batch.batcher());
            endpoint.backend = Arc::new(batch);
            // The provider's completion window bounds the wait, not a per-request timeout.
            endpoint.timeout = Duration::from_secs(30 * 86_400);
            endpoint.batched = true;
            endpoint.online_price = config.price;
            endpoint.price = config.price.map(|p| p.batched());
        }
        Ok(endpoint)
    }

    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// Whether the run is stopping (Ctrl-C): no request is sent any more.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Why no request may be sent now: the run is stopping, or the endpoint gave up.
    fn halted(&self) -> Option<LlmError> {
        if self.stop.is_cancelled() {
            Some(LlmError::Interrupted)
        } else {
            self.aborted().map(|why| LlmError::Aborted(why.to_string()))
        }
    }

    /// Why this endpoint gave up, if it did: the query must fail with this message.
    pub fn aborted(&self) -> Option<&str> {
        self.aborted.get().map(String::as_str)
    }

    pub fn set_max_error_rate(&mut self, rate: Option<f64>) {
        self.max_error_rate = rate;
    }

    fn abort(&self, why: String) {
        if self.aborted.set(why.clone()).is_ok() {
            tracing::error!("{why}");
        }
    }

    /// After a logical request: is the endpoint plainly broken?
    fn check_error_rate(&self, last_error: &LlmError) {
        let Some(limit) = self.max_error_rate else {
            return;
        };
        let done = self.counters.requests.load(Ordering::Relaxed);
        let failed = self.counters.failures.load(Ordering::Relaxed);
        if done >= MIN_ERROR_SAMPLE && failed as f64 / done as f64 > limit {
            self.abort(format!(
                "endpoint '{}': {failed} of {done} requests failed, above the maximum error rate {limit} (last error: {last_error})",
                self.name
            ));
        }
    }

    /// Stable identity of a request to this endpoint's model (see [`crate::hash`]).
    pub fn request_hash(&self, request: &ChatRequest) -> RequestHash {
        RequestHash::of(&self.model, request)
    }

    /// Send a request with retries. Never fails: the outcome says what happened. A permit of
    /// the endpoint's budget is held only while an attempt is on the wire, not while backing
    /// off, so a throttled row does not block healthy ones.
    pub async fn call(&self, request: &ChatRequest) -> CallOutcome {
        self.call_with_priority(request, self.request_hash(request), 0)
            .await
    }

    /// Send a request whose hash the caller computed (once, for the journal too); among
    /// waiting requests, a higher `priority` (a later turn of a row) is sent first.
    pub async fn call_with_priority(
        &self,
        request: &ChatRequest,
        request_hash: RequestHash,
        priority: u32,
    ) -> CallOutcome {
        let started = Instant::now();
        let refused = |why: LlmError| CallOutcome {
            request_hash: request_hash.clone(),
            result: Err(why),
            attempts: 0,
            latency_ms: 0,
            usage: Usage::default(),
        };
        if let Some(why) = self.halted() {
            return refused(why);
        }
        let (worst, estimate) = self.worst_case(request);
        let reservation = match self.ledgers.get() {
            Some(ledgers) => match crate::spend::reserve(ledgers, worst) {
                Ok(r) => Some(r),
                Err(why) => return refused(LlmError::Budget(why)),
            },
            None => None,
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut attempts = 0;
        // Attempts that reached the server: one halted while it waited was never sent.
        let mut sent = 0;
        let result = loop {
            attempts += 1;
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let attempt = {
                let _permit = self.gate.acquire(priority).await;
                // Checked again once a slot is free: the run may have stopped, or the endpoint
                // given up, while this request waited or backed off.
                if let Some(why) = self.halted() {
                    break Err(why);
                }
                sent += 1;
                let now = self.counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                self.counters
                    .peak_in_flight
                    .fetch_max(now, Ordering::Relaxed);
                let sent = Instant::now();
                let r = tokio::time::timeout(self.timeout, self.backend.complete(request))
                    .await
                    .map(|r| r.map(crate::reasoning::separate));
                self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                let (overloaded, tokens) = match &r {
                    Ok(Ok(c)) => (
                        false,
                        c.prompt_tokens
                            .unwrap_or(0)
                            .saturating_add(c.completion_tokens.unwrap_or(0)),
                    ),
                    Ok(Err(e)) => (e.overloaded, 0),
                    Err(_) => (true, 0),
                };
                self.gate.on_done(sent.elapsed(), overloaded, tokens);
                r
            };
            let error = match attempt {
                Ok(Ok(completion)) => {
                    if let Some(t) = completion.completion_tokens {
                        self.counters
                            .completion_tokens
                            .fetch_add(t, Ordering::Relaxed);
                    }
                    break Ok(completion);
                }
                Ok(Err(e)) => e,
                Err(_) => AttemptError::retryable(format!(
                    "timed out after {:.1}s",
                    self.timeout.as_secs_f64()
                )),
            };
            // The run is stopping (or detached): no backoff, no other attempt.
            if let Some(why) = self.halted() {
                break Err(why);
            }
            if error.refused {
                self.abort(format!(
                    "endpoint '{}' refused the request ({}): check its API key (api_key_env) and URL",
                    self.name, error.message
                ));
            }
            if !error.retryable || attempts >= self.retry.max_attempts {
                break Err(LlmError::Failed {
                    endpoint: self.name.clone(),
                    message: error.message,
                    attempts,
                    retryable: error.retryable,
                });
            }
            tracing::debug!(endpoint = %self.name, attempt = attempts, error = %error.message, "retrying");
            tokio::time::sleep(self.retry.delay(attempts, error.retry_after)).await;
        };
        let usage = match &result {
            Ok(c) => self.used(c, estimate),
            // A batched request the run stopped waiting for is still with the provider: it
            // counts when a later run collects it.
            Err(LlmError::Interrupted) if self.batched => Usage::default(),
            // A request that failed used no tokens the server reported, but was sent.
            Err(_) if sent > 0 => Usage {
                requests: 1,
                ..Default::default()
            },
            Err(_) => Usage::default(),
        };
        if let Some(r) = reservation {
            r.settle(&usage);
        }
        if let Err(e) = &result {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            self.check_error_rate(e);
        }
        CallOutcome {
            request_hash,
            result,
            attempts,
            latency_ms: started.elapsed().as_millis() as u64,
            usage,
        }
    }
}

/// All endpoints of a session, by name. Stage plans hold names only and look the live
/// endpoint up here at execution time (a session-config extension), so plans stay plain data.
#[derive(Debug)]
pub struct Endpoints {
    by_name: BTreeMap<String, Arc<Endpoint>>,
    /// What the batch endpoints share (store, detach, stop).
    batches: Arc<crate::batch::BatchRun>,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            by_name: BTreeMap::new(),
            batches: crate::batch::BatchRun::new(CancellationToken::new()),
        }
    }
}

impl Endpoints {
    /// The endpoints of `config` with the HTTP backends only (an `embedded` endpoint is an
    /// error naming the missing feature).
    pub fn from_config(config: &Config) -> Result<Self> {
        Self::from_config_with(config, None, CancellationToken::new())
    }

    /// The endpoints of `config`; `factory` builds the kinds this crate does not know, and
    /// cancelling `stop` halts every endpoint (nothing more is sent).
    pub fn from_config_with(
        config: &Config,
        factory: Option<&dyn BackendFactory>,
        stop: CancellationToken,
    ) -> Result<Self> {
        Self::build(config, factory, stop, false)
    }

    /// The endpoints of `config` for a dry run: each answers at once without sending
    /// anything ([`crate::dry::DryBackend`]); an embedded one still loads its model, to
    /// count prompt tokens exactly.
    pub fn dry_run(config: &Config, factory: Option<&dyn BackendFactory>) -> Result<Self> {
        Self::build(config, factory, CancellationToken::new(), true)
    }

    fn build(
        config: &Config,
        factory: Option<&dyn BackendFactory>,
        stop: CancellationToken,
        dry: bool,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LlmError::HttpClient(Arc::new(e)))?;
        let mut by_name = BTreeMap::new();
        let batches = crate::batch::BatchRun::new(stop.clone());
        for (name, e) in &config.endpoints {
            let mut endpoint = Endpoint::from_config(name, e, client.clone(), factory)?;
            endpoint.stop = stop.clone();
            if let Some(b) = &endpoint.batcher {
                b.join(batches.clone());
            }
            if dry {
                // Priced as batched, but nothing is sent.
                endpoint.batcher = None;
                endpoint.backend = Arc::new(crate::dry::DryBackend {
                    inner: endpoint.backend.clone(),
                    reasoning_tokens: u64::from(e.reasoning_tokens.unwrap_or(0)),
                    cache_prefix: matches!(&e.backend, BackendConfig::Anthropic(a) if a.cache_prompt),
                });
                endpoint.base_url = None;
                endpoint.dry = true;
            }
            by_name.insert(name.clone(), Arc::new(endpoint));
        }
        Ok(Endpoints { by_name, batches })
    }

    /// What the batch endpoints share: set the store batches are recorded in, detach.
    pub fn batches(&self) -> &Arc<crate::batch::BatchRun> {
        &self.batches
    }

    /// The batches of this process in flight, over all batch endpoints.
    pub fn batches_in_flight(&self) -> Vec<crate::batch::BatchRecord> {
        self.by_name
            .values()
            .filter_map(|e| e.batcher.as_ref())
            .flat_map(|b| b.in_flight())
            .collect()
    }

    pub fn insert(&mut self, endpoint: Endpoint) {
        self.by_name
            .insert(endpoint.name.clone(), Arc::new(endpoint));
    }

    pub fn get(&self, name: &str) -> Result<Arc<Endpoint>> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| LlmError::UnknownEndpoint(name.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.by_name.values()
    }

    /// Charge every request to the run's budget and to its endpoint's own: `run_spent` and
    /// `endpoint_spent` are what earlier sessions of the run used. Returns the run's ledger.
    pub fn charge_to_budgets(
        &self,
        run: Budget,
        run_spent: Usage,
        endpoint_spent: &BTreeMap<String, Usage>,
    ) -> Arc<Ledger> {
        let run_ledger = Ledger::new("run", run, run_spent);
        for (name, e) in &self.by_name {
            let mut ledgers = vec![run_ledger.clone()];
            if !e.budget.is_empty() {
                ledgers.push(Ledger::new(
                    &format!("endpoints.{name}.budget"),
                    e.budget,
                    endpoint_spent.get(name).copied().unwrap_or_default(),
                ));
            }
            e.charge_to(ledgers);
        }
        run_ledger
    }

    /// Why a budget stopped the run, if one did.
    pub fn budget_stop(&self) -> Option<String> {
        self.by_name.values().find_map(|e| e.budget_stop())
    }
}
