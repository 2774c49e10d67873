//! Both providers' batch APIs on the mock, faithful to their documented behaviour:
//!
//! - **OpenAI**: `POST /v1/files` (multipart, `purpose=batch`; each line checked: a unique
//!   `custom_id`, `method` POST, `url` the batch's endpoint, one model, at most 50,000 lines
//!   and 200 MB), `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches/{id}`,
//!   `POST /v1/batches/{id}/cancel`. Lifecycle `validating → in_progress → finalizing →
//!   completed`, or `failed` (validation), `expired` (the completion window passed: finished
//!   lines in the output file, the rest in the error file as `batch_expired`), `cancelling →
//!   cancelled`.
//! - **Anthropic**: `POST /v1/messages/batches` (at most 100,000 requests, custom ids
//!   `^[a-zA-Z0-9_-]{1,64}$` and unique), `GET /v1/messages/batches/{id}`,
//!   `GET /v1/messages/batches/{id}/results`, `POST …/cancel`. `processing_status`
//!   `in_progress → canceling → ended`; results `succeeded`, `errored`, `canceled`, `expired`.
//!
//! Each line is answered by the mock's online handler, so batched and online answers are the
//! same and faults and markers apply to lines as to requests. Time runs scaled: with
//! `scale = 0.0001` the 24 h window lasts 8.6 s.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::MockState;

/// How batches behave on the mock.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchProfile {
    /// Time in `validating` (OpenAI).
    pub validating: Duration,
    /// Time in `in_progress` before lines are answered (a provider's queue).
    pub in_progress: Duration,
    /// Real seconds per second of provider time: the completion window is `24h × scale`.
    pub scale: f64,
}

impl Default for BatchProfile {
    fn default() -> Self {
        BatchProfile {
            validating: Duration::from_millis(50),
            in_progress: Duration::from_millis(100),
            scale: 0.0001,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Provider {
    OpenAi,
    Anthropic,
}

#[derive(Debug)]
struct MockBatch {
    provider: Provider,
    status: String,
    /// (custom id, request body).
    lines: Vec<(String, Value)>,
    input_file_id: Option<String>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    /// Anthropic's results, once ended.
    results: Option<Vec<u8>>,
    cancel: bool,
    expire_after: Option<usize>,
    counts: BTreeMap<&'static str, u64>,
    errors: Vec<String>,
    /// The custom ids it did not run (expired or cancelled), once ended.
    unfinished: Vec<String>,
}

/// The mock's batch side.
#[derive(Debug, Default)]
pub struct Batches {
    profile: BatchProfile,
    files: BTreeMap<String, Vec<u8>>,
    batches: BTreeMap<String, MockBatch>,
    next: u64,
    /// The next batch created expires after answering this many lines.
    expire_next: Option<usize>,
    /// The next OpenAI batch fails validation.
    fail_next: bool,
    /// Batches created, with their sizes: (id, lines, bytes).
    pub created: Vec<(String, usize, usize)>,
}

impl Batches {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_{:08}", self.next)
    }
}

fn lock(state: &MockState) -> std::sync::MutexGuard<'_, Batches> {
    state.batches.lock().unwrap_or_else(|p| p.into_inner())
}

impl crate::MockServer {
    pub fn set_batch_profile(&self, profile: BatchProfile) {
        lock(&self.state).profile = profile;
    }

    /// The next batch created expires after answering `lines` of its requests.
    pub fn expire_next_batch(&self, lines: usize) {
        lock(&self.state).expire_next = Some(lines);
    }

    /// The next OpenAI batch fails validation.
    pub fn fail_next_batch(&self) {
        lock(&self.state).fail_next = true;
    }

    /// Batches created so far: (id, requests, bytes), in order.
    pub fn batches_created(&self) -> Vec<(String, usize, usize)> {
        lock(&self.state).created.clone()
    }

    /// Cancel every batch in progress, as a user would at the provider's console.
    pub fn cancel_batches(&self) {
        lock(&self.state)
            .batches
            .values_mut()
            .for_each(request_cancel);
    }

    /// The custom ids a batch did not run (expired or cancelled), once it ended.
    pub fn batch_unfinished(&self, id: &str) -> Vec<String> {
        lock(&self.state)
            .batches
            .get(id)
            .map(|b| b.unfinished.clone())
            .unwrap_or_default()
    }

    /// The custom ids of each batch created, in order.
    pub fn batch_custom_ids(&self) -> Vec<(String, Vec<String>)> {
        let b = lock(&self.state);
        b.created
            .iter()
            .map(|(id, _, _)| {
                let ids = b
                    .batches
                    .get(id)
                    .map(|batch| batch.lines.iter().map(|(c, _)| c.clone()).collect())
                    .unwrap_or_default();
                (id.clone(), ids)
            })
            .collect()
    }

    /// Each batch's status, by id.
    pub fn batch_statuses(&self) -> BTreeMap<String, String> {
        lock(&self.state)
            .batches
            .iter()
            .map(|(id, b)| (id.clone(), b.status.clone()))
            .collect()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string(),
    )
        .into_response()
}

fn anthropic_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
            .to_string(),
    )
        .into_response()
}

const OPENAI_MAX_LINES: usize = 50_000;
const OPENAI_MAX_BYTES: usize = 200_000_000;
const ANTHROPIC_MAX_REQUESTS: usize = 100_000;
const ANTHROPIC_MAX_BYTES: usize = 256_000_000;

pub(crate) async fn upload(State(state): State<Arc<MockState>>, mut form: Multipart) -> Response {
    let (mut purpose, mut file) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("purpose") => purpose = field.text().await.ok(),
            Some("file") => file = field.bytes().await.ok(),
            _ => {}
        }
    }
    if purpose.as_deref() != Some("batch") {
        return error(StatusCode::BAD_REQUEST, "purpose must be 'batch'");
    }
    let Some(file) = file else {
        return error(StatusCode::BAD_REQUEST, "file is required");
    };
    if file.len() > OPENAI_MAX_BYTES {
        return error(StatusCode::BAD_REQUEST, "file is larger than 200 MB");
    }
    let mut b = lock(&state);
    let id = b.id("file");
    let bytes = file.len();
    b.files.insert(id.clone(), file.to_vec());
    (
        StatusCode::OK,
        json!({"id": id, "object": "file", "bytes": bytes, "purpose": "batch", "filename": "batch.jsonl"})
            .to_string(),
    )
        .into_response()
}

pub(crate) async fn file_content(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    match lock(&state).files.get(&id) {
        Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such file"),
    }
}

/// Check an OpenAI input file; its lines, or why the batch fails validation.
fn openai_lines(file: &[u8], endpoint: &str) -> Result<Vec<(String, Value)>, String> {
    let text = std::str::from_utf8(file).map_err(|_| "the file is not UTF-8".to_string())?;
    let mut lines = vec![];
    let mut ids = HashSet::new();
    let mut model: Option<String> = None;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: invalid JSON ({e})", i + 1))?;
        let id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .ok_or(format!("line {}: custom_id is required", i + 1))?;
        if !ids.insert(id.to_string()) {
            return Err(format!("line {}: custom_id {id} is not unique", i + 1));
        }
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(format!("line {}: method must be POST", i + 1));
        }
        if v.get("url").and_then(Value::as_str) != Some(endpoint) {
            return Err(format!("line {}: url must be {endpoint}", i + 1));
        }
        let body = v
            .get("body")
            .cloned()
            .ok_or(format!("line {}: body is required", i + 1))?;
        let m = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if model.get_or_insert_with(|| m.clone()) != &m {
            return Err(format!(
                "line {}: every line must use the same model",
                i + 1
            ));
        }
        lines.push((id.to_string(), body));
    }
    if lines.is_empty() {
        return Err("the file has no requests".into());
    }
    if lines.len() > OPENAI_MAX_LINES {
        return Err(format!("{} requests, more than 50,000", lines.len()));
    }
    Ok(lines)
}

fn openai_object(id: &str, b: &MockBatch) -> Value {
    json!({
        "id": id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "status": b.status,
        "input_file_id": b.input_file_id,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "completion_window": "24h",
        "errors": if b.errors.is_empty() { Value::Null } else {
            json!({"object": "list", "data": b.errors.iter().map(|m| json!({"code": "invalid_request", "message": m})).collect::<Vec<_>>()})
        },
        "request_counts": {
            "total": b.lines.len(),
            "completed": b.counts.get("succeeded").copied().unwrap_or(0),
            "failed": b.counts.get("errored").copied().unwrap_or(0),
        },
    })
}

pub(crate) async fn create_openai(
    State(state): State<Arc<MockState>>,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    let endpoint = body.get("endpoint").and_then(Value::as_str).unwrap_or("");
    if endpoint != "/v1/chat/completions" {
        return error(
            StatusCode::BAD_REQUEST,
            "endpoint must be /v1/chat/completions",
        );
    }
    if body.get("completion_window").and_then(Value::as_str) != Some("24h") {
        return error(StatusCode::BAD_REQUEST, "completion_window must be 24h");
    }
    let input = body
        .get("input_file_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut b = lock(&state);
    let Some(file) = b.files.get(&input).cloned() else {
        return error(StatusCode::NOT_FOUND, "no such input file");
    };
    let id = b.id("batch");
    let (lines, errors) = match openai_lines(&file, endpoint) {
        Ok(lines) => (lines, vec![]),
        Err(why) => (vec![], vec![why]),
    };
    let failing = std::mem::take(&mut b.fail_next);
    let errors = if failing && errors.is_empty() {
        vec!["injected validation failure".to_string()]
    } else {
        errors
    };
    b.created.push((id.clone(), lines.len(), file.len()));
    let batch = MockBatch {
        provider: Provider::OpenAi,
        status: "validating".into(),
        lines,
        input_file_id: Some(input),
        output_file_id: None,
        error_file_id: None,
        results: None,
        cancel: false,
        expire_after: b.expire_next.take(),
        counts: BTreeMap::new(),
        errors,
        unfinished: vec![],
    };
    let object = openai_object(&id, &batch);
    b.batches.insert(id.clone(), batch);
    drop(b);
    tokio::spawn(process(state.clone(), id));
    (StatusCode::OK, object.to_string()).into_response()
}

fn anthropic_object(id: &str, b: &MockBatch) -> Value {
    let count = |k: &str| b.counts.get(k).copied().unwrap_or(0);
    let done = count("succeeded") + count("errored") + count("canceled") + count("expired");
    json!({
        "id": id,
        "type": "message_batch",
        "processing_status": b.status,
        "request_counts": {
            "processing": (b.lines.len() as u64).saturating_sub(done),
            "succeeded": count("succeeded"),
            "errored": count("errored"),
            "canceled": count("canceled"),
            "expired": count("expired"),
        },
        // Where a real server says the results are; caiflow must not follow it.
        "results_url": (b.status == "ended").then(|| format!("https://evil.invalid/{id}/results")),
    })
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

pub(crate) async fn create_anthropic(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !headers.contains_key("anthropic-version") {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    if body.len() > ANTHROPIC_MAX_BYTES {
        return anthropic_error(StatusCode::PAYLOAD_TOO_LARGE, "request larger than 256 MB");
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let Some(requests) = v.get("requests").and_then(Value::as_array) else {
        return anthropic_error(StatusCode::BAD_REQUEST, "requests: Field required");
    };
    if requests.is_empty() || requests.len() > ANTHROPIC_MAX_REQUESTS {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "requests: between 1 and 100,000 items",
        );
    }
    let mut ids = HashSet::new();
    let mut lines = vec![];
    for (i, r) in requests.iter().enumerate() {
        let id = r.get("custom_id").and_then(Value::as_str).unwrap_or("");
        if !valid_custom_id(id) {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                &format!("requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"),
            );
        }
        if !ids.insert(id.to_string()) {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                &format!("requests.{i}.custom_id: duplicate custom_id {id}"),
            );
        }
        let Some(params) = r.get("params").cloned() else {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                &format!("requests.{i}.params: Field required"),
            );
        };
        lines.push((id.to_string(), params));
    }
    let mut b = lock(&state);
    let id = b.id("msgbatch");
    b.created.push((id.clone(), lines.len(), body.len()));
    let batch = MockBatch {
        provider: Provider::Anthropic,
        status: "in_progress".into(),
        lines,
        input_file_id: None,
        output_file_id: None,
        error_file_id: None,
        results: None,
        cancel: false,
        expire_after: b.expire_next.take(),
        counts: BTreeMap::new(),
        errors: vec![],
        unfinished: vec![],
    };
    let object = anthropic_object(&id, &batch);
    b.batches.insert(id.clone(), batch);
    drop(b);
    tokio::spawn(process(state.clone(), id));
    (StatusCode::OK, object.to_string()).into_response()
}

pub(crate) async fn results_anthropic(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    match lock(&state)
        .batches
        .get(&id)
        .filter(|b| b.provider == Provider::Anthropic)
    {
        Some(b) => match &b.results {
            Some(r) => (StatusCode::OK, r.clone()).into_response(),
            None => anthropic_error(StatusCode::BAD_REQUEST, "the batch has not ended"),
        },
        None => anthropic_error(StatusCode::NOT_FOUND, "no such batch"),
    }
}

/// A batch of `provider` as its API shows it, or its "not found".
fn show(state: &MockState, id: &str, provider: Provider, cancel: bool) -> Response {
    let mut b = lock(state);
    match b.batches.get_mut(id).filter(|b| b.provider == provider) {
        Some(batch) => {
            if cancel {
                request_cancel(batch);
            }
            let object = match provider {
                Provider::OpenAi => openai_object(id, batch),
                Provider::Anthropic => anthropic_object(id, batch),
            };
            (StatusCode::OK, object.to_string()).into_response()
        }
        None if provider == Provider::OpenAi => error(StatusCode::NOT_FOUND, "no such batch"),
        None => anthropic_error(StatusCode::NOT_FOUND, "no such batch"),
    }
}

/// Cancel a batch as its provider does: OpenAI's `validating` or `in_progress` becomes
/// `cancelling`, Anthropic's `in_progress` becomes `canceling`; its lines not yet run are
/// then cancelled.
fn request_cancel(batch: &mut MockBatch) {
    match (batch.provider, batch.status.as_str()) {
        (Provider::OpenAi, "validating" | "in_progress") => {
            batch.cancel = true;
            batch.status = "cancelling".into();
        }
        (Provider::Anthropic, "in_progress") => {
            batch.cancel = true;
            batch.status = "canceling".into();
        }
        _ => {}
    }
}

pub(crate) async fn get_openai(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    show(&state, &id, Provider::OpenAi, false)
}

pub(crate) async fn cancel_openai(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    show(&state, &id, Provider::OpenAi, true)
}

pub(crate) async fn get_anthropic(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    show(&state, &id, Provider::Anthropic, false)
}

pub(crate) async fn cancel_anthropic(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
) -> Response {
    show(&state, &id, Provider::Anthropic, true)
}

/// Answer one line with the online handler: (status, body).
async fn answer(state: &Arc<MockState>, provider: Provider, body: Value) -> (u16, Value) {
    let response = match provider {
        Provider::OpenAi => crate::chat(State(state.clone()), axum::Json(body)).await,
        Provider::Anthropic => {
            let mut headers = HeaderMap::new();
            headers.insert(
                "anthropic-version",
                axum::http::HeaderValue::from_static("2023-06-01"),
            );
            crate::anthropic::messages(State(state.clone()), headers, axum::Json(body)).await
        }
    };
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A batch's life, from creation to its end.
async fn process(state: Arc<MockState>, id: String) {
    let (profile, provider, failing) = {
        let b = lock(&state);
        let Some(batch) = b.batches.get(&id) else {
            return;
        };
        (b.profile.clone(), batch.provider, !batch.errors.is_empty())
    };
    let window = Duration::from_secs_f64(86_400.0 * profile.scale.max(0.0));
    let started = Instant::now();
    if provider == Provider::OpenAi {
        tokio::time::sleep(profile.validating).await;
        let mut b = lock(&state);
        let Some(batch) = b.batches.get_mut(&id) else {
            return;
        };
        if failing {
            batch.status = "failed".into();
            return;
        }
        if !batch.cancel {
            batch.status = "in_progress".into();
        }
    }
    tokio::time::sleep(profile.in_progress).await;
    let (lines, expire_after) = {
        let b = lock(&state);
        let Some(batch) = b.batches.get(&id) else {
            return;
        };
        (batch.lines.clone(), batch.expire_after)
    };
    let mut output: Vec<u8> = vec![];
    let mut errors: Vec<u8> = vec![];
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut ended_as: Option<&'static str> = None;
    let mut unfinished = vec![];
    for (i, (custom_id, body)) in lines.into_iter().enumerate() {
        let cancelled = lock(&state).batches.get(&id).is_some_and(|b| b.cancel);
        let cut = match ended_as {
            Some(e) => Some(e),
            None if cancelled => Some("cancelled"),
            None if expire_after.is_some_and(|n| i >= n) || started.elapsed() > window => {
                Some("expired")
            }
            None => None,
        };
        ended_as = cut;
        if cut.is_some() {
            unfinished.push(custom_id.clone());
        }
        let line = match (provider, cut) {
            (Provider::OpenAi, Some(why)) => {
                *counts.entry("errored").or_default() += 1;
                let code = if why == "expired" {
                    "batch_expired"
                } else {
                    "batch_cancelled"
                };
                errors.extend(json!({"id": format!("req_{i}"), "custom_id": custom_id, "response": null,
                    "error": {"code": code, "message": "This request could not be executed before the batch ended."}}).to_string().bytes());
                errors.push(b'\n');
                continue;
            }
            (Provider::Anthropic, Some(why)) => {
                let kind = if why == "expired" {
                    "expired"
                } else {
                    "canceled"
                };
                *counts.entry(kind).or_default() += 1;
                json!({"custom_id": custom_id, "result": {"type": kind}})
            }
            (Provider::OpenAi, None) => {
                let (status, reply) = answer(&state, provider, body).await;
                let line = json!({"id": format!("req_{i}"), "custom_id": custom_id,
                    "response": {"status_code": status, "request_id": format!("r{i}"), "body": reply}, "error": null});
                if status == 200 {
                    *counts.entry("succeeded").or_default() += 1;
                    output.extend(line.to_string().bytes());
                    output.push(b'\n');
                } else {
                    *counts.entry("errored").or_default() += 1;
                    errors.extend(line.to_string().bytes());
                    errors.push(b'\n');
                }
                continue;
            }
            (Provider::Anthropic, None) => {
                let (status, reply) = answer(&state, provider, body).await;
                if status == 200 {
                    *counts.entry("succeeded").or_default() += 1;
                    json!({"custom_id": custom_id, "result": {"type": "succeeded", "message": reply}})
                } else {
                    *counts.entry("errored").or_default() += 1;
                    // The error type Anthropic gives for the status.
                    let kind = match status {
                        400 | 413 => "invalid_request_error",
                        401 => "authentication_error",
                        403 => "permission_error",
                        404 => "not_found_error",
                        429 => "rate_limit_error",
                        529 => "overloaded_error",
                        _ => "api_error",
                    };
                    let message = reply
                        .pointer("/error/message")
                        .cloned()
                        .unwrap_or(json!(format!("status {status}")));
                    json!({"custom_id": custom_id, "result": {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}})
                }
            }
        };
        output.extend(line.to_string().bytes());
        output.push(b'\n');
    }
    if provider == Provider::OpenAi && ended_as.is_none() {
        if let Some(batch) = lock(&state).batches.get_mut(&id) {
            batch.status = "finalizing".into();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut b = lock(&state);
    let files = match provider {
        Provider::OpenAi => {
            let out = (!output.is_empty()).then(|| {
                let f = b.id("file");
                b.files.insert(f.clone(), std::mem::take(&mut output));
                f
            });
            let err = (!errors.is_empty()).then(|| {
                let f = b.id("file");
                b.files.insert(f.clone(), std::mem::take(&mut errors));
                f
            });
            Some((out, err))
        }
        Provider::Anthropic => None,
    };
    let Some(batch) = b.batches.get_mut(&id) else {
        return;
    };
    batch.counts = counts;
    batch.unfinished = unfinished;
    match files {
        Some((out, err)) => {
            batch.output_file_id = out;
            batch.error_file_id = err;
            batch.status = match ended_as {
                Some("expired") => "expired",
                Some(_) => "cancelled",
                None => "completed",
            }
            .into();
        }
        None => {
            batch.results = Some(output);
            batch.status = "ended".into();
        }
    }
}
