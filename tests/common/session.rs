//! Test helpers over a DataFusion session (no `caiflow` process): sessions on mock
//! endpoints, queries, prompts, fixtures. Shared by the root package's tests and the
//! engine's (`crates/engine/tests`, which include this file).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;
use caiflow_llm::config::{Config, EndpointConfig};
use datafusion::arrow::array::RecordBatch;

/// The workspace's root (the folder with Cargo.lock), from whichever package's tests this is.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|p| p.join("Cargo.lock").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// A session whose `policy` endpoint points at `base_url`, with quick retries.
pub fn session_for(base_url: &str, configure: impl FnOnce(&mut EndpointConfig)) -> CaiSession {
    let mut e = EndpointConfig::openai(base_url, "mock-model");
    e.retry.initial_backoff_ms = 10;
    e.retry.max_backoff_ms = 50;
    e.timeout_secs = Some(5.0);
    configure(&mut e);
    let mut config = Config::default();
    config.endpoints.insert("policy".into(), e);
    CaiSession::new(Endpoints::from_config(&config).expect("endpoints"))
}

pub async fn collect(session: &CaiSession, sql: &str) -> Vec<RecordBatch> {
    session
        .ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `policy` and `judge` both on `endpoint` (of any kind this build has).
pub fn policy_and_judge(endpoint: EndpointConfig) -> CaiSession {
    let mut config = Config::default();
    for name in ["policy", "judge"] {
        config.endpoints.insert(name.into(), endpoint.clone());
    }
    let endpoints = caiflow_engine::endpoints(&config, caiflow_llm::CancellationToken::new());
    CaiSession::new(endpoints.expect("endpoints"))
}

/// The judge's principle mode over real samples of `prompts`: one row per prompt, none in
/// error, every soft label a probability. Returns the result for more checks.
pub async fn check_principle_mode(session: &CaiSession, prompts: &[&str]) -> Vec<RecordBatch> {
    let dir = tempfile::tempdir().expect("tempdir");
    register_prompts(session, dir.path(), prompts).await;
    let out = collect(
        session,
        "SELECT * FROM judge(sample(prompts, max_tokens => 16), mode => 'principle')",
    )
    .await;
    assert_eq!(rows(&out), prompts.len());
    let errors = column(&out, "error");
    assert!(errors.iter().all(Option::is_none), "{errors:?}");
    for p in column(&out, "chosen_prob") {
        let p: f64 = p.expect("chosen_prob").parse().expect("a number");
        assert!((0.0..=1.0).contains(&p), "{p}");
    }
    out
}

/// The message of a query that must fail when its result is collected.
pub async fn query_error(session: &CaiSession, sql: &str) -> String {
    match session.ctx.sql(sql).await {
        Err(e) => panic!("{sql} should plan and fail while running, but did not plan: {e}"),
        Ok(df) => match df.collect().await {
            Ok(_) => panic!("{sql} should have failed"),
            Err(e) => e.to_string(),
        },
    }
}

pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Every value of a column, as display strings ("" for null).
pub fn column(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = vec![];
    for b in batches {
        let c = b
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"));
        let f = ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).expect("formatter");
        for i in 0..b.num_rows() {
            out.push(if c.is_null(i) {
                None
            } else {
                Some(f.value(i).to_string())
            });
        }
    }
    out
}

/// Write prompts as JSONL `{"prompt": …}` and register them as table `prompts`.
pub async fn register_prompts(session: &CaiSession, dir: &Path, prompts: &[&str]) {
    let path = dir.join("prompts.jsonl");
    let text: String = prompts
        .iter()
        .map(|p| serde_json::json!({ "prompt": p }).to_string() + "\n")
        .collect();
    std::fs::write(&path, text).expect("write prompts");
    collect(
        session,
        &format!(
            "CREATE VIEW prompts AS SELECT * FROM red_team_prompts('{}')",
            path.display()
        ),
    )
    .await;
}

/// `n` prompts `"{prefix}{i}"`, as the owned strings and the slices tests pass around.
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Register `n` numbered prompts as table `prompts`.
pub async fn register_numbered_prompts(session: &CaiSession, dir: &Path, prefix: &str, n: usize) {
    let prompts = numbered(prefix, n);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    register_prompts(session, dir, &refs).await;
}

/// Where shared fixtures live; `None` (the test then says so and skips) unless CI demands them.
pub fn fixture(relative: &str) -> Option<PathBuf> {
    let path = repo_root()
        .join("..")
        .join("shared")
        .join("fixtures")
        .join(relative);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CAIFLOW_REQUIRE_FIXTURES").is_ok_and(|v| v == "1") {
        panic!(
            "fixture {} is missing and CAIFLOW_REQUIRE_FIXTURES=1",
            path.display()
        );
    }
    eprintln!("SKIP: fixture {} not found", path.display());
    None
}
