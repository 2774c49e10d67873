//! SL-CAI pipeline throughput against the mock endpoint: respond → critique → revise (three
//! dependent calls per row) streamed through one shared endpoint budget.
//!
//! `cargo bench --bench sl_pipeline [-- ROWS CONCURRENCY LATENCY_MS]` prints requests/s,
//! utilization (achieved requests/s ÷ (concurrency / latency)) and peak RSS. Under
//! `cargo test` it runs a 60-row smoke version.

use std::time::{Duration, Instant};

use caiflow::CaiSession;
use caiflow::config::{Config, EndpointConfig};
use caiflow::llm::Endpoints;
use caiflow::testing::MockServer;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let numbers: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rows = numbers
        .first()
        .copied()
        .unwrap_or(if benching { 2000 } else { 60 });
    let concurrency = numbers.get(1).copied().unwrap_or(64) as usize;
    let latency_ms = numbers.get(2).copied().unwrap_or(50);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let server = MockServer::start().await.expect("mock");
        server.set_latency(Duration::from_millis(latency_ms));
        let mut e = EndpointConfig::openai(&server.base_url(), "mock");
        e.max_concurrency = concurrency;
        let mut config = Config::default();
        config.endpoints.insert("policy".into(), e);
        let session = CaiSession::new(Endpoints::from_config(&config).expect("endpoints"));

        let dir = tempfile::tempdir().expect("tempdir");
        let prompts = dir.path().join("prompts.jsonl");
        let text: String = (0..rows).map(|i| format!("{{\"prompt\": \"bench prompt {i}\"}}\n")).collect();
        std::fs::write(&prompts, text).expect("write prompts");
        let sql = format!(
            "SELECT count(*) FROM revise(critique(respond(red_team_prompts('{}'), few_shot => 'none'), few_shot => 'none'), few_shot => 'none')",
            prompts.display()
        );
        let started = Instant::now();
        let out = session.ctx.sql(&sql).await.expect("plan").collect().await.expect("run");
        let secs = started.elapsed().as_secs_f64();
        let n: usize = out.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 1);
        let requests = server.requests();
        assert_eq!(requests, rows * 3, "three calls per row");
        let rate = requests as f64 / secs;
        let ideal = concurrency as f64 / (latency_ms.max(1) as f64 / 1000.0);
        println!(
            "sl_pipeline: rows={rows} concurrency={concurrency} latency={latency_ms}ms requests={requests} \
             wall={secs:.2}s requests/s={rate:.0} utilization={:.3} peak_in_flight={} peak_rss={:.0}MiB",
            rate / ideal,
            server.state.peak_in_flight.load(std::sync::atomic::Ordering::SeqCst),
            peak_rss_mib()
        );
    });
}
