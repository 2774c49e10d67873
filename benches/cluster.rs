//! SL-CAI (`plans/sl_cai.sql`) on the load-and-fault mock (capacity C = 64, latency 50 ms
//! ± 20 %) in one process and on a cluster of 1 and 2 executors on this machine:
//! requests/s from the first request to the end of the run, and utilization = that rate ÷
//! (C / L), the most the endpoint can serve.
//!
//! `cargo bench --bench cluster [-- PROMPTS]`; under `cargo test` a smoke run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use caiflow_testkit::cluster::LocalCluster;
use caiflow_testkit::{LoadProfile, MockServer};

const C: usize = 64;

fn run(
    dir: &Path,
    server: &MockServer,
    prompts: &Path,
    name: &str,
    cluster: Option<&LocalCluster>,
) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmodel = 'mock'\nmax_concurrency = {C}\n",
            server.base_url()
        ),
    )
    .expect("config");
    let before = server.requests();
    server.reset_first_request();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .args(["run", "plans/sl_cai.sql", "--config"])
        .arg(&config)
        .arg("--store")
        .arg(dir.join("runs"))
        .args(["--run", name, "--set"])
        .arg(format!("prompts={}", prompts.display()));
    if let Some(c) = cluster {
        cmd.args(["--cluster", &c.url()]);
    }
    let started = Instant::now();
    let out = cmd.output().expect("run caiflow");
    let wall = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{name}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.map(LocalCluster::logs).unwrap_or_default()
    );
    let requests = server.requests() - before;
    let busy = server
        .first_request_at()
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(wall);
    let rate = requests as f64 / busy;
    println!(
        "cluster: {name} requests={requests} wall={wall:.2}s from_first_request={busy:.2}s requests/s={rate:.0} utilization={:.3}",
        rate / (C as f64 / 0.05)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let prompts_n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 3000 } else { 40 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let prompts = dir.path().join("prompts.jsonl");
        let text: String = (0..prompts_n)
            .map(|i| format!("{{\"prompt\": \"cluster bench prompt {i}\"}}\n"))
            .collect();
        std::fs::write(&prompts, text).expect("prompts");
        let server = MockServer::start().await.expect("mock");
        server.keep_bodies(false);
        server.set_profile(LoadProfile {
            capacity: Some(C),
            latency: Duration::from_millis(50),
            jitter: 0.2,
            ..Default::default()
        });
        let bin = Path::new(env!("CARGO_BIN_EXE_caiflow"));
        let d = dir.path().to_path_buf();
        let p = prompts.clone();
        // The child processes block; the mock keeps serving on this runtime's threads.
        let server = std::sync::Arc::new(server);
        let s = server.clone();
        tokio::task::spawn_blocking(move || {
            run(&d, &s, &p, "local", None);
            // Executors serve the mock and touch only the bench's folder.
            let executor_config = d.join("executor.toml");
            std::fs::write(
                &executor_config,
                format!("[endpoints.mock]\nbase_url = '{}'\n", s.base_url()),
            )
            .expect("executor config");
            let args = vec![
                "--config".to_string(),
                executor_config.display().to_string(),
                "--allow".to_string(),
                d.display().to_string(),
            ];
            for executors in [1, 2] {
                let cluster = LocalCluster::start_with(bin, executors, 2, 30, vec![], args.clone());
                run(
                    &d,
                    &s,
                    &p,
                    &format!("executors-{executors}"),
                    Some(&cluster),
                );
            }
        })
        .await
        .expect("bench");
        println!("cluster: prompts={prompts_n} C={C} L=50ms±20%");
    });
}
