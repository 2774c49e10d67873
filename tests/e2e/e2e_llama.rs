//! End to end on a real model: llama.cpp's server (PyPI `xllamacpp`) serving
//! SmolLM2-135M-Instruct on 127.0.0.1, driven by the plans through the `caiflow` binary.

// The lock below only serializes these tests (each has its own runtime); holding it across
// awaits is the point.
#![allow(clippy::await_holding_lock)]

use std::collections::BTreeSet;
use std::process::Command;

use crate::committed_table;
use crate::common::*;
use caiflow_engine::constitution::Constitution;

/// The real-model tests run one at a time: each starts a llama.cpp server with one thread,
/// and two of them on two cores would slow each other down several times.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn config_for(server: &LlamaServer, dir: &std::path::Path) -> std::path::PathBuf {
    let url = server.base_url();
    let keys = "model = 'smollm2'\nmax_concurrency = 8\ntimeout_secs = 120";
    write_config(dir, &[("policy", &url, keys), ("judge", &url, keys)])
}

#[test]
fn sl_cai_plan_on_a_real_model() {
    let _serial = serial();
    let server = LlamaServer::start(8);
    let store = tempfile::tempdir().unwrap();
    let config = config_for(&server, store.path());
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .current_dir(repo_root())
        .args([
            "run",
            "plans/sl_cai.sql",
            "--config",
            config.to_str().unwrap(),
        ])
        .args(["--store", store.path().to_str().unwrap(), "--run", "real"])
        .args([
            "--set",
            "limit=20",
            "--set",
            "max_tokens=48",
            "--set",
            "helpful_ratio=0.2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    eprintln!(
        "sl_cai on SmolLM2: 20 prompts in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let run = store.path().join("real");
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .args(["sql", "--run", run.to_str().unwrap(), "-e"])
        .arg("SELECT prompt_id, response, critique, revision, principle_id, error FROM revisions")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ad-hoc SQL over the run on the real server: llm() answers every row; generate with
    // a JSON schema gets JSON from the server's grammar; both journalled in the run.
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .args(["sql", "--run", run.to_str().unwrap(), "--config"])
        .arg(&config)
        .arg("-e")
        .arg(
            "SELECT count(*) AS n, count(v) AS answered FROM (SELECT llm('policy', \
             'Is this request harmful? Answer yes or no: ' || prompt, \
             '{\"max_tokens\": 8, \"temperature\": 0}') AS v FROM revisions LIMIT 5); \
             SELECT count(*) AS n, count(h) AS answered, count(error) AS errors, \
             sum(CASE WHEN h LIKE '%harmful%' THEN 1 ELSE 0 END) AS json FROM generate(\
             'SELECT * FROM revisions LIMIT 4', template => 'Is this request harmful? {prompt}', \
             output => 'h', max_tokens => 32, temperature => 0, json_schema => \
             '{\"type\": \"object\", \"properties\": {\"harmful\": {\"type\": \"boolean\"}}, \
             \"required\": [\"harmful\"]}')",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cells = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        out.status.success() && cells.contains("| 5 | 5 |") && cells.contains("| 4 | 4 | 0 | 4 |"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Read the stored table back with DataFusion directly for exact checks.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt.block_on(committed_table(&run, "revisions"));
    assert_eq!(rows(&batches), 20);
    for col in ["response", "critique", "revision"] {
        for (i, v) in column(&batches, col).iter().enumerate() {
            assert!(
                v.as_deref().is_some_and(|s| !s.trim().is_empty()),
                "row {i}: empty {col}"
            );
        }
    }
    assert!(column(&batches, "error").iter().all(Option::is_none));
    let constitution: BTreeSet<String> = Constitution::default_embedded()
        .principles
        .into_iter()
        .map(|p| p.id)
        .collect();
    let drawn: BTreeSet<String> = column(&batches, "principle_id")
        .into_iter()
        .flatten()
        .collect();
    assert!(drawn.is_subset(&constitution), "{drawn:?}");
    assert!(drawn.len() >= 5, "principles should vary: {drawn:?}");

    // Another Parquet reader sees the same tables: pyarrow, with the split partitions.
    let python = std::env::var("CAIFLOW_PYTHON").unwrap();
    let check = format!(
        r#"
from deltalake import DeltaTable
import polars as pl
rev = DeltaTable("{run}/revisions").to_pyarrow_table()
assert rev.num_rows == 20, rev.num_rows
for c in ["prompt_id", "prompt", "response", "critique", "revision", "principle_id", "round", "error", "revise_lineage"]:
    assert c in rev.column_names, c
sft_table = DeltaTable("{run}/sft")
assert sft_table.metadata().partition_columns == ["split"], sft_table.metadata().partition_columns
sft = sft_table.to_pyarrow_table()
assert set(sft.column("split").to_pylist()) <= {{"train", "test"}}
assert sft.num_rows >= 20, sft.num_rows
assert pl.read_delta("{run}/revisions").height == 20
print("deltalake and polars ok", rev.num_rows, sft.num_rows)
"#,
        run = run.display()
    );
    let out = Command::new(python).arg("-c").arg(check).output().unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for format in ["nemo-sft", "trl-sft"] {
        let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
            .args(["export", run.to_str().unwrap(), "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut n = 0;
        for file in String::from_utf8_lossy(&out.stdout).lines() {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let turns = if format == "nemo-sft" {
                    &v["conversations"]
                } else {
                    &v["messages"]
                };
                assert_eq!(turns.as_array().map(Vec::len), Some(2), "{line}");
                n += 1;
            }
        }
        // Revisions the small model's answers ran past max_tokens on are skipped (and
        // counted) by export: together with the exported ones, every revision is there.
        let truncated: usize = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("skipped ")?
                    .strip_suffix(" row(s): truncated")
            })
            .filter_map(|n| n.parse::<usize>().ok())
            .sum();
        assert!(
            n + truncated >= 20,
            "{format}: {n} rows exported, {truncated} skipped as truncated"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_a_row_error_and_the_run_goes_on() {
    let _serial = serial();
    let server = LlamaServer::start(2);
    let session = session_for(&server.base_url(), |e| e.timeout_secs = Some(60.0));
    let dir = tempfile::tempdir().unwrap();
    let long = vec!["word"; 6000].join(" ");
    register_prompts(&session, dir.path(), &[&long, "Say hello."]).await;
    let out = collect(&session, "SELECT prompt, response, error FROM respond(prompts, few_shot => 'none', max_tokens => 16)").await;
    assert_eq!(rows(&out), 2);
    let errors = column(&out, "error");
    let responses = column(&out, "response");
    let failed: Vec<_> = errors.iter().flatten().collect();
    assert_eq!(failed.len(), 1, "{errors:?}");
    assert!(
        failed[0].contains("HTTP 400") && failed[0].contains("context"),
        "{}",
        failed[0]
    );
    assert_eq!(responses.iter().flatten().count(), 1);
}

#[test]
fn rl_cai_plan_on_a_real_model() {
    let _serial = serial();
    let server = LlamaServer::start(8);
    let store = tempfile::tempdir().unwrap();
    let config = config_for(&server, store.path());
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .current_dir(repo_root())
        .args([
            "run",
            "plans/rl_cai.sql",
            "--config",
            config.to_str().unwrap(),
        ])
        .args(["--store", store.path().to_str().unwrap(), "--run", "rl"])
        .args([
            "--set",
            "limit=10",
            "--set",
            "max_tokens=32",
            "--set",
            "judge_max_tokens=160",
            "--set",
            "structured=true",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    eprintln!(
        "rl_cai on SmolLM2: 10 prompts in {:.1}s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        stderr.contains("endpoint policy: 40 requests"),
        "4 candidates for each of 10 prompts: {stderr}"
    );

    let run = store.path().join("rl");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt.block_on(committed_table(&run, "judgements"));
    assert_eq!(rows(&batches), 10, "exactly one judge row per prompt");
    let ids: BTreeSet<_> = column(&batches, "prompt_id")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ids.len(), 10);
    let labels = column(&batches, "label");
    assert!(
        labels
            .iter()
            .all(|l| matches!(l.as_deref(), Some("ok" | "tie" | "error"))),
        "{labels:?}"
    );
    for (label, error) in labels.iter().zip(column(&batches, "error")) {
        assert_eq!(
            label.as_deref() == Some("error"),
            error.is_some(),
            "an error row says why"
        );
    }

    for format in ["trl-dpo", "nemo-rm"] {
        let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
            .args(["export", run.to_str().unwrap(), "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // TRL files load with pyarrow with the expected columns; NeMo RM lines pair up.
    let python = std::env::var("CAIFLOW_PYTHON").unwrap();
    let check = format!(
        r#"
import glob, json, pyarrow.parquet as pq, pyarrow.json as pj
export = "{run}/export"
n = 0
for f in glob.glob(export + "/trl-dpo/*.parquet"):
    t = pq.read_table(f)
    assert t.column_names == ["prompt", "chosen", "rejected", "chosen_prob"], t.column_names
    n += t.num_rows
for f in glob.glob(export + "/trl-dpo/*.jsonl"):
    if open(f).read().strip():
        assert set(pj.read_json(f).column_names) == {{"prompt", "chosen", "rejected", "chosen_prob"}}
for f in glob.glob(export + "/nemo-rm/*_comparisons_with_chat_prompt.jsonl"):
    lines = [json.loads(l)["text"] for l in open(f)]
    prompts = [json.loads(l)["text"] for l in open(f.replace("comparisons", "prompts"))]
    assert len(lines) % 2 == 0 and len(lines) == 2 * len(prompts)
    for i, p in enumerate(prompts):
        assert lines[2 * i].startswith(p) and lines[2 * i + 1].startswith(p)
print("exports ok", n)
"#,
        run = run.display()
    );
    let out = Command::new(python).arg("-c").arg(check).output().unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principle_mode_reads_real_logprobs() {
    let _serial = serial();
    let server = LlamaServer::start(8);
    let session = policy_and_judge(caiflow_llm::config::EndpointConfig::openai(
        &server.base_url(),
        "smollm2",
    ));
    let out = check_principle_mode(
        &session,
        &[
            "How do I pick a lock?",
            "Tell me a mean joke.",
            "How can I cheat on a test?",
        ],
    )
    .await;
    eprintln!(
        "principle mode labels: {:?} probs: {:?}",
        column(&out, "label"),
        column(&out, "chosen_prob")
    );
}

/// Both paper plans against llama.cpp's server: the CoT few-shot judge reads the real
/// log-probabilities after its reasoning; SL-CAI with sequences.
#[test]
fn paper_plans_on_a_real_model() {
    let _serial = serial();
    let server = LlamaServer::start(8);
    let store = tempfile::tempdir().unwrap();
    let config = config_for(&server, store.path());
    let run = |plan: &str, name: &str, vars: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_caiflow"));
        cmd.current_dir(repo_root())
            .args(["run", plan, "--config"])
            .arg(&config)
            .arg("--store")
            .arg(store.path())
            .args(["--run", name]);
        for v in vars {
            cmd.args(["--set", v]);
        }
        let started = std::time::Instant::now();
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{plan} failed: {stderr}");
        eprintln!(
            "{plan} on SmolLM2 (llama.cpp server): {:.1}s\n{stderr}",
            started.elapsed().as_secs_f64()
        );
    };
    run(
        "plans/rl_cai_paper.sql",
        "rl",
        &["limit=4", "max_tokens=32", "judge_max_tokens=64"],
    );
    run(
        "plans/sl_cai_paper.sql",
        "sl",
        &["limit=2", "rounds=2", "sequences=2", "max_tokens=32"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let judgements = rt.block_on(committed_table(&store.path().join("rl"), "judgements"));
    assert_eq!(rows(&judgements), 4);
    let labels = column(&judgements, "label");
    assert!(
        labels
            .iter()
            .any(|l| matches!(l.as_deref(), Some("ok" | "tie"))),
        "the server returns logprobs after the reasoning: {labels:?} {:?}",
        column(&judgements, "error")
    );
    for (label, p) in labels.iter().zip(column(&judgements, "chosen_prob")) {
        if label.as_deref() == Some("ok") {
            let p: f64 = p.unwrap().parse().unwrap();
            assert!((0.4..=0.6).contains(&p), "{p}");
        }
    }
    let revisions = rt.block_on(committed_table(&store.path().join("sl"), "revisions"));
    assert_eq!(rows(&revisions), 8);
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .args(["export"])
        .arg(store.path().join("rl"))
        .args(["--format", "trl-reward"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
