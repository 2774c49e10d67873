//! The native Anthropic backend (`kind = "anthropic"`) against the testkit's Messages API:
//! a plan runs on it, the prompt cache is marked and its reads are counted and priced, the
//! thinking blocks stay apart from the answers, 529s are retried, and a missing key names
//! its variable.

use std::path::Path;

use serde_json::Value;

use crate::common::*;
use crate::report::read_json;
use caiflow_testkit::{Fault, MockServer};

const KEY_VAR: &str = "CAIFLOW_TEST_ANTHROPIC_KEY";

fn anthropic_config(dir: &Path, server: &MockServer, key_var: &str) -> std::path::PathBuf {
    let path = dir.join("caiflow.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoints.policy]\nkind = 'anthropic'\nbase_url = '{}'\nmodel = 'claude-mock'\n\
             api_key_env = '{key_var}'\ncache_prompt = true\nmax_concurrency = 4\n\
             retry = {{ max_attempts = 5, initial_backoff_ms = 5, max_backoff_ms = 20 }}\n\
             price = {{ input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3 }}\n",
            server.root_url()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sl_cai_runs_on_the_messages_api_with_the_prompt_cache() {
    let server = MockServer::start().await.unwrap();
    server.set_reasoning(Some("thinking"));
    // Overloaded twice: retried like any 5xx.
    server.push_faults([Fault::Status(529), Fault::Status(529)]);
    let dir = tempfile::tempdir().unwrap();
    let config = anthropic_config(dir.path(), &server, KEY_VAR);
    let store = dir.path().join("runs");
    let (stdout, stderr) = run_ok(
        caiflow()
            .env(KEY_VAR, "sk-ant-test")
            .args(["run", "plans/sl_cai.sql", "--config"])
            .arg(&config)
            .arg("--store")
            .arg(&store)
            .args(["--run", "claude", "--set", "limit=5", "--set", "rounds=2"]),
    );
    // 5 responses, 5 critiques, 5 x (2 revisions + 1 critique); two 529s retried.
    assert_eq!(server.requests(), 5 + 5 + 15 + 2, "{stdout}\n{stderr}");
    for body in server.bodies() {
        assert_eq!(body["model"], "claude-mock");
        assert!(body["max_tokens"].as_u64().is_some(), "{body}");
        let turns = body["messages"].as_array().unwrap();
        assert!(turns.iter().all(|t| t["role"] != "system"));
        if turns.len() > 1 {
            let marked = &turns[turns.len() - 2]["content"][0]["cache_control"]["type"];
            assert_eq!(
                marked, "ephemeral",
                "the shared prefix is cacheable: {body}"
            );
        }
    }
    let run = store.join("claude");
    let (out, _) = run_ok(caiflow().args([
        "sql",
        "--run",
        run.to_str().unwrap(),
        "-e",
        "SELECT concat('counts:', count(*), ',', count(error), ',', \
           count(*) FILTER (WHERE revision LIKE '%Thinking about%' OR response LIKE '%Thinking about%'), ',', \
           count(*) FILTER (WHERE revision_reasoning LIKE 'Thinking about%')) AS c \
         FROM revisions",
    ]));
    // 10 rows, no errors, no thinking in an answer, the thinking of every revision kept.
    assert!(out.contains("counts:10,0,0,10"), "{out}");
    let (html, _) = caiflow_ok(&["report", run.to_str().unwrap()]);
    let report: Value = read_json(&Path::new(html.trim()).with_file_name("report.json"));
    let usage = &report["usage_total"];
    let cached = usage["cached_tokens"].as_u64().unwrap();
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(cached > 0 && cached < prompt, "{usage}");
    // Priced with the cached-input price: cheaper than every prompt token at full price.
    let full =
        (prompt as f64 * 3.0 + usage["completion_tokens"].as_u64().unwrap() as f64 * 15.0) / 1e6;
    let cost = usage["cost"].as_f64().unwrap();
    let expected = full - cached as f64 * (3.0 - 0.3) / 1e6;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
    assert!(usage["reasoning_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_names_its_variable() {
    let server = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = anthropic_config(dir.path(), &server, "CAIFLOW_TEST_UNSET_ANTHROPIC_KEY");
    let out = caiflow()
        .env_remove("CAIFLOW_TEST_UNSET_ANTHROPIC_KEY")
        .args(["run", "plans/sl_cai.sql", "--config"])
        .arg(&config)
        .arg("--store")
        .arg(dir.path().join("runs"))
        .args(["--set", "limit=1"])
        .output()
        .unwrap();
    let (_, stderr) = output_text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("CAIFLOW_TEST_UNSET_ANTHROPIC_KEY"),
        "{stderr}"
    );
    assert_eq!(server.requests(), 0);
}
