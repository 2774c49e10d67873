//! `caiflow run plans/sl_cai.sql`, `caiflow export` and `caiflow sql` as a user runs them,
//! against the mock endpoint (fast; the real-model run is in e2e_llama.rs).

use std::process::Command;

use crate::common::*;
use caiflow_testkit::MockServer;

fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sl_cai_plan_blends_splits_and_exports() {
    let server = MockServer::start().await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let config = store.path().join("caiflow.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmodel = 'mock'\nmax_concurrency = 4\n",
            server.base_url()
        ),
    )
    .unwrap();
    // Two prompts fail permanently: their rows keep an error and exports skip them.
    let prompts = store.path().join("prompts.jsonl");
    let mut text = String::new();
    for i in 0..30 {
        let p = if i % 15 == 0 {
            format!("prompt {i} [[fail:400]]")
        } else {
            format!("prompt {i}")
        };
        text.push_str(&serde_json::json!({ "prompt": p }).to_string());
        text.push('\n');
    }
    std::fs::write(&prompts, text).unwrap();
    let (stdout, stderr) = run_ok(caiflow().args([
        "run",
        "plans/sl_cai.sql",
        "--config",
        config.to_str().unwrap(),
        "--store",
        store.path().to_str().unwrap(),
        "--run",
        "r1",
        "--set",
        &format!("prompts={}", prompts.display()),
        "--set",
        "rounds=2",
        "--set",
        "helpful_ratio=0.25",
        "--set",
        "splits=train=0.7,val=0.2,test=0.1",
    ]));
    assert!(
        stdout.contains("sl_cai") && stdout.contains("helpful"),
        "{stdout}\n{stderr}"
    );
    let run = store.path().join("r1");
    // Each table is a Delta table; sft's data files are partitioned by split.
    let entries: Vec<String> = std::fs::read_dir(run.join("sft"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "_delta_log")
        .collect();
    assert!(
        !entries.is_empty() && entries.iter().all(|s| s.starts_with("split=")),
        "{entries:?}"
    );
    assert!(
        committed(&run, "sft") && committed(&run, "revisions") && run.join("plan.sql").is_file()
    );

    // 30 prompts x 2 rounds; 2 prompts fail in respond (one row each).
    let (out, _) = run_ok(caiflow().args(["sql", "--run", run.to_str().unwrap(), "-e",
        "SELECT count(*) AS n, count(error) AS errors, count(DISTINCT prompt_id) AS prompts FROM revisions"]));
    assert!(
        out.contains("| 58 ") && out.contains("| 2 ") && out.contains("| 30 "),
        "{out}"
    );

    for format in ["nemo-sft", "trl-sft"] {
        let (files, stderr) =
            run_ok(caiflow().args(["export", run.to_str().unwrap(), "--format", format]));
        assert!(stderr.contains("skipped 2 row(s)"), "{stderr}");
        let mut total = 0;
        let mut helpful = 0;
        for file in files.lines() {
            for row in jsonl(std::path::Path::new(file)) {
                total += 1;
                if format == "nemo-sft" {
                    assert_eq!(row["mask"], "User");
                    assert_eq!(row["conversations"][0]["from"], "User");
                    assert_eq!(row["conversations"][1]["from"], "Assistant");
                    if row["dataset"] == "helpful" {
                        helpful += 1;
                    } else {
                        assert_eq!(row["dataset"], "sl_cai_samples");
                    }
                } else {
                    assert_eq!(row["messages"][0]["role"], "user");
                    assert_eq!(row["messages"][1]["role"], "assistant");
                }
            }
        }
        // 56 usable CAI rows; helpful_ratio 0.25 asks for ~19 of the 20 helpful rows.
        assert!(total >= 56 + 10, "{format}: {total} rows");
        if format == "nemo-sft" {
            assert!((10..=20).contains(&helpful), "helpful rows {helpful}");
        }
    }
}

#[test]
fn missing_plan_variable_and_bad_config_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.sql");
    std::fs::write(&plan, "SELECT ${who};").unwrap();
    let out = caiflow()
        .args([
            "run",
            plan.to_str().unwrap(),
            "--store",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("variable 'who'"), "{err}");

    std::fs::write(
        &plan,
        "SELECT 1;\n\n-- the next one is wrong\nSELECT * FROM no_such_table;\n",
    )
    .unwrap();
    let out = caiflow()
        .args([
            "run",
            plan.to_str().unwrap(),
            "--store",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("line 4 (statement 2)")
            && err.contains("no_such_table"),
        "{err}"
    );

    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[endpoints.policy]\nbase_url = 'http://x'\nmax_concurency = 2\n",
    )
    .unwrap();
    let out = caiflow()
        .args([
            "run",
            plan.to_str().unwrap(),
            "--set",
            "who=1",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("max_concurency"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rl_cai_plan_judges_every_prompt_and_exports_rm_and_dpo() {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    judge.push_replies((0..200).map(|i| {
        if i % 7 == 3 {
            r#"{"chosen": 2, "rejected": 2}"#.to_string()
        } else {
            r#"{"chosen": 1, "rejected": 3} ok"#.to_string()
        }
    }));
    let store = tempfile::tempdir().unwrap();
    let config = store.path().join("caiflow.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\n[endpoints.judge]\nbase_url = '{}'\nmodel = 'judge-model'\n",
            policy.base_url(),
            judge.base_url()
        ),
    )
    .unwrap();
    let (stdout, _) = run_ok(caiflow().args([
        "run",
        "plans/rl_cai.sql",
        "--config",
        config.to_str().unwrap(),
        "--store",
        store.path().to_str().unwrap(),
        "--run",
        "rl",
        "--set",
        "limit=12",
        "--set",
        "helpful_ratio=0.3",
        "--set",
        "splits=train=0.7,val=0.2,test=0.1",
    ]));
    assert!(stdout.contains("| ok "), "{stdout}");
    assert_eq!(policy.requests(), 12 * 4, "four candidates per prompt");
    let run = store.path().join("rl");
    let (out, _) = run_ok(caiflow().args([
        "sql",
        "--run",
        run.to_str().unwrap(),
        "-e",
        "SELECT count(*) AS n, count(DISTINCT prompt_id) AS prompts FROM judgements",
    ]));
    assert!(
        out.contains("| 12 | 12 "),
        "one judgement per prompt: {out}"
    );

    let (files, stderr) =
        run_ok(caiflow().args(["export", run.to_str().unwrap(), "--format", "nemo-rm"]));
    assert!(stderr.contains("tie"), "ties are counted: {stderr}");
    let mut pairs = 0;
    for file in files
        .lines()
        .filter(|f| f.ends_with("comparisons_with_chat_prompt.jsonl"))
    {
        let lines = jsonl(std::path::Path::new(file));
        assert_eq!(
            lines.len() % 2,
            0,
            "{file}: chosen/rejected lines come in pairs"
        );
        let prompts_file = file.replace("comparisons_with_chat_prompt", "prompts_with_chat_prompt");
        let prompts = jsonl(std::path::Path::new(&prompts_file));
        assert_eq!(prompts.len() * 2, lines.len());
        for (i, pair) in lines.chunks(2).enumerate() {
            let prompt = prompts[i]["text"].as_str().unwrap();
            for line in pair {
                let text = line["text"].as_str().unwrap();
                assert!(
                    text.starts_with(prompt),
                    "{text:?} should start with {prompt:?}"
                );
                assert!(text.ends_with("\n<extra_id_1>"), "{text:?}");
            }
            assert_ne!(pair[0]["text"], pair[1]["text"]);
            pairs += 1;
        }
    }
    assert!(pairs >= 8, "{pairs} pairs");

    let (files, _) =
        run_ok(caiflow().args(["export", run.to_str().unwrap(), "--format", "trl-dpo"]));
    let jsonl_files: Vec<&str> = files.lines().filter(|f| f.ends_with(".jsonl")).collect();
    assert!(files.lines().any(|f| f.ends_with(".parquet")));
    let dpo_rows: usize = jsonl_files
        .iter()
        .map(|f| jsonl(std::path::Path::new(f)).len())
        .sum();
    assert_eq!(dpo_rows, pairs);
    for f in jsonl_files {
        for row in jsonl(std::path::Path::new(f)) {
            for key in ["prompt", "chosen", "rejected"] {
                assert!(row[key].as_str().is_some_and(|s| !s.is_empty()), "{row}");
            }
        }
    }
}

/// `caiflow run plans/sl_cai.sql --config CONFIG --store STORE`, more arguments to add.
fn sl_run(config: &std::path::Path, store: &std::path::Path) -> Command {
    let mut cmd = caiflow();
    cmd.args(["run", "plans/sl_cai.sql", "--config"])
        .arg(config)
        .arg("--store")
        .arg(store);
    cmd
}

fn mock_config(dir: &std::path::Path, server: &MockServer) -> std::path::PathBuf {
    let config = dir.join("caiflow.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmodel = 'mock'\n",
            server.base_url()
        ),
    )
    .unwrap();
    config
}

/// `--set` values are literals: one cannot end a statement or add one (not even under
/// --dry-run), and a path holding a quote works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_values_are_literals_not_sql() {
    let server = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(dir.path(), &server);
    let prompts = dir.path().join("it's prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n").unwrap();
    let target = dir.path().join("written-by-injection");
    for dry in [true, false] {
        let mut cmd = sl_run(&config, dir.path());
        cmd.arg("--set")
            .arg(format!("prompts={}", prompts.display()))
            .arg("--set")
            .arg(format!(
                "limit=1; COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
                target.display()
            ));
        if dry {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].contains("variable 'limit'") && lines[0].contains("outside quotes"),
            "{err}"
        );
        assert!(!target.exists(), "the injected COPY ran");
    }
    assert_eq!(server.requests(), 0);
    // A quote in a path is part of the path.
    let (_, stderr) = run_ok(
        sl_run(&config, dir.path())
            .arg("--set")
            .arg(format!("prompts={}", prompts.display())),
    );
    assert!(stderr.contains("table revisions: 2 rows"), "{stderr}");
    // An unclosed `${` before multibyte text is an error line, not a crash.
    let out = caiflow()
        .args(["run", "plans/sl_cai.sql", "--config"])
        .arg(&config)
        .args(["--set", "limit=${aéééééééééééééééééééééééééééééééééééééé"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A literal that is not in an input position (`'.'`, `'/'`) is a value: the table is
/// reused on the next run, and nothing walks the file system for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_literal_is_a_value_not_an_input_folder() {
    let server = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(dir.path(), &server);
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"a\"}\n").unwrap();
    let plan = dir.path().join("dots.sql");
    std::fs::write(
        &plan,
        "CREATE TABLE joined AS SELECT concat(prompt, '.', '/', prompt_id) AS k \
         FROM red_team_prompts('${prompts}') WHERE prompt <> '.';\n",
    )
    .unwrap();
    let run = |_: ()| {
        run_ok(
            caiflow()
                .arg("run")
                .arg(&plan)
                .arg("--config")
                .arg(&config)
                .arg("--store")
                .arg(dir.path().join("runs"))
                .args(["--run", "dots", "--set"])
                .arg(format!("prompts={}", prompts.display())),
        )
    };
    let (_, first) = run(());
    assert!(first.contains("table joined: 1 rows"), "{first}");
    let (_, second) = run(());
    assert!(second.contains("table joined: reused"), "{second}");
}

/// Export file names come from the table's split values: one that is not a plain name
/// (`/abs/x`, `../x`) is refused, nothing is written outside the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_refuses_split_values_that_are_not_file_names() {
    let server = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(dir.path(), &server);
    let outside = dir.path().join("outside");
    let out = sl_run(&config, dir.path())
        .arg("--set")
        .arg(format!("splits={}=1", outside.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not usable as a file name"), "{err}");
    assert!(!std::fs::exists(outside.with_extension("jsonl")).unwrap());
    // A bucket alone is not a run.
    let out = caiflow().args(["inspect", "s3://bucket"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("names a bucket, not a run"),
        "{err}"
    );
}
