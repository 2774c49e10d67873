//! Batch mode at scale and what it saves.
//!
//! 1. `respond` over N prompts through an OpenAI batch endpoint on the mock's Batch API
//!    (the mock runs in this process; caiflow in its own, so its figures are its alone):
//!    wall time, batches, requests/s, CPU per request, peak RSS (flat in N: at most
//!    `max_concurrency` requests wait in batches at once), the journal's size, and each
//!    batch's submit-to-collect time (mean and slowest, from its record).
//! 2. The cost of SL-CAI (4 rounds) over P prompts at list prices, from dry runs: online,
//!    through the batch API, and batched with prompt caching (Anthropic, `cache_prompt`).
//!
//! `cargo bench --bench batch [-- --requests 20000,200000 --cost-prompts 1000]`; under
//! `cargo test` a smoke run (1,000 and 2,000 requests, 20 prompts).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caiflow_testkit::MockServer;
use caiflow_testkit::batch::BatchProfile;
use caiflow_testkit::proc_status::{children_cpu, peak_rss_mib};

/// List prices (US dollars per million tokens) of a current Anthropic model, Claude Sonnet:
/// input, output, cache reads. Both providers' batch APIs take 50 % off.
const PRICE: &str =
    "price = { input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3 }";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = option("--requests")
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if benching {
                vec![20_000, 200_000]
            } else {
                vec![1_000, 2_000]
            }
        });
    let cost_prompts: usize = option("--cost-prompts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000 } else { 20 });
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("batch: caiflow {build} build");
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for n in sizes {
            batched_requests(dir.path(), n).await;
        }
        cost(dir.path(), cost_prompts).await;
    });
}

async fn batched_requests(dir: &Path, n: usize) {
    let server = MockServer::start().await.expect("mock");
    server.keep_bodies(false);
    server.set_batch_profile(BatchProfile {
        validating: Duration::from_millis(10),
        in_progress: Duration::from_millis(10),
        scale: 1.0,
    });
    let config = dir.join(format!("batch-{n}.toml"));
    std::fs::write(
        &config,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmax_concurrency = 10000\n\
             batch = {{ window_secs = 1.0, poll_secs = 0.2 }}\n{PRICE}\n",
            server.base_url()
        ),
    )
    .expect("config");
    let plan = dir.join("respond.sql");
    std::fs::write(
        &plan,
        "CREATE TABLE responses AS SELECT prompt_id, response, error FROM \
         respond(red_team_prompts('${prompts}'), few_shot => 'none', max_tokens => 200);\n",
    )
    .expect("plan");
    let prompts = write_prompts(dir, n, |i| format!("batch bench prompt number {i}"));
    let run = format!("batch-{n}");
    let started = Instant::now();
    let cpu_before = children_cpu();
    let mut child = caiflow()
        .arg("run")
        .arg(&plan)
        .arg("--store")
        .arg(dir.join("store"))
        .args(["--run", &run, "--config"])
        .arg(&config)
        .arg("--set")
        .arg(format!("prompts={}", prompts.display()))
        .spawn()
        .expect("spawn caiflow");
    let mut peak = 0.0f64;
    let status = loop {
        peak = peak.max(peak_rss_mib(child.id()));
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    let cpu = children_cpu().saturating_sub(cpu_before);
    assert!(status.success(), "caiflow failed");
    assert_eq!(server.repeated(), 0, "a request was answered twice");
    let batches = server.batches_created();
    let lines: usize = batches.iter().map(|b| b.1).sum();
    assert_eq!(lines, n, "every request in one batch line");
    let errors = caiflow()
        .args(["sql", "--config"])
        .arg(&config)
        .arg("--run")
        .arg(dir.join("store").join(&run))
        .args([
            "-e",
            "SELECT concat('errors:', count(error)) AS e FROM responses",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("sql");
    let errors = format!(
        "{}{}",
        String::from_utf8_lossy(&errors.stdout),
        String::from_utf8_lossy(&errors.stderr)
    );
    assert!(errors.contains("errors:0"), "rows failed: {errors}");
    let run_dir = dir.join("store").join(&run);
    let journal_bytes = folder_bytes(&run_dir.join("journal"));
    let records = folder_bytes(&run_dir.join("journal").join("batches"));
    let spans: Vec<f64> = std::fs::read_dir(run_dir.join("journal").join("batches"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter_map(|r| {
                    let s = r.get("submitted_unix_ms")?.as_u64()?;
                    let c = r.get("collected_unix_ms")?.as_u64()?;
                    Some(c.saturating_sub(s) as f64 / 1000.0)
                })
                .collect()
        })
        .unwrap_or_default();
    let mean = spans.iter().sum::<f64>() / spans.len().max(1) as f64;
    let slowest = spans.iter().copied().fold(0.0, f64::max);
    println!(
        "batch: {n} requests in {} batches: {:.1} s, {:.0} requests/s, CPU {:.3} ms per request, peak RSS {peak:.0} MiB, journal {:.1} MB (of it batch records {:.1} MB), submit to collect {mean:.1} s mean, {slowest:.1} s slowest",
        batches.len(),
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / n as f64,
        journal_bytes as f64 / 1e6,
        records as f64 / 1e6,
    );
}

/// SL-CAI (4 rounds) over `prompts` prompts, priced by dry runs three ways.
async fn cost(dir: &Path, prompts: usize) {
    let server = MockServer::start().await.expect("mock");
    let seeds: Vec<String> = std::fs::read_to_string("data/red_team_prompts.jsonl")
        .expect("data/red_team_prompts.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("prompt").and_then(|p| p.as_str()).map(str::to_string))
        .collect();
    assert!(!seeds.is_empty(), "no seed prompts");
    let file = write_prompts(dir, prompts, |i| {
        format!("{} (variant {i})", seeds[i % seeds.len()])
    });
    let mut lines = vec![];
    for (what, keys) in [
        ("online", ""),
        ("batch", "batch = true\n"),
        (
            "batch + prompt caching",
            "batch = true\ncache_prompt = true\n",
        ),
    ] {
        let config = dir.join("cost.toml");
        std::fs::write(
            &config,
            format!(
                "[endpoints.policy]\nkind = 'anthropic'\nbase_url = '{}'\nmodel = 'claude-sonnet'\n{keys}{PRICE}\n",
                server.root_url()
            ),
        )
        .expect("config");
        let out = caiflow()
            .args(["run", "plans/sl_cai.sql", "--dry-run", "--config"])
            .arg(&config)
            .arg("--store")
            .arg(dir.join("cost-store"))
            .arg("--set")
            .arg(format!("prompts={}", file.display()))
            .args(["--set", &format!("limit={prompts}"), "--set", "rounds=4"])
            .stdout(Stdio::piped())
            .output()
            .expect("dry run");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "dry run failed: {text}");
        let total = text
            .lines()
            .find(|l| l.starts_with("total:"))
            .unwrap_or("")
            .to_string();
        let expected = total
            .rsplit_once("expected $")
            .map(|(_, c)| c.trim().to_string())
            .unwrap_or_default();
        lines.push(format!("{what} ${expected}"));
        if what == "online" {
            println!("batch: SL-CAI (4 rounds) over {prompts} prompts: {total}");
        }
    }
    println!(
        "batch: SL-CAI (4 rounds) over {prompts} prompts at $3/$15 per MTok (cache reads $0.30), expected cost: {}",
        lines.join(", ")
    );
}

fn caiflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn write_prompts(dir: &Path, n: usize, text: impl Fn(usize) -> String) -> PathBuf {
    let path = dir.join(format!("prompts-{n}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("prompts"));
    for i in 0..n {
        let line = serde_json::json!({ "prompt": text(i) });
        writeln!(f, "{line}").expect("write");
    }
    path
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
