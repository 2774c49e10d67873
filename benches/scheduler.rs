//! Scheduler figures against the load-and-fault mock (issue: saturate any endpoint):
//! - utilization: the SL pipeline (3 dependent calls per row), C = 64, L = 50 ms ± 20 %,
//!   achieved requests/s ÷ (C / L);
//! - zero-latency throughput: one stage at L = 0 against a plain HTTP load loop with the same
//!   client library and concurrency;
//! - memory: peak RSS for N prompts through one stage at L = 0 (each N in its own process);
//! - faults: 10 % mixed faults, rows done + rows in error = N.
//!
//! `cargo bench --bench scheduler [-- ROWS [MEMORY_ROWS…]]`; under `cargo test` a smoke run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;
use caiflow_llm::config::{Config, EndpointConfig};
use caiflow_testkit::{LoadProfile, MockServer};

fn peak_rss_mib() -> f64 {
    caiflow_testkit::proc_status::status_mib("self", "VmHWM")
}

fn session(
    url: &str,
    concurrency: usize,
    configure: impl FnOnce(&mut EndpointConfig),
) -> CaiSession {
    let mut e = EndpointConfig::openai(url, "mock");
    e.max_concurrency = concurrency;
    configure(&mut e);
    let mut config = Config::default();
    config.endpoints.insert("policy".into(), e);
    CaiSession::new(Endpoints::from_config(&config).expect("endpoints"))
}

fn write_prompts(dir: &std::path::Path, rows: u64) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join(format!("prompts-{rows}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("prompts"));
    for i in 0..rows {
        writeln!(f, "{{\"prompt\": \"bench prompt {i}\"}}").expect("write");
    }
    path
}

async fn count(session: &CaiSession, sql: &str) -> u64 {
    let out = session
        .ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let b = &out[0];
    let c = datafusion::arrow::compute::cast(
        b.column(0),
        &datafusion::arrow::datatypes::DataType::UInt64,
    )
    .expect("cast");
    c.as_any()
        .downcast_ref::<datafusion::arrow::array::UInt64Array>()
        .expect("u64")
        .value(0)
}

/// Child mode: push `rows` prompts through one stage at L = 0 and print peak RSS.
async fn memory_child(rows: u64) {
    let server = MockServer::start().await.expect("mock");
    // The mock shares the process: keep only its counters, not every request body.
    server.keep_bodies(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = write_prompts(dir.path(), rows);
    let s = session(&server.base_url(), 64, |_| {});
    let started = Instant::now();
    let n = count(&s, &format!("SELECT count(*) FROM respond(red_team_prompts('{}', dedup => false), few_shot => 'none')", prompts.display())).await;
    assert_eq!(n, rows);
    println!(
        "memory: rows={rows} peak_rss={:.0}MiB wall={:.1}s requests/s={:.0}",
        peak_rss_mib(),
        started.elapsed().as_secs_f64(),
        rows as f64 / started.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        let rows: u64 = args.get(i + 1).and_then(|a| a.parse().ok()).unwrap_or(1000);
        rt.block_on(memory_child(rows));
        return;
    }
    let benching = args.iter().any(|a| a == "--bench");
    let numbers: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rows = numbers
        .first()
        .copied()
        .unwrap_or(if benching { 2000 } else { 100 });
    let memory_rows: Vec<u64> = if numbers.len() > 1 {
        numbers[1..].to_vec()
    } else if benching {
        vec![10_000, 100_000]
    } else {
        vec![200]
    };

    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let prompts = write_prompts(dir.path(), rows);

        // Utilization.
        let c = 64usize;
        let server = MockServer::start().await.expect("mock");
        server.keep_bodies(false);
        server.set_profile(LoadProfile {
            capacity: Some(c),
            latency: Duration::from_millis(50),
            jitter: 0.2,
            ..Default::default()
        });
        let s = session(&server.base_url(), c, |_| {});
        let started = Instant::now();
        let n = count(&s, &format!("SELECT count(*) FROM revise(critique(respond(red_team_prompts('{}'), few_shot => 'none'), few_shot => 'none'), few_shot => 'none')", prompts.display())).await;
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(n, rows);
        let rate = server.requests() as f64 / secs;
        println!("utilization: rows={rows} C={c} L=50ms±20% requests={} wall={secs:.2}s requests/s={rate:.0} utilization={:.3}", server.requests(), rate / (c as f64 / 0.05));

        // Zero latency: one stage vs a plain HTTP loop.
        let server = MockServer::start().await.expect("mock");
        server.keep_bodies(false);
        let s = session(&server.base_url(), c, |_| {});
        let started = Instant::now();
        count(&s, &format!("SELECT count(*) FROM respond(red_team_prompts('{}'), few_shot => 'none')", prompts.display())).await;
        let stage_rate = rows as f64 / started.elapsed().as_secs_f64();
        let client = reqwest::Client::new();
        let url = format!("{}/chat/completions", server.base_url());
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..c)
            .map(|_| {
                let (client, url, next) = (client.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < rows {
                        let body = serde_json::json!({"model": "mock", "messages": [{"role": "user", "content": "bench prompt"}], "max_tokens": 512});
                        let r = client.post(&url).json(&body).send().await.expect("send");
                        let _ = r.bytes().await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("worker");
        }
        let raw_rate = rows as f64 / started.elapsed().as_secs_f64();
        println!("zero_latency: rows={rows} stage_requests/s={stage_rate:.0} raw_http_requests/s={raw_rate:.0} ratio={:.2}", stage_rate / raw_rate);

        // Faults: 10 % mixed.
        let server = MockServer::start().await.expect("mock");
        server.set_profile(LoadProfile {
            capacity: Some(c),
            latency: Duration::from_millis(5),
            fault_rate: 0.10,
            hang: Duration::from_millis(1500),
            ..Default::default()
        });
        let s = session(&server.base_url(), c, |e| {
            e.timeout_secs = Some(0.5);
            e.retry.max_attempts = 10;
            e.retry.initial_backoff_ms = 10;
            e.retry.max_backoff_ms = 100;
        });
        let total = count(&s, &format!("SELECT count(*) FROM respond(red_team_prompts('{}'), few_shot => 'none')", prompts.display())).await;
        let errors = count(&s, &format!("SELECT count(error) FROM respond(red_team_prompts('{}'), few_shot => 'none')", prompts.display())).await;
        println!("faults: rows={rows} fault_rate=0.10 rows_out={total} rows_in_error={errors} requests={} (every retryable fault recovered: {})", server.requests(), errors == 0);

        // Memory, each size in a fresh process.
        let me = std::env::current_exe().expect("exe");
        for n in memory_rows {
            let out = std::process::Command::new(&me).args(["--memory-child", &n.to_string()]).output().expect("child");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    });
}
