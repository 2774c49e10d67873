//! The CAI paper's plans end to end through the CLI on mock servers: soft labels to the
//! trainer's files (loaded with `datasets`), the judge audit in the report and the dataset
//! card, SL pairs as trl-dpo, and reasoning tokens in usage, the report and dry runs.

use std::path::Path;

use serde_json::Value;

use crate::common::*;
use crate::report::{load_export, read_json};
use caiflow_testkit::MockServer;

fn run_plan(plan: &str, config: &Path, store: &Path, name: &str, sets: &[&str]) -> String {
    let mut cmd = caiflow();
    cmd.args(["run", plan, "--config"])
        .arg(config)
        .arg("--store")
        .arg(store)
        .args(["--run", name]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    run_ok(&mut cmd).0
}

/// `key` of every line of the JSONL files among `files`.
fn numbers(files: &[String], key: &str) -> Vec<f64> {
    files
        .iter()
        .filter(|f| f.ends_with(".jsonl"))
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()[key]
                        .as_f64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn report_json(run: &Path) -> Value {
    let (html, _) = caiflow_ok(&["report", run.to_str().unwrap()]);
    read_json(&Path::new(html.trim()).with_file_name("report.json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rl_cai_paper_plan_gives_soft_labels_to_trainers_and_audits_its_judge() {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    // A judge 70 % sure of whichever response is shown first.
    judge.set_logprobs(Some(vec![
        ("A".into(), (0.7f64).ln()),
        ("B".into(), (0.3f64).ln()),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[
            ("policy", &policy.base_url(), "model = 'policy'"),
            ("judge", &judge.base_url(), "model = 'judge'"),
        ],
    );
    let store = dir.path().join("runs");
    run_plan(
        "plans/rl_cai_paper.sql",
        &config,
        &store,
        "paper",
        &["limit=6"],
    );
    assert_eq!(policy.requests(), 6 * 2, "a pair of responses per prompt");
    assert_eq!(
        judge.requests(),
        6 * 2,
        "one comparison: the reasoning, then the choice"
    );
    let run = store.join("paper");
    let run_s = run.to_str().unwrap();
    // CoT labels are clamped to 40-60 %: the margin is the log-odds of 0.6.
    let reward = load_export(run_s, "trl-reward", dir.path());
    let columns = &reward["train"]["columns"];
    assert_eq!(
        columns,
        &serde_json::json!(["prompt", "chosen", "rejected", "margin"]),
        "{reward}"
    );
    let out = dir.path().join("export-trl-reward");
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let margins = numbers(&files, "margin");
    let soft = (0.6f64 / 0.4).ln();
    assert!(
        margins.iter().any(|m| (m - soft).abs() < 1e-9),
        "{margins:?}"
    );
    assert!(
        margins.iter().all(|m| (m - soft).abs() < 1e-9 || *m == 0.0),
        "helpful pairs are hard labels: {margins:?}"
    );
    let dpo = load_export(run_s, "trl-dpo", dir.path());
    assert!(
        dpo["train"]["columns"]
            .as_array()
            .unwrap()
            .contains(&Value::from("chosen_prob")),
        "{dpo}"
    );
    let (files, _) = caiflow_ok(&["export", run_s, "--format", "pm-soft"]);
    let files: Vec<String> = files.lines().map(str::to_string).collect();
    let targets = numbers(&files, "target");
    assert!(
        targets.iter().any(|t| (t - 0.6).abs() < 1e-9)
            && targets.iter().all(|t| (0.0..=1.0).contains(t)),
        "{targets:?}"
    );

    // The audit asks each comparison in both orders: this judge only follows position.
    let before = judge.requests();
    run_plan(
        "plans/rl_cai_paper.sql",
        &config,
        &store,
        "audited",
        &["limit=6", "audit=true"],
    );
    assert_eq!(
        judge.requests() - before,
        6 * 2 * 2,
        "both orders, each reasoned then chosen"
    );
    let audited = store.join("audited");
    let r = report_json(&audited);
    let principles = r["judge_audit"]["principles"].as_array().unwrap();
    assert!(!principles.is_empty(), "{r}");
    let compared: u64 = principles
        .iter()
        .map(|p| p["comparisons"].as_u64().unwrap())
        .sum();
    assert_eq!(compared, 6);
    for p in principles {
        assert_eq!(p["consistency"], 0.0, "{p}");
        assert_eq!(p["noisy"], true);
    }
    let html = std::fs::read_to_string(audited.join("report").join("index.html")).unwrap();
    assert!(html.contains("Judge audit") && html.contains("position consistency"));
    let (_, stderr) = caiflow_ok(&["export", audited.to_str().unwrap(), "--format", "trl-dpo"]);
    let card = stderr
        .lines()
        .find_map(|l| l.strip_prefix("dataset card: "))
        .unwrap();
    let card = std::fs::read_to_string(card.trim()).unwrap();
    assert!(card.contains("Noisy principles"), "{card}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sl_cai_paper_plan_makes_sequences_and_exports_revision_pairs_as_dpo() {
    let policy = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[("policy", &policy.base_url(), "model = 'policy'")],
    );
    let store = dir.path().join("runs");
    let stdout = run_plan(
        "plans/sl_cai_paper.sql",
        &config,
        &store,
        "sl",
        &["limit=3", "rounds=2", "sequences=2"],
    );
    // 3 responses, 6 critiques, then per sequence 2 revisions and 1 more critique.
    assert_eq!(policy.requests(), 3 + 6 + 6 * 3, "{stdout}");
    let run = store.join("sl");
    let (out, _) = run_ok(caiflow().args([
        "sql",
        "--run",
        run.to_str().unwrap(),
        "-e",
        "SELECT count(*) AS n, count(DISTINCT pair_id) AS ids, count(DISTINCT principle_id) AS principles FROM sl_pairs",
    ]));
    assert!(out.contains("| 12 | 12 "), "one pair per revision: {out}");
    let loaded = load_export(run.to_str().unwrap(), "trl-dpo", dir.path());
    let rows: u64 = loaded
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 12, "{loaded}");
    for split in loaded.as_object().unwrap().values() {
        assert_eq!(
            split["columns"],
            serde_json::json!(["prompt", "chosen", "rejected", "chosen_prob"])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_tokens_reach_usage_the_report_and_dry_runs() {
    let policy = MockServer::start().await.unwrap();
    policy.set_reasoning(Some("think"));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[(
            "policy",
            &policy.base_url(),
            "model = 'policy'\nreasoning_tokens = 100",
        )],
    );
    let store = dir.path().join("runs");
    let (stdout, stderr) = run_ok(
        caiflow()
            .args(["run", "plans/sl_cai.sql", "--config"])
            .arg(&config)
            .arg("--store")
            .arg(&store)
            .args(["--run", "dry", "--set", "limit=4", "--dry-run"]),
    );
    assert!(
        format!("{stdout}{stderr}").contains("(reasoning "),
        "{stdout}\n{stderr}"
    );
    assert_eq!(policy.requests(), 0);
    let (stdout, stderr) = run_ok(
        caiflow()
            .args(["run", "plans/sl_cai.sql", "--config"])
            .arg(&config)
            .arg("--store")
            .arg(&store)
            .args(["--run", "thinks", "--set", "limit=4"]),
    );
    assert!(
        format!("{stdout}{stderr}").contains("of them reasoning"),
        "{stdout}\n{stderr}"
    );
    let run = store.join("thinks");
    let (out, _) = run_ok(caiflow().args([
        "sql",
        "--run",
        run.to_str().unwrap(),
        "-e",
        "SELECT count(*) AS n FROM revisions WHERE revision LIKE '%think>%' OR response LIKE '%Thinking about%' OR revision_reasoning NOT LIKE 'Thinking about%'",
    ]));
    assert!(
        out.contains("| 0 "),
        "answers hold no thinking, the reasoning column does: {out}"
    );
    let r = report_json(&run);
    assert!(r["reasoning_tokens"].as_u64().unwrap() > 0, "{r}");
    assert!(r["usage_total"]["reasoning_tokens"].as_u64().unwrap() > 0);
}
