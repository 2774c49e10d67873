//! `caiflow-mock`: a load-and-fault endpoint for tests and benchmarks. OpenAI-compatible
//! `POST /v1/chat/completions` and NeMo `PUT /generate`, with a fixed capacity (requests
//! beyond it queue), latency ± jitter, time per token, random faults, and counters by
//! request fingerprint at `GET /stats`.

use std::time::Duration;

use caiflow_testkit::{LoadProfile, MockServer};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "caiflow-mock",
    about = "An OpenAI-compatible load-and-fault endpoint"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: String,
    /// Requests served at once; more wait.
    #[arg(long)]
    capacity: Option<usize>,
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Latency jitter as a share (0.2 = ±20 %).
    #[arg(long, default_value_t = 0.0)]
    jitter: f64,
    #[arg(long, default_value_t = 0.0)]
    per_token_ms: f64,
    /// Probability of a fault per request (500, 429, hang, drop, non-JSON, empty).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    #[arg(long, default_value_t = 5000)]
    hang_ms: u64,
    /// Pad default answers to this many words (0: short answers).
    #[arg(long, default_value_t = 0)]
    answer_words: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let server = MockServer::start_on(&a.listen).await?;
    server.set_profile(LoadProfile {
        capacity: a.capacity,
        latency: Duration::from_millis(a.latency_ms),
        jitter: a.jitter,
        per_token: Duration::from_secs_f64(a.per_token_ms / 1000.0),
        fault_rate: a.fault_rate,
        hang: Duration::from_millis(a.hang_ms),
    });
    server.set_answer_words(a.answer_words);
    println!(
        "caiflow-mock listening on http://{}/v1 (stats: /stats)",
        server.addr
    );
    tokio::signal::ctrl_c().await?;
    println!("{}", server.stats());
    Ok(())
}
