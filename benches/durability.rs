//! Durability figures: the cost of durable journal appends (outcomes recorded per second with
//! the flusher's fsync every 100 ms against the same appends left to the page cache),
//! requests sent again after `kill -9` of a run at about half way, the
//! time from the start of a resumed run to its first new request when the journal holds
//! 100,000 entries, and, on an S3 store (moto, when `CAIFLOW_MOTO` names `moto_server`),
//! requests sent again after `kill -9` one second into a run at ~350 requests/s.
//!
//! `cargo bench --bench durability [-- ROWS]` (default 2,000 rows, 6,000 requests). Under
//! `cargo test` it runs a 200-row smoke version with a 10,000-entry journal.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caiflow_testkit::MockServer;

fn caiflow(dir: &std::path::Path, server: &MockServer, run: &str, rows: usize) -> Command {
    let store = dir.join("store").display().to_string();
    caiflow_at(dir, &store, "caiflow.toml", server, run, rows)
}

fn caiflow_at(
    dir: &std::path::Path,
    store: &str,
    config: &str,
    server: &MockServer,
    run: &str,
    rows: usize,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "plans/sl_cai.sql", "--store", store])
        .args(["--run", run, "--config"])
        .arg(dir.join(config))
        .arg("--set")
        .arg(format!("prompts={}", dir.join("prompts.jsonl").display()))
        .args([
            "--set",
            &format!("limit={rows}"),
            "--set",
            "max_tokens=16",
            "--set",
            "few_shot=none",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = server;
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let rows: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 2000 } else { 200 });
    let journal_entries: usize = if benching { 100_000 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        journal_appends(if benching { 400_000 } else { 20_000 }).await;
        let server = MockServer::start().await.expect("mock");
        server.set_latency(Duration::from_millis(20));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("caiflow.toml"),
            format!("[endpoints.policy]\nbase_url = '{}'\nmax_concurrency = 64\n", server.base_url()),
        )
        .expect("config");
        let text: String = (0..rows).map(|i| format!("{{\"prompt\": \"bench prompt {i}\"}}\n")).collect();
        std::fs::write(dir.path().join("prompts.jsonl"), text).expect("prompts");
        let total = rows as u64 * 3;

        // 1. kill -9 at about half of the requests, then resume.
        let mut child = caiflow(dir.path(), &server, "killed", rows).spawn().expect("spawn");
        while server.requests() < total / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at_kill = server.requests();
        child.kill().expect("kill -9");
        let _ = child.wait();
        let status = caiflow(dir.path(), &server, "killed", rows).status().expect("resume");
        assert!(status.success());
        let repeated = server.repeated();
        println!(
            "durability: rows={rows} requests={total} killed_at={at_kill} sent={} repeated_after_kill={repeated} (in flight at most 64; ~1 s of completions at 64/20ms = 3,200/s)",
            server.requests()
        );

        // 2. A journal of many entries: time to the first new request of a resumed run.
        let journal = dir.path().join("store/big/journal");
        std::fs::create_dir_all(&journal).expect("journal folder");
        let mut lines = String::with_capacity(journal_entries * 120);
        for i in 0..journal_entries {
            lines.push_str(&format!(
                "{{\"h\":\"{:064x}\",\"ok\":true,\"text\":\"journalled answer number {i}\",\"completion_tokens\":5}}\n",
                i
            ));
        }
        std::fs::write(journal.join("0-synthetic.jsonl"), lines).expect("journal");
        server.reset_first_request();
        let started = Instant::now();
        let mut child = caiflow(dir.path(), &server, "big", rows).spawn().expect("spawn");
        while server.first_request_at().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first = server.first_request_at().expect("first request").duration_since(started);
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "durability: journal_entries={journal_entries} time_to_first_new_request={:.3}s (process start, journal load, planning)",
            first.as_secs_f64()
        );

        // 3. An S3 store: kill -9 one second into a run at ~350 requests/s (8 in flight,
        // 20 ms each), then resume.
        if std::env::var_os("CAIFLOW_MOTO").is_none() {
            println!("durability_s3: skipped (set CAIFLOW_MOTO to moto_server's path, as scripts/test.sh does)");
            return;
        }
        let moto = common::MotoServer::start();
        moto.create_bucket("bench");
        let server = MockServer::start().await.expect("mock");
        server.set_latency(Duration::from_millis(20));
        std::fs::write(
            dir.path().join("caiflow.s3.toml"),
            format!("[endpoints.policy]\nbase_url = '{}'\nmax_concurrency = 8\n", server.base_url()),
        )
        .expect("config");
        let s3 = |c: &mut Command| {
            for (k, v) in moto.env() {
                c.env(k, v);
            }
        };
        let mut cmd = caiflow_at(dir.path(), "s3://bench/runs", "caiflow.s3.toml", &server, "s3", rows);
        s3(&mut cmd);
        let mut child = cmd.spawn().expect("spawn");
        while server.requests() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at_kill = server.requests();
        child.kill().expect("kill -9");
        let _ = child.wait();
        let rate = at_kill as f64 / started.elapsed().as_secs_f64();
        let mut inspect = Command::new(env!("CARGO_BIN_EXE_caiflow"));
        inspect.args(["inspect", "s3://bench/runs/s3"]);
        s3(&mut inspect);
        let listing = String::from_utf8_lossy(&inspect.output().expect("inspect").stdout).to_string();
        let journal = listing.lines().find(|l| l.contains("segment")).unwrap_or("").trim().to_string();
        let mut cmd = caiflow_at(dir.path(), "s3://bench/runs", "caiflow.s3.toml", &server, "s3", rows);
        s3(&mut cmd);
        assert!(cmd.status().expect("resume").success());
        println!(
            "durability_s3: rows={rows} killed 1 s in at {at_kill} requests ({rate:.0}/s) repeated_after_kill={} (goal <= in flight 8 + 50); journal at the kill: {journal}",
            server.repeated()
        );
    });
}

/// Outcomes recorded per second into a local journal, three ways: appends alone (the page
/// cache), appends with the flusher running (fsync of the segment and index every 100 ms, as
/// every run does now), and an fsync after every append (what "durable at once" would cost).
async fn journal_appends(n: u64) {
    use caiflow_llm::{Completion, RequestHash};
    use caiflow_run::journal::Journal;
    use caiflow_run::store::RunStore;
    use std::sync::Arc;
    let answer = Completion {
        text: "a journalled answer of realistic length ".repeat(12),
        finish_reason: Some("stop".into()),
        prompt_tokens: Some(120),
        completion_tokens: Some(96),
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rates = vec![];
    for (mode, count) in [
        ("page cache", n),
        ("fsync every 100 ms", n),
        ("fsync every append", n / 50),
    ] {
        let run = mode.replace(' ', "-");
        let store = RunStore::open(dir.path().to_str().expect("utf-8"), &run).expect("store");
        let journal = Arc::new(Journal::open(store).await.expect("journal"));
        let flusher = (mode == "fsync every 100 ms").then(|| journal.spawn_flusher());
        let started = Instant::now();
        for i in 0..count {
            let hash = RequestHash::from_hex(format!("{i:016x}{:048x}", i.wrapping_mul(7)));
            journal.record(&hash, &Ok(answer.clone()));
            if mode == "fsync every append" {
                journal.sync_local().await.expect("sync");
            }
            if i % 4096 == 0 {
                tokio::task::yield_now().await;
            }
        }
        journal.sync_local().await.expect("sync");
        let rate = count as f64 / started.elapsed().as_secs_f64();
        if let Some(f) = flusher {
            f.abort();
        }
        println!("durability_journal: {mode}: {count} outcomes, {rate:.0} appends/s");
        rates.push(rate);
    }
    println!(
        "durability_journal: durable appends (fsync every 100 ms) at {:.2}x the page-cache rate",
        rates[1] / rates[0]
    );
}
