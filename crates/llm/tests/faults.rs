//! The LLM client against a misbehaving OpenAI-compatible mock on 127.0.0.1: retries,
//! Retry-After, timeouts, garbage, empty content, fatal 4xx, and the concurrency budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caiflow_llm::config::{Config, EndpointConfig};
use caiflow_llm::{ChatRequest, Endpoints, Message, SamplingParams};
use caiflow_testkit::{Fault, MockServer};

fn endpoint(
    server: &MockServer,
    configure: impl FnOnce(&mut EndpointConfig),
) -> Arc<caiflow_llm::Endpoint> {
    let mut e = EndpointConfig::openai(&server.base_url(), "m");
    e.retry.initial_backoff_ms = 10;
    e.retry.max_backoff_ms = 40;
    e.timeout_secs = Some(1.0);
    configure(&mut e);
    let mut c = Config::default();
    c.endpoints.insert("policy".into(), e);
    Endpoints::from_config(&c).unwrap().get("policy").unwrap()
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::user(text)],
        params: SamplingParams::default(),
    }
}

#[tokio::test]
async fn retryable_faults_are_retried_until_success() {
    let server = MockServer::start().await.unwrap();
    let ep = endpoint(&server, |_| {});
    server.push_faults([
        Fault::Status(500),
        Fault::Garbage,
        Fault::Empty,
        Fault::Status(503),
    ]);
    let out = ep.call(&request("hello")).await;
    assert_eq!(out.attempts, 5, "{out:?}");
    assert!(out.result.as_ref().unwrap().text.contains("hello"));
    assert_eq!(server.requests(), 5);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = MockServer::start().await.unwrap();
    let ep = endpoint(&server, |_| {});
    server.push_faults([Fault::RateLimited {
        retry_after_secs: 1,
    }]);
    let started = Instant::now();
    let out = ep.call(&request("x")).await;
    assert!(out.result.is_ok());
    assert_eq!(out.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited only {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_hang_times_out_and_is_retried() {
    let server = MockServer::start().await.unwrap();
    let ep = endpoint(&server, |e| e.timeout_secs = Some(0.3));
    server.push_faults([Fault::Hang(Duration::from_secs(5))]);
    let started = Instant::now();
    let out = ep.call(&request("x")).await;
    assert!(out.result.is_ok(), "{out:?}");
    assert_eq!(out.attempts, 2);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn client_errors_are_not_retried_and_exhaustion_reports_the_cause() {
    let server = MockServer::start().await.unwrap();
    let ep = endpoint(&server, |e| e.retry.max_attempts = 3);
    server.push_faults([Fault::Status(400)]);
    let out = ep.call(&request("x")).await;
    assert_eq!(out.attempts, 1);
    let err = out.result.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 400") && err.contains("not retryable"),
        "{err}"
    );

    server.push_faults([Fault::Garbage, Fault::Garbage, Fault::Garbage]);
    let out = ep.call(&request("x")).await;
    assert_eq!(out.attempts, 3);
    let err = out.result.unwrap_err().to_string();
    assert!(
        err.contains("malformed") && err.contains("gave up"),
        "{err}"
    );
}

#[tokio::test]
async fn connection_refused_is_an_error_not_a_panic() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut e = EndpointConfig::openai(&format!("http://127.0.0.1:{port}/v1"), "m");
    e.retry.max_attempts = 2;
    e.retry.initial_backoff_ms = 5;
    let mut c = Config::default();
    c.endpoints.insert("p".into(), e);
    let ep = Endpoints::from_config(&c).unwrap().get("p").unwrap();
    let out = ep.call(&request("x")).await;
    assert_eq!(out.attempts, 2);
    assert!(
        out.result
            .unwrap_err()
            .to_string()
            .contains("error sending request")
    );
}

#[tokio::test]
async fn concurrency_budget_is_never_exceeded() {
    let server = MockServer::start().await.unwrap();
    server.set_latency(Duration::from_millis(50));
    let ep = endpoint(&server, |e| e.max_concurrency = 3);
    let calls = (0..20).map(|i| {
        let ep = ep.clone();
        tokio::spawn(async move { ep.call(&request(&format!("r{i}"))).await })
    });
    for c in futures::future::join_all(calls).await {
        assert!(c.unwrap().result.is_ok());
    }
    let peak = server
        .state
        .peak_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&peak), "peak in flight {peak}");
}

#[tokio::test]
async fn api_key_comes_from_the_named_variable() {
    let mut e = EndpointConfig::openai("http://127.0.0.1:9/v1", "m");
    if let caiflow_llm::config::BackendConfig::Openai(o) = &mut e.backend {
        o.api_key_env = Some("CAIFLOW_TEST_KEY_THAT_IS_NOT_SET".into());
    }
    let mut c = Config::default();
    c.endpoints.insert("judge".into(), e);
    let err = Endpoints::from_config(&c).unwrap_err().to_string();
    assert!(
        err.contains("CAIFLOW_TEST_KEY_THAT_IS_NOT_SET") && err.contains("judge"),
        "{err}"
    );
}

#[tokio::test]
async fn nemo_generate_backend_extracts_the_answer() {
    let server = MockServer::start().await.unwrap();
    let e = EndpointConfig::nemo(&server.root_url(), "nemo");
    let mut c = Config::default();
    c.endpoints.insert("nemo".into(), e);
    let ep = Endpoints::from_config(&c).unwrap().get("nemo").unwrap();
    let out = ep.call(&request("q")).await;
    assert_eq!(
        out.result.unwrap().text,
        caiflow_testkit::mock_answer("generate")
    );
    let body = &server.bodies()[0];
    assert!(
        body["sentences"][0]
            .as_str()
            .unwrap()
            .ends_with("<extra_id_1>Assistant\n")
    );
    assert!(body["temperature"].as_f64().unwrap() > 0.0);
}

/// A hostile server's reply: a huge or nonsensical Retry-After is capped (never a panic), and
/// absurd token counts are recorded as unknown (never summed or stored).
#[tokio::test]
async fn hostile_retry_after_and_usage_neither_panic_nor_poison() {
    let server = MockServer::start().await.unwrap();
    let ep = endpoint(&server, |e| e.retry.max_retry_after_ms = 50);
    for value in ["1e20", "inf", "18446744073709551616", "-5", "NaN"] {
        server.push_faults([Fault::RetryAfter(value.into())]);
        let started = Instant::now();
        let out = ep.call(&request("x")).await;
        assert!(out.result.is_ok(), "Retry-After {value}: {out:?}");
        assert_eq!(out.attempts, 2);
        assert!(started.elapsed() < Duration::from_secs(2), "{value}");
    }
    for usage in [
        r#"{"prompt_tokens": 9223372036854775808, "completion_tokens": 18446744073709551615}"#,
        r#"{"prompt_tokens": 1e300, "completion_tokens": -1}"#,
        r#"{"prompt_tokens": "many", "completion_tokens": null}"#,
    ] {
        server.push_faults([Fault::Body(format!(
            r#"{{"choices":[{{"message":{{"content":"fine"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
        ))]);
        let out = ep.call(&request("some prompt")).await;
        let c = out.result.expect("an answer");
        assert_eq!(
            (c.prompt_tokens, c.completion_tokens),
            (None, None),
            "{usage}"
        );
        // Counted by the estimate instead: small and finite.
        assert!(out.usage.prompt_tokens < 100 && out.usage.completion_tokens < 100);
    }
}

/// An endless body, or one larger than `max_response_mib`, fails the request at the limit:
/// memory does not follow the server.
#[tokio::test]
async fn endless_and_oversized_bodies_stop_at_the_limit() {
    let server = MockServer::start().await.unwrap();
    let ep = endpoint(&server, |e| {
        e.max_response_mib = Some(1);
        e.timeout_secs = Some(30.0);
    });
    let before = caiflow_testkit::proc_status::status_mib("self", "VmRSS");
    server.push_faults([Fault::Endless]);
    let started = Instant::now();
    let out = ep.call(&request("x")).await;
    let err = out.result.expect_err("too large").to_string();
    assert!(
        err.contains("larger than 1 MiB") && err.contains("max_response_mib"),
        "{err}"
    );
    assert_eq!(out.attempts, 1, "not retried: the server would do it again");
    assert!(started.elapsed() < Duration::from_secs(10));
    let grown = caiflow_testkit::proc_status::status_mib("self", "VmRSS") - before;
    assert!(grown < 64.0, "resident memory grew by {grown:.0} MiB");

    server.push_faults([Fault::Oversized(3 << 20)]);
    let err = ep.call(&request("x")).await.result.expect_err("too large");
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    // Below the limit, an answer of the same server still works.
    assert!(ep.call(&request("x")).await.result.is_ok());
}
