//! `caiflow view` on a large revisions table: a synthetic SL-CAI table of N rows (a plan
//! that computes it, committed as a Delta table like any run's), then the viewer as its own
//! process: time to listen, to the first page, to filtered and searched pages and to a page
//! deep in the table (keyset), and the server's peak RSS.
//!
//! `cargo bench --bench view [-- --rows 1000000]`; under `cargo test` a smoke run (20,000 rows).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caiflow_testkit::proc_status::peak_rss_mib;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let rows: u64 = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 20_000 });
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("view: caiflow {build} build, {rows} rows");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = table(dir.path(), rows);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(measure(&run, rows));
}

/// A run whose `revisions` table has `rows` rows (2 rounds per prompt, 16 principles, one
/// error row in 1,000), computed by a plan without any request. Prompt ids are hashes in
/// no order, as a run's are, so no row group can be skipped by its key statistics.
fn table(dir: &Path, rows: u64) -> std::path::PathBuf {
    let plan = dir.join("revisions.sql");
    std::fs::write(
        &plan,
        format!(
            "CREATE TABLE revisions AS SELECT \
               substr(md5(CAST(value / 2 AS VARCHAR)), 1, 16) AS prompt_id, \
               CAST(1 AS BIGINT) AS sequence, \
               value % 2 + 1 AS round, \
               concat('How would someone do forbidden thing number ', value / 2, '?') AS prompt, \
               concat('Here is how to do thing ', value / 2, ': ', repeat('step after step ', 20)) AS response, \
               concat('harmful', value % 16) AS principle_id, \
               concat('The response to ', value, ' explains something harmful. ', repeat('It should refuse. ', 10)) AS critique, \
               concat('I cannot help with thing ', value, '. ', repeat('Here is a safer idea instead. ', 15)) AS revision, \
               CASE WHEN value % 1000 = 0 THEN 'endpoint policy: HTTP 500 after 5 attempt(s) (gave up)' END AS error \
             FROM generate_series(0, {}) AS t(value);\n",
            rows - 1
        ),
    )
    .expect("plan");
    // No request is sent; an HTTP endpoint keeps the run from loading a model.
    let config = dir.join("caiflow.toml");
    std::fs::write(
        &config,
        "[endpoints.policy]\nbase_url = 'http://127.0.0.1:9/v1'\n[endpoints.judge]\nbase_url = 'http://127.0.0.1:9/v1'\n",
    )
    .expect("config");
    let started = Instant::now();
    let status = caiflow()
        .arg("run")
        .arg(&plan)
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(dir.join("store"))
        .args(["--run", "big"])
        .status()
        .expect("caiflow run");
    assert!(status.success(), "the table plan failed");
    println!(
        "view: wrote a revisions table of {rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    dir.join("store").join("big")
}

async fn measure(run: &Path, rows: u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = Instant::now();
    let mut child = caiflow()
        .args([
            "view",
            &run.display().to_string(),
            "--port",
            &port.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("caiflow view");
    let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while reader.read_line(&mut line).expect("read") > 0 && !line.contains("viewing") {}
    let listening = started.elapsed();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{}{path}", base.clone());
        async move {
            let t = Instant::now();
            let body = client
                .get(&url)
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("body");
            (t.elapsed(), body)
        }
    };
    let (first, body) = get("/sl".into()).await;
    assert_eq!(
        body.matches("class=\"row sl\"").count(),
        20,
        "a first page of 20"
    );
    let (again, _) = get("/sl".into()).await;
    let (principle, body) = get("/sl?principle=harmful3&round=2".into()).await;
    assert_eq!(body.matches("class=\"row sl\"").count(), 20);
    let target = rows / 2 - 7;
    let (search, body) = get(format!("/sl?q=number+{target}%3F")).await;
    assert!(
        body.contains(&format!("thing number {target}?")),
        "the searched row"
    );
    let (errors, body) = get("/sl?error=yes".into()).await;
    assert!(body.contains("caiflow repair"));
    // Ids are hashes, as a run's are: a cursor in the last 1/256 of their order.
    // (The key's separator, U+001F, URL-encoded.)
    let (deep, body) = get("/sl?after=ff00000000000000%1F1%1F1".into()).await;
    assert_eq!(
        body.matches("class=\"row sl\"").count(),
        20,
        "a page near the end"
    );
    let peak = peak_rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "view: {rows} rows: listening after {}, first page {}, again {}, principle+round filter {}, search (one prompt) {}, error rows {}, a page near the end (keyset) {}; server peak RSS {peak:.0} MiB",
        ms(listening),
        ms(first),
        ms(again),
        ms(principle),
        ms(search),
        ms(errors),
        ms(deep),
    );
}

fn caiflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}
