//! Embedded backend against llama.cpp's own server (issue: zero setup, embedded model).
//!
//! The same GGUF ($CAIFLOW_MODEL), the same thread count (1 on this 2-core machine), 8
//! sequences at once on both sides; the sample red-team prompts as chat requests, greedy,
//! `max_tokens` each. Prints generated tokens/s of both and their ratio (goal >= 0.9x).
//! The server is the `xllamacpp` wheel started through tests/support/llama_server.py
//! ($CAIFLOW_PYTHON); both are driven through caiflow's own Backend implementations, so the
//! harness is identical.
//!
//! `cargo bench --bench embedded [-- REQUESTS MAX_TOKENS]` (or, avoiding a release build of
//! DataFusion: `cargo test --bench embedded -- --full`). llama.cpp itself is always compiled
//! optimized, so a debug build of caiflow measures the same decode speed. Under plain
//! `cargo test` a smoke run (8 requests of 16 tokens).

use std::sync::Arc;
use std::time::{Duration, Instant};

use caiflow_embedded::EmbeddedBackend;
use caiflow_llm::config::EndpointConfig;
use caiflow_llm::openai::{OpenAiApi, OpenAiBackend};
use caiflow_llm::{Backend, ChatRequest, Message, SamplingParams};
use futures::StreamExt;

#[path = "../tests/common/mod.rs"]
mod common;

const SEQUENCES: usize = 8;

fn prompts(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/red_team_prompts.jsonl"
    ))
    .expect("sample prompts");
    let all: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["prompt"].as_str().map(str::to_string))
        .collect();
    all.iter().cycle().take(n).cloned().collect()
}

struct Figures {
    wall: Duration,
    completion_tokens: u64,
    prompt_tokens: u64,
}

impl Figures {
    fn tokens_per_second(&self) -> f64 {
        self.completion_tokens as f64 / self.wall.as_secs_f64()
    }
}

async fn drive(backend: Arc<dyn Backend>, prompts: &[String], max_tokens: u32) -> Figures {
    backend.prepare().await.expect("backend ready");
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(prompts.iter().cloned())
        .map(|prompt| {
            let backend = backend.clone();
            async move {
                let request = ChatRequest {
                    messages: vec![Message::user(prompt)],
                    params: SamplingParams {
                        temperature: Some(0.0),
                        max_tokens: Some(max_tokens),
                        ..Default::default()
                    },
                };
                backend.complete(&request).await.expect("completion")
            }
        })
        .buffer_unordered(SEQUENCES)
        .collect()
        .await;
    Figures {
        wall: started.elapsed(),
        completion_tokens: results.iter().filter_map(|c| c.completion_tokens).sum(),
        prompt_tokens: results.iter().filter_map(|c| c.prompt_tokens).sum(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench" || a == "--full");
    let numbers: Vec<u32> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let requests = numbers
        .first()
        .copied()
        .unwrap_or(if full { 48 } else { 8 }) as usize;
    let max_tokens = numbers
        .get(1)
        .copied()
        .unwrap_or(if full { 128 } else { 16 });
    let model = std::env::var("CAIFLOW_MODEL")
        .expect("CAIFLOW_MODEL (a GGUF file) is not set: run through scripts/test.sh or set it");
    let prompts = prompts(requests);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut embedded_config = EndpointConfig::embedded(Some(&model));
    embedded_config.max_concurrency = SEQUENCES;
    embedded_config.embedded_mut().expect("embedded").threads = Some(1);
    let threads = 1;
    println!(
        "embedded vs llama.cpp server: {requests} chat requests, greedy, max_tokens {max_tokens}, {SEQUENCES} at once, {threads} thread"
    );
    let embedded = rt.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new(&embedded_config));
        drive(backend, &prompts, max_tokens).await
    });
    let server = {
        let server = common::LlamaServer::start(SEQUENCES);
        let url = server.base_url();
        rt.block_on(async {
            let backend: Arc<dyn Backend> = Arc::new(OpenAiBackend::new(
                reqwest::Client::new(),
                OpenAiApi::Chat,
                &url,
                "smollm2",
                None,
            ));
            drive(backend, &prompts, max_tokens).await
        })
    };
    for (name, f) in [("embedded", &embedded), ("llama.cpp server", &server)] {
        println!(
            "  {name:<17} {:>7.1} generated tokens/s  ({} generated, {} prompt tokens in {:.1} s)",
            f.tokens_per_second(),
            f.completion_tokens,
            f.prompt_tokens,
            f.wall.as_secs_f64()
        );
    }
    println!(
        "  ratio embedded / server: {:.2}x (goal >= 0.9x)",
        embedded.tokens_per_second() / server.tokens_per_second()
    );
    assert!(embedded.completion_tokens > 0 && server.completion_tokens > 0);
}
