//! Batch mode: an endpoint's requests go through its provider's batch API (OpenAI Batch,
//! Anthropic Message Batches), at the batch price, instead of one HTTP request each.
//!
//! Why it is a [`Backend`]: the stages, the journal, budgets and retries stay as they are.
//! A stage asks for a completion as always; the batch backend puts the request in the
//! endpoint's queue and waits. Queued requests are submitted as one batch when the queue is
//! full (the provider's count and byte limits, or lower ones from the configuration) or when
//! its oldest request has waited `window_secs`; batches in flight are polled every
//! `poll_secs`, and when one ends its results are handed to the requests waiting for them.
//! Their rows go on to the next stage at once, whose requests form the next batch: a
//! multi-stage plan proceeds in waves, with no barrier across a whole table.
//!
//! - **Identical requests** (same request hash) share one line of one batch.
//! - **Per-line errors** are attempt errors: the endpoint's retry policy sends a retryable
//!   one again (in a later batch) and turns the last into a row error, as online.
//! - **Expired or cancelled batches**: the requests they did not finish go into the next
//!   batch, without counting as an attempt; the finished ones are delivered.
//! - **Durability**: each submitted batch is recorded ([`BatchStore`]: the run's journal)
//!   with its provider id and request hashes. A process that starts finds the batches an
//!   earlier one left in flight and polls them instead of submitting their requests again;
//!   results nobody waits for are journalled, so the rows that come later are served.
//! - **Detach** ([`BatchRun::set_detach`]): once every request that can be sent is in a
//!   batch and nothing has moved for a while, the run stops (as if interrupted) and leaves
//!   the batches to the provider; running the same command later collects them.
//! - **Trust**: the provider's ids are checked before they are stored or put in a URL, and
//!   result locations are built from the configured base URL, never taken from the server
//!   (a hostile `results_url` must not receive the API key). Result files are read a line at
//!   a time, each line bounded; lines with unknown custom ids are ignored.
//!
//! | concern | module |
//! |---|---|
//! | `batch = …` settings and the providers' limits | [`config`] |
//! | OpenAI's Files + Batches protocol | [`openai`] |
//! | Anthropic's Message Batches protocol | [`anthropic`] |
//! | the queue, submission, polling, delivery, recovery | this module |

pub mod anthropic;
pub mod config;
pub mod openai;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::hash::RequestHash;
use crate::{AttemptError, Backend, ChatRequest, Completion};
use config::BatchConfig;

/// Where a recorded batch is in its life, as caiflow sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Submitted, not yet collected: a process that starts polls it.
    InFlight,
    /// Ended at the provider and its results delivered (or journalled).
    Collected,
}

/// One submitted batch, as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub endpoint: String,
    /// `openai` or `anthropic`.
    pub provider: String,
    /// The provider's batch id.
    pub id: String,
    /// The provider's status when last seen (`validating`, `in_progress`, `completed`,
    /// `expired`, `ended`, …).
    pub status: String,
    pub state: BatchState,
    pub submitted_unix_ms: u64,
    /// The request hashes inside (the lines' custom ids).
    pub requests: Vec<String>,
    /// Once collected: lines answered, failed, and not finished (sent again).
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub errored: u64,
    #[serde(default)]
    pub unfinished: u64,
    /// When its results were delivered (0 until then).
    #[serde(default)]
    pub collected_unix_ms: u64,
}

/// Where batches are recorded: the run layer implements it over the run's journal, so the
/// LLM layer needs no knowledge of stores.
#[async_trait::async_trait]
pub trait BatchStore: Send + Sync + Debug {
    /// The batches of `endpoint` recorded in flight.
    async fn in_flight(&self, endpoint: &str) -> Result<Vec<BatchRecord>, String>;
    /// Record a batch (new, or in a new state).
    async fn save(&self, record: &BatchRecord) -> Result<(), String>;
    /// The journalled completion of a request, if any.
    async fn lookup(&self, hash: &RequestHash) -> Option<Completion>;
    /// Journal an answer nobody in this process waits for (from a batch an earlier process
    /// submitted), so the row that asks for it later is served.
    fn record(&self, hash: &RequestHash, completion: &Completion);
}

/// What the provider says of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Polled {
    pub status: String,
    /// Ended: completed, expired, cancelled or failed; its results can be read.
    pub ended: bool,
    /// The whole batch was refused (OpenAI `failed`: validation): why.
    pub failed: Option<String>,
    /// Where its results are (OpenAI: output and error file ids), checked ids only.
    pub files: Vec<String>,
}

/// One line of a batch's results.
#[derive(Debug)]
pub enum LineResult {
    Answer(Result<Completion, AttemptError>),
    /// Expired or cancelled before it ran: to be sent again.
    Unfinished,
}

/// A provider's batch protocol: encode, submit, poll, read results.
#[async_trait::async_trait]
pub trait BatchApi: Send + Sync + Debug {
    fn provider(&self) -> &'static str;
    /// The provider's requests and bytes per batch.
    fn provider_limits(&self) -> (usize, u64);
    /// One request as the batch carries it; its length counts toward the byte limit.
    fn encode(&self, custom_id: &str, request: &ChatRequest) -> Vec<u8>;
    /// Submit these encoded requests as one batch; the provider's batch id.
    async fn submit(&self, items: &[Vec<u8>]) -> Result<String, AttemptError>;
    async fn poll(&self, id: &str) -> Result<Polled, AttemptError>;
    /// Read an ended batch's results, handing each line to `deliver`.
    async fn results(
        &self,
        id: &str,
        polled: &Polled,
        deliver: &mut (dyn FnMut(String, LineResult) + Send),
    ) -> Result<(), AttemptError>;
}

/// A provider's id, checked before it is stored or put into a URL.
pub fn checked_id(what: &str, id: &str) -> Result<String, AttemptError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(id.to_string())
    } else {
        let shown: String = id.chars().take(60).collect();
        Err(AttemptError::fatal(format!(
            "the server returned an invalid {what} id {shown:?} (letters, digits, _ and - only, at most 200)"
        )))
    }
}

/// Send one call of a batch API and read its small JSON answer (a file or batch object).
pub(crate) async fn json_answer(
    request: reqwest::RequestBuilder,
) -> Result<serde_json::Value, AttemptError> {
    let response = request
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .map_err(crate::transport_error)?;
    let (status, headers, body) = crate::read_response(response, 1 << 20).await?;
    if !status.is_success() {
        return Err(crate::status_error(status, &headers, &body));
    }
    serde_json::from_str(&body)
        .map_err(|e| AttemptError::retryable(format!("malformed batch API answer ({e})")))
}

/// Fetch a batch's results (a JSONL file) and hand each line `parse` reads to `deliver`.
pub(crate) async fn read_results(
    request: reqwest::RequestBuilder,
    max_line: u64,
    parse: fn(&[u8]) -> Option<(String, LineResult)>,
    deliver: &mut (dyn FnMut(String, LineResult) + Send),
) -> Result<(), AttemptError> {
    let response = request.send().await.map_err(crate::transport_error)?;
    if !response.status().is_success() {
        let (status, headers, body) = crate::read_response(response, 1 << 16).await?;
        return Err(crate::status_error(status, &headers, &body));
    }
    for_each_line(response, max_line, |line| {
        if let Some((id, result)) = parse(line) {
            deliver(id, result);
        }
    })
    .await
}

/// Read a response body a line at a time, each line at most `max_line` bytes, without
/// holding the whole body: result files of large batches are hundreds of megabytes.
async fn for_each_line(
    mut response: reqwest::Response,
    max_line: u64,
    mut line: impl FnMut(&[u8]) + Send,
) -> Result<(), AttemptError> {
    let mut carry: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(crate::transport_error)? {
        carry.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = carry
            .get(start..)
            .and_then(|r| r.iter().position(|b| *b == b'\n'))
        {
            if let Some(l) = carry.get(start..start + end) {
                line(l);
            }
            start += end + 1;
        }
        carry.drain(..start);
        if carry.len() as u64 > max_line {
            return Err(AttemptError::fatal(format!(
                "a line of the batch results is longer than {} MiB: raise the endpoint's max_response_mib if its answers really are this large",
                max_line >> 20
            )));
        }
    }
    if !carry.is_empty() {
        line(&carry);
    }
    Ok(())
}

/// What the batch endpoints of one run share: the store batches are recorded in, whether
/// the run detaches, and its stop.
#[derive(Debug)]
pub struct BatchRun {
    store: OnceLock<Arc<dyn BatchStore>>,
    detach: AtomicBool,
    detached: AtomicBool,
    stop: CancellationToken,
    /// Requests queued, not yet in a batch, over all batch endpoints.
    queued: AtomicUsize,
    /// When a request was last queued, a batch submitted or collected.
    last_activity: Mutex<Instant>,
    /// Batches submitted in this process (resubmissions included).
    pub submitted: AtomicUsize,
}

impl BatchRun {
    pub fn new(stop: CancellationToken) -> Arc<BatchRun> {
        Arc::new(BatchRun {
            store: OnceLock::new(),
            detach: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            stop,
            queued: AtomicUsize::new(0),
            last_activity: Mutex::new(Instant::now()),
            submitted: AtomicUsize::new(0),
        })
    }

    /// Record batches in `store` (set once, before the first request).
    pub fn set_store(&self, store: Arc<dyn BatchStore>) {
        let _ = self.store.set(store);
    }

    /// Stop the run once everything that can be sent is in a batch (`--detach`).
    pub fn set_detach(&self, on: bool) {
        self.detach.store(on, Ordering::SeqCst);
    }

    /// Whether the run stopped because it detached.
    pub fn detached(&self) -> bool {
        self.detached.load(Ordering::SeqCst)
    }

    /// `n` queued requests left the queue (submitted or abandoned); never below zero.
    fn dequeued(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                Some(q.saturating_sub(n))
            });
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn quiet_for(&self) -> Duration {
        self.last_activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

type Sender = oneshot::Sender<Result<Completion, AttemptError>>;

struct Waiting {
    /// Kept to send again when its batch expires before running it.
    request: ChatRequest,
    senders: Vec<Sender>,
}

struct Flight {
    record: BatchRecord,
    next_poll: Instant,
}

#[derive(Default)]
struct State {
    /// Queued requests: (custom id, encoded), oldest first.
    queue: VecDeque<(String, Vec<u8>)>,
    queue_bytes: u64,
    /// When the oldest queued request was queued.
    oldest: Option<Instant>,
    /// Every request queued or in a batch of this process, by custom id.
    waiting: HashMap<String, Waiting>,
    in_flight: Vec<Flight>,
    /// Requests of batches an earlier process submitted, still in flight: custom id → batch.
    recovered: HashMap<String, String>,
    /// Requests of such batches, collected with nobody waiting: served from the journal.
    recovered_done: HashSet<String>,
    running: bool,
    /// Submission failed: no new attempt before this.
    submit_after: Option<Instant>,
}

/// The batch backend of one endpoint.
#[derive(Debug)]
pub struct BatchBackend {
    inner: Arc<Batcher>,
}

pub struct Batcher {
    endpoint: String,
    model: String,
    api: Arc<dyn BatchApi>,
    config: BatchConfig,
    max_requests: usize,
    max_bytes: u64,
    run: OnceLock<Arc<BatchRun>>,
    state: Mutex<State>,
    wake: Notify,
    recovered: tokio::sync::OnceCell<()>,
}

impl Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("endpoint", &self.endpoint)
            .field("provider", &self.api.provider())
            .finish()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl BatchBackend {
    pub fn new(
        endpoint: &str,
        model: &str,
        api: Arc<dyn BatchApi>,
        config: BatchConfig,
    ) -> BatchBackend {
        let (provider_requests, provider_bytes) = api.provider_limits();
        let (max_requests, max_bytes) = config.limits(provider_requests, provider_bytes);
        BatchBackend {
            inner: Arc::new(Batcher {
                endpoint: endpoint.to_string(),
                model: model.to_string(),
                api,
                config,
                max_requests,
                max_bytes,
                run: OnceLock::new(),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                recovered: tokio::sync::OnceCell::new(),
            }),
        }
    }

    pub fn batcher(&self) -> Arc<Batcher> {
        self.inner.clone()
    }
}

#[async_trait::async_trait]
impl Backend for BatchBackend {
    async fn complete(&self, request: &ChatRequest) -> Result<Completion, AttemptError> {
        self.inner.clone().complete(request).await
    }
}

impl Batcher {
    /// Join the run's batch endpoints (set once, before the first request).
    pub fn join(&self, run: Arc<BatchRun>) {
        let _ = self.run.set(run);
    }

    fn run(&self) -> &Arc<BatchRun> {
        self.run
            .get_or_init(|| BatchRun::new(CancellationToken::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The batches of this process in flight.
    pub fn in_flight(&self) -> Vec<BatchRecord> {
        self.lock()
            .in_flight
            .iter()
            .map(|f| f.record.clone())
            .collect()
    }

    /// Find the batches an earlier process left in flight: their requests are waited for,
    /// not sent again.
    async fn recover(&self) {
        let Some(store) = self.run().store.get().cloned() else {
            return;
        };
        match store.in_flight(&self.endpoint).await {
            Ok(records) => {
                let mut s = self.lock();
                for record in records {
                    if checked_id("batch", &record.id).is_err() {
                        continue;
                    }
                    for h in &record.requests {
                        s.recovered.insert(h.clone(), record.id.clone());
                    }
                    tracing::info!(
                        "endpoint '{}': batch {} ({} requests) is in flight from an earlier run: polling it",
                        self.endpoint,
                        record.id,
                        record.requests.len()
                    );
                    s.in_flight.push(Flight {
                        record,
                        next_poll: Instant::now(),
                    });
                }
            }
            Err(e) => tracing::warn!(
                "endpoint '{}': the batches in flight could not be read ({e}): their requests will be sent again",
                self.endpoint
            ),
        }
    }

    async fn complete(self: Arc<Self>, request: &ChatRequest) -> Result<Completion, AttemptError> {
        self.recovered.get_or_init(|| self.recover()).await;
        let id = RequestHash::of(&self.model, request).to_string();
        let (tx, rx) = oneshot::channel();
        let journalled = {
            let mut s = self.lock();
            if let Some(w) = s.waiting.get_mut(&id) {
                w.senders.push(tx);
                None
            } else if s.recovered.contains_key(&id) {
                s.waiting.insert(
                    id.clone(),
                    Waiting {
                        request: request.clone(),
                        senders: vec![tx],
                    },
                );
                None
            } else {
                Some((s.recovered_done.remove(&id), tx))
            }
        };
        if let Some((done_before, tx)) = journalled {
            if done_before
                && let Some(store) = self.run().store.get()
                && let Some(c) = store.lookup(&RequestHash::from_hex(id.clone())).await
            {
                return Ok(c);
            }
            self.enqueue(id, request.clone(), vec![tx]);
        }
        self.ensure_running();
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(AttemptError::retryable(
                "the batch this request was in was abandoned (the run is stopping)",
            )),
        }
    }

    /// Queue a request for the next batch; its waiters get its answer. One too large for
    /// any batch fails at once.
    fn enqueue(&self, id: String, request: ChatRequest, senders: Vec<Sender>) {
        let encoded = self.api.encode(&id, &request);
        if encoded.len() as u64 > self.max_bytes {
            let e = AttemptError::fatal(format!(
                "the request is {} bytes, more than a batch of endpoint '{}' may hold ({} bytes): shorten it or raise batch.max_bytes",
                encoded.len(),
                self.endpoint,
                self.max_bytes
            ));
            for tx in senders {
                let _ = tx.send(Err(e.clone()));
            }
            return;
        }
        let full = {
            let mut s = self.lock();
            s.queue_bytes = s.queue_bytes.saturating_add(encoded.len() as u64);
            s.queue.push_back((id.clone(), encoded));
            s.oldest.get_or_insert_with(Instant::now);
            match s.waiting.get_mut(&id) {
                Some(w) => w.senders.extend(senders),
                None => {
                    s.waiting.insert(id, Waiting { request, senders });
                }
            }
            s.queue.len() >= self.max_requests || s.queue_bytes >= self.max_bytes
        };
        self.run().queued.fetch_add(1, Ordering::SeqCst);
        self.run().touch();
        if full {
            self.wake.notify_one();
        }
    }

    fn ensure_running(self: &Arc<Self>) {
        let start = {
            let mut s = self.lock();
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.drive().await });
        }
    }

    /// The endpoint's loop: submit full or due batches, poll those in flight, deliver.
    /// It ends when nothing is queued or in flight (the next request starts it again), or
    /// when the run stops.
    async fn drive(self: Arc<Self>) {
        let run = self.run().clone();
        loop {
            if run.stop.is_cancelled() {
                self.abandon();
                return;
            }
            while self.due_submission() {
                self.submit_one().await;
            }
            let due: Vec<BatchRecord> = {
                let now = Instant::now();
                self.lock()
                    .in_flight
                    .iter()
                    .filter(|f| f.next_poll <= now)
                    .map(|f| f.record.clone())
                    .collect()
            };
            let mut moved = false;
            for record in due {
                moved |= self.poll(record).await;
            }
            if moved {
                continue;
            }
            let next = {
                let mut s = self.lock();
                if s.queue.is_empty() && s.in_flight.is_empty() && s.waiting.is_empty() {
                    s.running = false;
                    return;
                }
                let flush = s.oldest.map(|t| t + self.config.window());
                let flush = match (flush, s.submit_after) {
                    (Some(f), Some(a)) => Some(f.max(a)),
                    (f, _) => f,
                };
                let poll = s.in_flight.iter().map(|f| f.next_poll).min();
                [flush, poll].into_iter().flatten().min()
            };
            self.maybe_detach(&run);
            let sleep = next.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = run.stop.cancelled() => {}
            }
        }
    }

    /// `--detach`: every batch endpoint's queue is empty, batches are in flight and nothing
    /// has moved for a window and a poll: stop the run and leave them to the provider.
    fn maybe_detach(&self, run: &BatchRun) {
        if !run.detach.load(Ordering::SeqCst) || run.queued.load(Ordering::SeqCst) > 0 {
            return;
        }
        if self.lock().in_flight.is_empty() {
            return;
        }
        if run.quiet_for() >= self.config.window() + self.config.poll() {
            run.detached.store(true, Ordering::SeqCst);
            run.stop.cancel();
        }
    }

    /// Release every waiting request: the run is stopping. Batches in flight stay with the
    /// provider (a later run collects them).
    fn abandon(&self) {
        let mut s = self.lock();
        let n = s.queue.len();
        s.queue.clear();
        s.queue_bytes = 0;
        s.oldest = None;
        s.waiting.clear();
        s.running = false;
        self.run().dequeued(n);
    }

    fn due_submission(&self) -> bool {
        let s = self.lock();
        if s.queue.is_empty() || s.submit_after.is_some_and(|t| t > Instant::now()) {
            return false;
        }
        let full = s.queue.len() >= self.max_requests || s.queue_bytes >= self.max_bytes;
        let old = s
            .oldest
            .is_some_and(|t| t.elapsed() >= self.config.window());
        full || old || self.run().stop.is_cancelled()
    }

    /// Submit the oldest queued requests as one batch, within the count and byte limits.
    async fn submit_one(&self) {
        let (ids, items) = {
            let mut s = self.lock();
            let mut ids = vec![];
            let mut items = vec![];
            let mut bytes = 0u64;
            while let Some((_, item)) = s.queue.front() {
                let len = item.len() as u64;
                if ids.len() >= self.max_requests
                    || (!items.is_empty() && bytes.saturating_add(len) > self.max_bytes)
                {
                    break;
                }
                let Some((id, item)) = s.queue.pop_front() else {
                    break;
                };
                bytes = bytes.saturating_add(len);
                s.queue_bytes = s.queue_bytes.saturating_sub(len);
                ids.push(id);
                items.push(item);
            }
            s.oldest = if s.queue.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
            (ids, items)
        };
        if ids.is_empty() {
            return;
        }
        let run = self.run().clone();
        let submitted = self.api.submit(&items).await;
        run.dequeued(ids.len());
        run.touch();
        match submitted {
            Ok(batch_id) => {
                run.submitted.fetch_add(1, Ordering::SeqCst);
                let record = BatchRecord {
                    endpoint: self.endpoint.clone(),
                    provider: self.api.provider().to_string(),
                    id: batch_id,
                    status: "submitted".into(),
                    state: BatchState::InFlight,
                    submitted_unix_ms: unix_ms(),
                    requests: ids,
                    succeeded: 0,
                    errored: 0,
                    unfinished: 0,
                    collected_unix_ms: 0,
                };
                tracing::info!(
                    "endpoint '{}': submitted batch {} ({} requests, {} bytes)",
                    self.endpoint,
                    record.id,
                    record.requests.len(),
                    items.iter().map(Vec::len).sum::<usize>()
                );
                if let Some(store) = run.store.get()
                    && let Err(e) = store.save(&record).await
                {
                    tracing::warn!(
                        "endpoint '{}': batch {} was submitted but could not be recorded ({e}): if this process is killed, its requests are sent again",
                        self.endpoint,
                        record.id
                    );
                }
                let mut s = self.lock();
                s.submit_after = None;
                s.in_flight.push(Flight {
                    record,
                    next_poll: Instant::now() + self.config.poll(),
                });
            }
            Err(e) => {
                tracing::warn!(
                    "endpoint '{}': submitting a batch of {} requests failed: {}",
                    self.endpoint,
                    ids.len(),
                    e.message
                );
                // Each request's attempt failed: the retry policy decides, as online.
                let mut s = self.lock();
                s.submit_after = Some(Instant::now() + Duration::from_millis(500));
                for id in ids {
                    if let Some(w) = s.waiting.remove(&id) {
                        for tx in w.senders {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Poll one batch; when it has ended, deliver its results. Whether anything moved.
    async fn poll(&self, record: BatchRecord) -> bool {
        let polled = match self.api.poll(&record.id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "endpoint '{}': polling batch {} failed ({}): trying again",
                    self.endpoint,
                    record.id,
                    e.message
                );
                self.reschedule(&record.id, None);
                return false;
            }
        };
        if !polled.ended {
            self.reschedule(&record.id, Some(&polled.status));
            return false;
        }
        self.collect(record, polled).await;
        true
    }

    fn reschedule(&self, id: &str, status: Option<&str>) {
        let mut s = self.lock();
        if let Some(f) = s.in_flight.iter_mut().find(|f| f.record.id == id) {
            f.next_poll = Instant::now() + self.config.poll();
            if let Some(status) = status {
                f.record.status = status.to_string();
            }
        }
    }

    /// Deliver an ended batch's results; send its unfinished requests again.
    async fn collect(&self, mut record: BatchRecord, polled: Polled) {
        let run = self.run().clone();
        let store = run.store.get().cloned();
        let members: HashSet<String> = record.requests.iter().cloned().collect();
        let mut seen: HashSet<String> = HashSet::new();
        let (mut ok, mut failed, mut unfinished) = (0u64, 0u64, 0u64);
        let mut again: Vec<(String, ChatRequest, Vec<Sender>)> = vec![];
        let mut deliver = |id: String, line: LineResult| {
            if !members.contains(&id) || !seen.insert(id.clone()) {
                return;
            }
            let waiting = self.lock().waiting.remove(&id);
            match line {
                LineResult::Answer(result) => {
                    if result.is_ok() {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    match waiting {
                        Some(w) => {
                            for tx in w.senders {
                                let _ = tx.send(result.clone());
                            }
                        }
                        None => {
                            if let (Ok(c), Some(store)) = (&result, &store) {
                                store.record(&RequestHash::from_hex(id.clone()), c);
                            }
                        }
                    }
                }
                LineResult::Unfinished => {
                    unfinished += 1;
                    if let Some(w) = waiting {
                        again.push((id, w.request, w.senders));
                    }
                }
            }
        };
        let read = match &polled.failed {
            Some(why) => {
                for id in &record.requests {
                    deliver(
                        id.clone(),
                        LineResult::Answer(Err(AttemptError::fatal(format!(
                            "the provider refused batch {}: {why}",
                            record.id
                        )))),
                    );
                }
                Ok(())
            }
            None => self.api.results(&record.id, &polled, &mut deliver).await,
        };
        if let Err(e) = read {
            tracing::warn!(
                "endpoint '{}': reading the results of batch {} failed ({}): trying again",
                self.endpoint,
                record.id,
                e.message
            );
            // Lines already delivered are done; the rest wait for the next read.
            self.reschedule(&record.id, Some(&polled.status));
            for (id, request, senders) in again {
                self.lock().waiting.insert(id, Waiting { request, senders });
            }
            return;
        }
        // Requests of this batch with no line: unfinished when it expired or was cancelled,
        // else lost by the provider (a retryable failure).
        let cut_short = matches!(
            polled.status.as_str(),
            "expired" | "cancelled" | "canceled" | "cancelling" | "canceling"
        );
        for id in &record.requests {
            if seen.contains(id) {
                continue;
            }
            let waiting = self.lock().waiting.remove(id);
            if cut_short {
                unfinished += 1;
                if let Some(w) = waiting {
                    again.push((id.clone(), w.request, w.senders));
                }
            } else {
                failed += 1;
                if let Some(w) = waiting {
                    for tx in w.senders {
                        let _ = tx.send(Err(AttemptError::retryable(format!(
                            "missing from the results of batch {}",
                            record.id
                        ))));
                    }
                }
            }
        }
        if !again.is_empty() {
            tracing::info!(
                "endpoint '{}': batch {} ended {} with {} requests unfinished: sending them again",
                self.endpoint,
                record.id,
                polled.status,
                again.len()
            );
        }
        for (id, request, senders) in again {
            self.enqueue(id, request, senders);
        }
        record.status = polled.status;
        record.state = BatchState::Collected;
        record.succeeded = ok;
        record.errored = failed;
        record.unfinished = unfinished;
        record.collected_unix_ms = unix_ms();
        {
            let mut s = self.lock();
            s.in_flight.retain(|f| f.record.id != record.id);
            for id in &record.requests {
                if s.recovered.remove(id).is_some() && !s.waiting.contains_key(id) {
                    s.recovered_done.insert(id.clone());
                }
            }
        }
        run.touch();
        if let Some(store) = &store
            && let Err(e) = store.save(&record).await
        {
            tracing::warn!(
                "endpoint '{}': batch {} was collected but that could not be recorded ({e}): a later run polls it once more",
                self.endpoint,
                record.id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_that_could_leave_their_folder_or_url_are_refused() {
        assert_eq!(
            checked_id("batch", "batch_abc-123").ok().as_deref(),
            Some("batch_abc-123")
        );
        for bad in [
            "",
            "../x",
            "a/b",
            "a?b=c",
            "a b",
            "msgbatch_01\n",
            "é",
            &"x".repeat(201),
        ] {
            let e = checked_id("batch", bad).expect_err(bad);
            assert!(
                !e.retryable && e.message.contains("invalid batch id"),
                "{}",
                e.message
            );
        }
    }

    proptest! {
        #[test]
        fn a_checked_id_is_a_plain_name(id in "\\PC{0,80}") {
            if let Ok(ok) = checked_id("file", &id) {
                prop_assert!(!ok.contains('/') && !ok.contains('.') && !ok.is_empty());
            }
        }
    }
}
