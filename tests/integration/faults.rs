//! Fault policy and scheduling against the load-and-fault mock: a bad key fails fast, a
//! plainly broken endpoint aborts at the maximum error rate, mixed faults are all recovered,
//! and rows progress depth-first.

use std::time::{Duration, Instant};

use crate::common::*;
use caiflow_testkit::{Fault, LoadProfile, MockServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_fails_the_query_fast() {
    let server = MockServer::start().await.unwrap();
    server.push_faults((0..500).map(|_| Fault::Status(401)));
    let session = session_for(&server.base_url(), |e| e.max_concurrency = 4);
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "p", 200).await;
    let started = Instant::now();
    let err = query_error(&session, "SELECT * FROM respond(prompts)").await;
    assert!(
        err.contains("refused") && err.contains("API key") && err.contains("HTTP 401"),
        "{err}"
    );
    assert!(
        server.requests() <= 16,
        "stopped sending: {} requests",
        server.requests()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_endpoint_aborts_at_the_maximum_error_rate() {
    let server = MockServer::start().await.unwrap();
    server.push_faults((0..1000).map(|_| Fault::Status(500)));
    let session = session_for(&server.base_url(), |e| {
        e.retry.max_attempts = 1;
        e.max_error_rate = Some(0.5);
    });
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "p", 300).await;
    let err = query_error(&session, "SELECT * FROM respond(prompts)").await;
    assert!(
        err.contains("above the maximum error rate 0.5") && err.contains("HTTP 500"),
        "{err}"
    );
    assert!(server.requests() < 100, "{} requests", server.requests());

    // Without the limit, the same faults are row errors and the query finishes.
    let server = MockServer::start().await.unwrap();
    server.push_faults((0..20).map(|_| Fault::Status(500)));
    let session = session_for(&server.base_url(), |e| e.retry.max_attempts = 1);
    register_numbered_prompts(&session, dir.path(), "p", 40).await;
    let out = collect(&session, "SELECT error FROM respond(prompts)").await;
    assert_eq!(rows(&out), 40);
    assert_eq!(column(&out, "error").iter().flatten().count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_mixed_faults_are_all_recovered() {
    let server = MockServer::start().await.unwrap();
    server.set_profile(LoadProfile {
        capacity: Some(16),
        latency: Duration::from_millis(2),
        jitter: 0.5,
        fault_rate: 0.10,
        hang: Duration::from_millis(1500),
        ..Default::default()
    });
    let session = session_for(&server.base_url(), |e| {
        e.max_concurrency = 16;
        e.timeout_secs = Some(0.5);
        e.retry.max_attempts = 8;
        e.retry.initial_backoff_ms = 5;
        e.retry.max_backoff_ms = 20;
    });
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "p", 150).await;
    let out = collect(
        &session,
        "SELECT error FROM critique(respond(prompts, few_shot => 'none'), few_shot => 'none')",
    )
    .await;
    assert_eq!(rows(&out), 150, "every row is accounted for");
    let errors: Vec<_> = column(&out, "error").into_iter().flatten().collect();
    assert!(
        errors.is_empty(),
        "retryable faults are recovered: {errors:?}"
    );
    assert!(
        server.requests() > 300,
        "faults were injected: {}",
        server.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_progress_depth_first() {
    let server = MockServer::start().await.unwrap();
    server.set_latency(Duration::from_millis(15));
    let session = session_for(&server.base_url(), |e| e.max_concurrency = 1);
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "prompt ", 8).await;
    collect(
        &session,
        "SELECT * FROM critique(respond(prompts, few_shot => 'none'), few_shot => 'none')",
    )
    .await;
    // With one request at a time, a finished response's critique is sent before the next
    // waiting first turn: critiques never lag more than the few rows already waiting. (One
    // more row may start while a finished response crosses from respond to critique on a
    // loaded machine; breadth-first would open all 8.)
    let mut started = 0;
    let mut max_open = 0;
    for body in server.bodies() {
        if body["messages"].as_array().map(Vec::len) == Some(1) {
            started += 1;
        } else {
            started -= 1;
        }
        max_open = max_open.max(started);
    }
    assert!(max_open <= 3, "{max_open} rows were open at once");
}
