//! What spend control costs.
//!
//! 1. The budget ledger: reserving a request's worst case in the run's and its endpoint's
//!    ledgers, then settling it, from 1 and from 2 threads at once: nanoseconds per request
//!    (each request sent pays this once).
//! 2. `caiflow run --dry-run` of the SL-CAI plan (rounds = 2) over N synthetic prompts: wall
//!    time, requests counted per second and the process's peak RSS (the plan runs through
//!    stand-in endpoints into a temporary store, so memory must stay flat in N).
//!
//! `cargo bench --bench spend [-- --requests 4000000 --prompts 100000]`; under `cargo test`
//! a smoke run.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use caiflow_llm::spend::{Ledger, reserve};
use caiflow_llm::{Budget, Usage};
use caiflow_testkit::proc_status::wait_with_peak_rss;

fn ledger(requests: usize, threads: usize) {
    let budget = Budget {
        max_tokens: Some(u64::MAX / 4),
        max_cost: Some(1e12),
        max_requests: Some(u64::MAX / 4),
    };
    let run = Ledger::new("run", budget, Usage::default());
    let endpoint = Ledger::new("endpoints.policy.budget", budget, Usage::default());
    let ledgers = Arc::new([run.clone(), endpoint]);
    let worst = Usage {
        requests: 1,
        prompt_tokens: 900,
        completion_tokens: 512,
        cost: 0.01,
        ..Default::default()
    };
    let used = Usage {
        requests: 1,
        prompt_tokens: 700,
        completion_tokens: 200,
        cost: 0.005,
        ..Default::default()
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let ledgers = ledgers.clone();
            std::thread::spawn(move || {
                for _ in 0..requests / threads {
                    let r = reserve(ledgers.as_slice(), worst).expect("fits");
                    r.settle(&used);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(run.spent().requests as usize, requests / threads * threads);
    println!(
        "ledger: {requests} reserve+settle over 2 ledgers from {threads} thread(s) in {secs:.3} s ({:.0} ns/request)",
        secs * 1e9 / requests as f64
    );
}

fn dry_run(prompts: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("prompts.jsonl");
    let text: String = (0..prompts)
        .map(|i| format!("{{\"prompt\": \"How would someone get into locked shed number {i} without a key?\"}}\n"))
        .collect();
    std::fs::write(&file, text).expect("prompts");
    let config = dir.path().join("caiflow.toml");
    std::fs::write(
        &config,
        "[endpoints.policy]\nbase_url = 'http://127.0.0.1:9/v1'\nmodel = 'm'\nmax_concurrency = 64\n\
         price = { input_per_mtok = 3.0, output_per_mtok = 15.0 }\n\
         [endpoints.judge]\nbase_url = 'http://127.0.0.1:9/v1'\nmodel = 'm'\n",
    )
    .expect("config");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "plans/sl_cai.sql", "--dry-run", "--config"])
        .arg(&config)
        .arg("--store")
        .arg(dir.path().join("runs"))
        .args([
            "--set",
            &format!("prompts={}", file.display()),
            "--set",
            "rounds=2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("caiflow run --dry-run");
    let (_, peak) = wait_with_peak_rss(&mut child).expect("wait");
    let out = child.wait_with_output().expect("output");
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let total = stdout
        .lines()
        .find(|l| l.starts_with("total:"))
        .unwrap_or_default()
        .to_string();
    let requests: f64 = total
        .split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    println!(
        "dry run: SL-CAI (rounds = 2) over {prompts} prompts in {secs:.2} s ({:.0} requests counted/s), peak RSS {peak:.0} MiB\n  {total}",
        requests / secs
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let option = |name: &str, default: usize, smoke: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(if benching { default } else { smoke })
    };
    let requests = option("--requests", 4_000_000, 20_000);
    ledger(requests, 1);
    ledger(requests, 2);
    let prompts = option("--prompts", 100_000, 500);
    dry_run(prompts / 10);
    dry_run(prompts);
}
