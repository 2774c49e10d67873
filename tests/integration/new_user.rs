//! What a new user does first, with Anthropic's own data and the shipped plans: run a plan
//! with only `--set prompts=…`, stop it, run the same command again, feed it a wrong file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use caiflow_testkit::MockServer;
use serde_json::{Value, json};

/// Records of the real HH `harmless-base` test file used here (a prefix of its 2,312).
const RECORDS: usize = 120;

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "caiflow failed: {stderr}");
    stderr
}

/// The first `n` records of the real HH preference file (`chosen`/`rejected`).
fn hh_records(n: usize) -> Option<Vec<Value>> {
    use std::io::BufRead;
    let path = fixture("hh-rlhf/harmless-base-test.jsonl.gz")?;
    let file = std::fs::File::open(path).expect("fixture");
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    Some(
        reader
            .lines()
            .take(n)
            .map(|l| serde_json::from_str(&l.expect("line")).expect("JSON record"))
            .collect(),
    )
}

/// The number of distinct prompts in transcripts, computed here independently of caiflow:
/// the text between the first "Human:" and the first "Assistant:" after it, whitespace
/// collapsed.
fn distinct_prompts<'a>(transcripts: impl Iterator<Item = &'a str>) -> usize {
    transcripts
        .map(|t| {
            let after = &t[t.find("Human:").expect("a human turn") + "Human:".len()..];
            let turn = &after[..after.find("Assistant:").unwrap_or(after.len())];
            turn.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// A config whose `policy` and `judge` are mock servers.
fn mock_config(dir: &Path, policy: &MockServer, judge: &MockServer) -> PathBuf {
    write_config(
        dir,
        &[
            ("policy", &policy.base_url(), "max_concurrency = 4"),
            ("judge", &judge.base_url(), "max_concurrency = 4"),
        ],
    )
}

/// `caiflow run PLAN --config C --store S --set prompts=P` and nothing else.
fn plan_command(plan: &str, config: &Path, store: &Path, prompts: &Path) -> Command {
    let mut c = caiflow();
    c.args(["run", plan, "--config"])
        .arg(config)
        .arg("--store")
        .arg(store)
        .arg("--set")
        .arg(format!("prompts={}", prompts.display()));
    c
}

/// The only run folder of a store.
fn only_run(store: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(store)
        .expect("store")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "one run in {}: {runs:?}", store.display());
    runs.into_iter().next().expect("a run")
}

/// One `SELECT` over a run's committed tables, as a CLI user reads it back.
fn sql(run: &Path, query: &str) -> String {
    let out = caiflow()
        .args(["sql", "--run", run.to_str().expect("path"), "-e", query])
        .output()
        .expect("caiflow sql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_plans_read_anthropic_red_team_and_preference_files_without_naming_a_column() {
    let Some(records) = hh_records(RECORDS) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let transcripts: Vec<&str> = records
        .iter()
        .map(|r| r["chosen"].as_str().expect("chosen"))
        .collect();
    let expected = distinct_prompts(transcripts.iter().copied());
    assert!(expected > RECORDS / 2, "{expected}");

    // As Anthropic ships red-team data: one JSON array of {"transcript": …}; and as JSONL.
    let red_team: Vec<Value> = transcripts
        .iter()
        .map(|t| json!({ "transcript": t, "task_descripton_harmlessness_score": 1.5 }))
        .collect();
    let array = dir.path().join("red_team_attempts.jsonl");
    std::fs::write(&array, serde_json::to_string(&red_team).expect("json")).expect("write");
    let lines = dir.path().join("red_team.jsonl");
    let text: String = red_team.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&lines, text).expect("write");
    // The HH preference records as they are.
    let preference = dir.path().join("harmless-base.jsonl");
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&preference, text).expect("write");

    let policy = MockServer::start().await.expect("mock");
    let judge = MockServer::start().await.expect("mock");
    judge.push_replies((0..10 * RECORDS).map(|_| r#"{"chosen": 1, "rejected": 2}"#.to_string()));
    let config = mock_config(dir.path(), &policy, &judge);

    for (plan, prompts, table) in [
        ("plans/sl_cai.sql", &array, "revisions"),
        ("plans/sl_cai.sql", &preference, "revisions"),
        ("plans/rl_cai.sql", &lines, "judgements"),
    ] {
        let store = tempfile::tempdir().expect("store");
        let stderr = ok(plan_command(plan, &config, store.path(), prompts)
            .output()
            .expect("run"));
        assert!(!stderr.contains("skipped"), "{plan} {prompts:?}: {stderr}");
        let out = sql(
            &only_run(store.path()),
            &format!("SELECT count(*) AS n, count(DISTINCT prompt_id) AS d FROM {table}"),
        );
        assert!(
            out.contains(&format!("| {expected} | {expected} |")),
            "{plan} on {}: one {table} row per distinct prompt ({expected}): {out}",
            prompts.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_command_after_kill_9_resumes_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.jsonl");
    let text: String = (0..40)
        .map(|i| format!("{{\"prompt\": \"resume prompt {i}\"}}\n"))
        .collect();
    std::fs::write(&prompts, text).expect("write");

    // The uninterrupted run, on its own server and store.
    let clean_server = MockServer::start().await.expect("mock");
    let clean_dir = tempfile::tempdir().expect("tempdir");
    let clean_config = mock_config(clean_dir.path(), &clean_server, &clean_server);
    let clean_store = clean_dir.path().join("store");
    ok(
        plan_command("plans/sl_cai.sql", &clean_config, &clean_store, &prompts)
            .output()
            .expect("run"),
    );
    let query = "SELECT prompt_id, revision FROM revisions ORDER BY prompt_id";
    let clean = sql(&only_run(&clean_store), query);
    assert_eq!(clean_server.requests(), 120);

    // 40 prompts x 3 calls at 4 in flight and 100 ms each: about 3 s; killed at about half.
    let server = MockServer::start().await.expect("mock");
    server.set_latency(Duration::from_millis(100));
    let config = mock_config(dir.path(), &server, &server);
    let store = dir.path().join("store");
    let mut child = plan_command("plans/sl_cai.sql", &config, &store, &prompts)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.requests() < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got half-way"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let before = server.requests();
    assert!(before < 120, "killed before the end ({before} requests)");

    // The same command, no --run.
    let stderr = ok(plan_command("plans/sl_cai.sql", &config, &store, &prompts)
        .output()
        .expect("run"));
    let run = only_run(&store);
    assert_eq!(
        sql(&run, query),
        clean,
        "the resumed run equals an uninterrupted one"
    );
    let repeats = server.repeated();
    eprintln!("killed after {before} requests; {repeats} sent twice\n{stderr}");
    assert!(
        repeats <= 4,
        "at most the 4 requests in flight are repeated: {repeats}"
    );
    assert_eq!(server.requests(), 120 + repeats);

    // A finished run is reused: the same command sends nothing.
    let stderr = ok(plan_command("plans/sl_cai.sql", &config, &store, &prompts)
        .output()
        .expect("run"));
    assert_eq!(server.requests(), 120 + repeats, "{stderr}");
    assert!(stderr.contains("table revisions: reused"), "{stderr}");
    // --new starts afresh, in a run of its own.
    ok(plan_command("plans/sl_cai.sql", &config, &store, &prompts)
        .arg("--new")
        .output()
        .expect("run"));
    let runs = std::fs::read_dir(&store).expect("store").count();
    assert_eq!(runs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_prints_the_command_that_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"a prompt [[fail:401]]\"}\n").expect("write");
    let server = MockServer::start().await.expect("mock");
    let config = mock_config(dir.path(), &server, &server);
    let store = dir.path().join("store");
    let out = plan_command("plans/sl_cai.sql", &config, &store, &prompts)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let run = only_run(&store);
    let name = run.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(name.starts_with("sl_cai-"), "{name}");
    let hint = stderr
        .lines()
        .find(|l| l.contains("To continue: caiflow run plans/sl_cai.sql"))
        .unwrap_or_else(|| panic!("no resume command in: {stderr}"));
    assert!(hint.contains(&format!("--run {name}")), "{hint}");
    assert!(
        hint.contains(&format!("prompts={}", prompts.display())),
        "{hint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_every_record_is_unreadable_fails_before_any_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = MockServer::start().await.expect("mock");
    let config = mock_config(dir.path(), &server, &server);
    let store = dir.path().join("store");
    let bad = dir.path().join("questions.jsonl");
    let text: String = (0..40)
        .map(|i| format!("{{\"question\": \"what is {i}?\"}}\n"))
        .collect();
    std::fs::write(&bad, text).expect("write");
    for plan in ["plans/sl_cai.sql", "plans/rl_cai.sql"] {
        let out = plan_command(plan, &config, &store, &bad)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("none of its 40 record(s) could be read"))
            .unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.contains(&bad.display().to_string()), "{line}");
        assert!(line.contains("line 1:"), "the first reasons: {line}");
    }
    assert_eq!(server.requests(), 0, "nothing was sent");

    // A named column that is not there is the same error, with the hint about `column`.
    let out = plan_command("plans/sl_cai.sql", &config, &store, &bad)
        .args(["--set", "prompt_column=text"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is `column` right?"), "{stderr}");

    // An input with no records at all is a run that warns, clearly, in its summary.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").expect("write");
    let stderr = ok(plan_command("plans/sl_cai.sql", &config, &store, &empty)
        .output()
        .expect("run"));
    assert!(
        stderr.contains(&format!("warning: 0 prompts read from {}", empty.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: respond received 0 rows"),
        "{stderr}"
    );
    assert_eq!(server.requests(), 0);
}
