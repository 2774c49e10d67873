//! Batch mode (`batch = …` on an endpoint) against the testkit's OpenAI Batch and Anthropic
//! Message Batches APIs: the same requests and answers as online, kill -9 with batches in
//! flight resubmits nothing, an expired batch resubmits exactly its unfinished requests,
//! batches split at the count and byte limits, `--detach` leaves the provider working and
//! a later run completes, a dry run prices both ways, cached tokens are read from both
//! providers' usage.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::durable::kill_when;
use crate::report::read_json;
use caiflow_testkit::MockServer;
use caiflow_testkit::batch::BatchProfile;

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    OpenAi,
    Anthropic,
}

/// Fast batches: submitted 0.2 s after the first request waits, polled every 50 ms.
const FAST: &str = "{ window_secs = 0.2, poll_secs = 0.05 }";

/// `policy` and `judge` on `server`, batched with `batch` when given.
fn config(dir: &Path, server: &MockServer, provider: Provider, batch: Option<&str>) -> PathBuf {
    let mut text = String::new();
    for name in ["policy", "judge"] {
        text.push_str(&match provider {
            Provider::OpenAi => format!(
                "[endpoints.{name}]\nbase_url = '{}'\nmodel = 'gpt-mock'\n",
                server.base_url()
            ),
            Provider::Anthropic => format!(
                "[endpoints.{name}]\nkind = 'anthropic'\nbase_url = '{}'\nmodel = 'claude-mock'\n",
                server.root_url()
            ),
        });
        text.push_str(
            "max_concurrency = 64\n\
             retry = { max_attempts = 3, initial_backoff_ms = 5, max_backoff_ms = 20 }\n\
             price = { input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3 }\n",
        );
        if let Some(b) = batch {
            text.push_str(&format!("batch = {b}\n"));
        }
    }
    let path = dir.join("caiflow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_args<'a>(config: &'a Path, store: &'a Path, plan: &'a str, sets: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        plan.into(),
        "--config".into(),
        config.display().to_string(),
        "--store".into(),
        store.display().to_string(),
        "--run".into(),
        "r".into(),
    ];
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args
}

/// What a run produced: its rows with their request hashes.
fn dump(run: &Path, query: &str) -> String {
    caiflow_ok(&["sql", "--run", run.to_str().unwrap(), "-e", query]).0
}

const SL_ROWS: &str = "SELECT prompt_id, round, revision, revise_lineage['request_hash'] AS h, \
     critique_lineage['request_hash'] AS c, error FROM revisions ORDER BY prompt_id, round";
const RL_ROWS: &str = "SELECT prompt_id, label, chosen, rejected, \
     judge_lineage['request_hash'] AS h, error FROM judgements ORDER BY prompt_id";

/// The request bodies a mock answered, sorted: the same multiset means the same requests.
fn bodies(server: &MockServer) -> Vec<String> {
    let mut b: Vec<String> = server.bodies().iter().map(Value::to_string).collect();
    b.sort();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_plans_send_the_same_requests_and_get_the_same_answers_as_online() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        for (plan, sets, rows) in [
            ("plans/sl_cai.sql", vec!["limit=4", "rounds=2"], SL_ROWS),
            ("plans/rl_cai.sql", vec!["limit=4"], RL_ROWS),
        ] {
            let mut results = vec![];
            for batch in [None, Some(FAST)] {
                let server = MockServer::start().await.unwrap();
                let dir = tempfile::tempdir().unwrap();
                let cfg = config(dir.path(), &server, provider, batch);
                let store = dir.path().join("runs");
                let args = run_args(&cfg, &store, plan, &sets);
                let (_, stderr) = run_ok(caiflow().args(&args));
                let created = server.batches_created().len();
                match batch {
                    None => assert_eq!(created, 0),
                    // Waves: one batch per stage step at least, never one per request.
                    Some(_) => assert!(
                        created >= 2 && (created as u64) < server.requests(),
                        "{created} batches for {} requests\n{stderr}",
                        server.requests()
                    ),
                }
                results.push((dump(&store.join("r"), rows), bodies(&server), stderr));
            }
            let (online, batched) = (&results[0], &results[1]);
            assert_eq!(
                online.0, batched.0,
                "{plan}: rows and hashes differ\n{}",
                batched.2
            );
            assert_eq!(online.1, batched.1, "{plan}: requests differ");
        }
    }
}

/// The run folder's batch records.
fn records(run: &Path) -> Vec<Value> {
    std::fs::read_dir(run.join("journal/batches"))
        .map(|d| {
            d.flatten()
                .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// No request was in two batches, and none was answered twice.
fn each_request_once(server: &MockServer) {
    let mut seen = HashSet::new();
    for (batch, ids) in server.batch_custom_ids() {
        for id in ids {
            assert!(seen.insert(id.clone()), "{id} sent again in {batch}");
        }
    }
    assert_eq!(server.repeated(), 0, "a request was answered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_batches_in_flight_then_the_same_command_resubmits_nothing() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let server = MockServer::start().await.unwrap();
        // The provider takes 3 s per batch: the kill comes while the first is in flight.
        server.set_batch_profile(BatchProfile {
            in_progress: Duration::from_secs(3),
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &server, provider, Some(FAST));
        let store = dir.path().join("runs");
        let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=5", "rounds=1"]);
        let run = store.join("r");
        let mut cmd = caiflow();
        cmd.args(&args);
        kill_when(
            cmd,
            || !records(&run).is_empty(),
            Duration::from_millis(200),
        );
        assert_eq!(
            server.batches_created().len(),
            1,
            "killed with one batch in flight"
        );
        let (_, stderr) = run_ok(caiflow().args(&args));
        each_request_once(&server);
        // 5 responses, 5 critiques, 5 revisions: every one sent once, in its own wave.
        assert_eq!(server.requests(), 15, "{stderr}");
        let out = dump(
            &run,
            "SELECT count(*) AS n, count(error) AS e FROM revisions",
        );
        assert_eq!(table_row(&out, "5"), vec!["5", "0"], "{out}");
        let (inspect, _) = caiflow_ok(&["inspect", run.to_str().unwrap()]);
        assert!(
            inspect.contains("batches: 3 submitted, 0 in flight"),
            "{inspect}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_batch_resubmits_exactly_its_unfinished_requests() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let server = MockServer::start().await.unwrap();
        server.expire_next_batch(2);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &server, provider, Some(FAST));
        let store = dir.path().join("runs");
        let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=5", "rounds=1"]);
        let (_, stderr) = run_ok(caiflow().args(&args));
        let batches = server.batch_custom_ids();
        let (first, rest) = batches.split_first().unwrap();
        assert_eq!(first.1.len(), 5, "the 5 responses in one batch");
        let unfinished: HashSet<&String> = first.1[2..].iter().collect();
        let again: HashSet<&String> = rest
            .iter()
            .flat_map(|(_, ids)| ids)
            .filter(|id| first.1.contains(id))
            .collect();
        assert_eq!(
            again, unfinished,
            "only the 3 unfinished were sent again\n{stderr}"
        );
        assert_eq!(server.repeated(), 0);
        let out = dump(
            &store.join("r"),
            "SELECT count(*) AS n, count(error) AS e FROM revisions",
        );
        assert_eq!(table_row(&out, "5"), vec!["5", "0"], "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_split_at_the_count_and_byte_limits() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        for (limit, check) in [
            ("max_requests = 2", (2usize, usize::MAX)),
            ("max_bytes = 6000", (usize::MAX, 6000usize)),
        ] {
            let server = MockServer::start().await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let batch = format!("{{ window_secs = 0.3, poll_secs = 0.05, {limit} }}");
            let cfg = config(dir.path(), &server, provider, Some(&batch));
            let store = dir.path().join("runs");
            let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=5", "rounds=1"]);
            run_ok(caiflow().args(&args));
            let created = server.batches_created();
            assert!(created.len() >= 6, "{limit}: {created:?}");
            for (id, lines, bytes) in &created {
                assert!(*lines <= check.0, "{limit}: {id} has {lines} requests");
                // The file (OpenAI) or body (Anthropic, with its envelope) within the limit.
                assert!(
                    *bytes <= check.1.saturating_add(16),
                    "{limit}: {id} has {bytes} bytes"
                );
            }
            assert_eq!(created.iter().map(|c| c.1).sum::<usize>(), 15);
            each_request_once(&server);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_exits_0_with_batches_in_flight_and_a_later_run_completes() {
    let server = MockServer::start().await.unwrap();
    server.set_batch_profile(BatchProfile {
        in_progress: Duration::from_millis(1500),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server, Provider::OpenAi, Some(FAST));
    let store = dir.path().join("runs");
    let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=3", "rounds=1"]);
    let mut detached = args.clone();
    detached.push("--detach".into());
    let (_, stderr) = run_ok(caiflow().args(&detached));
    assert!(
        stderr.contains("detached with 1 batch(es) in flight (3 requests)"),
        "{stderr}"
    );
    assert!(stderr.contains("batch_"), "{stderr}");
    let run = store.join("r");
    assert!(!committed(&run, "revisions"));
    let (inspect, _) = caiflow_ok(&["inspect", run.to_str().unwrap()]);
    assert!(inspect.contains("1 in flight"), "{inspect}");
    // Later, while the provider works, or after: the same command collects and goes on.
    let mut rounds = 0;
    let mut log = String::new();
    while !committed(&run, "revisions") && rounds < 30 {
        std::thread::sleep(Duration::from_millis(300));
        log.push_str(&run_ok(caiflow().args(&detached)).1);
        rounds += 1;
    }
    assert!(
        committed(&run, "revisions"),
        "detached runs never finished\n{log}"
    );
    assert!(rounds >= 2, "each detached run sends one wave: {rounds}");
    each_request_once(&server);
    assert_eq!(server.requests(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prices_the_plan_online_and_batched() {
    let server = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server, Provider::Anthropic, Some(FAST));
    let store = dir.path().join("runs");
    let mut args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=10", "rounds=2"]);
    args.push("--dry-run".into());
    let (out, _) = run_ok(caiflow().args(&args));
    let line = out
        .lines()
        .find(|l| l.starts_with("expected cost online"))
        .unwrap_or_else(|| panic!("{out}"));
    let dollars: Vec<f64> = line
        .split('$')
        .skip(1)
        .map(|s| {
            s.trim_end_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let [online, batch, saved] = dollars[..] else {
        panic!("{line}")
    };
    assert!(
        online > 0.0 && (batch - online / 2.0).abs() < 1e-3,
        "{line}"
    );
    assert!((saved - (online - batch)).abs() < 1e-3, "{line}");
    assert!(out.contains("batched"), "{out}");
    assert_eq!(server.requests(), 0, "a dry run sends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_and_batch_savings_are_counted_from_both_providers() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let server = MockServer::start().await.unwrap();
        server.set_openai_cache(true);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &server, provider, Some(FAST));
        if provider == Provider::Anthropic {
            let text = std::fs::read_to_string(&cfg).unwrap();
            std::fs::write(
                &cfg,
                text.replace(
                    "kind = 'anthropic'",
                    "kind = 'anthropic'\ncache_prompt = true",
                ),
            )
            .unwrap();
        }
        let store = dir.path().join("runs");
        let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=4", "rounds=2"]);
        run_ok(caiflow().args(&args));
        let run = store.join("r");
        let (html, _) = caiflow_ok(&["report", run.to_str().unwrap()]);
        let report: Value = read_json(&Path::new(html.trim()).with_file_name("report.json"));
        let usage: BTreeMap<String, Value> =
            serde_json::from_value(report["usage_total"].clone()).unwrap();
        let cached = usage["cached_tokens"].as_u64().unwrap();
        assert!(cached > 0, "{usage:?}");
        assert_eq!(
            usage["batched_requests"].as_u64(),
            usage["requests"].as_u64(),
            "{usage:?}"
        );
        // Half the cost again: what batching saved equals what was paid.
        let (cost, saved) = (
            usage["cost"].as_f64().unwrap(),
            usage["batch_saved"].as_f64().unwrap(),
        );
        assert!(cost > 0.0 && (saved - cost).abs() < 1e-9, "{usage:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancelled_at_the_provider_resubmits_exactly_what_it_did_not_run() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let server = MockServer::start().await.unwrap();
        // Lines take 150 ms each: the cancel comes after the first ones ran.
        server.set_latency(Duration::from_millis(150));
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &server, provider, Some(FAST));
        let store = dir.path().join("runs");
        let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=5", "rounds=1"]);
        let child = caiflow()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while server.requests() < 2 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.cancel_batches();
        let out = child.wait_with_output().unwrap();
        let (_, stderr) = output_text(&out);
        assert!(out.status.success(), "{stderr}");
        let batches = server.batch_custom_ids();
        let (first, rest) = batches.split_first().unwrap();
        let unfinished: HashSet<String> = server.batch_unfinished(&first.0).into_iter().collect();
        assert!(
            !unfinished.is_empty() && unfinished.len() < 5,
            "cancelled part-way: {unfinished:?}"
        );
        let again: HashSet<String> = rest
            .iter()
            .flat_map(|(_, ids)| ids.iter().cloned())
            .filter(|id| first.1.contains(id))
            .collect();
        assert_eq!(again, unfinished, "{stderr}");
        assert_eq!(server.repeated(), 0);
        let rows = dump(
            &store.join("r"),
            "SELECT count(*) AS n, count(error) AS e FROM revisions",
        );
        assert_eq!(table_row(&rows, "5"), vec!["5", "0"], "{rows}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lines_follow_the_retry_policy_and_become_row_errors() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let server = MockServer::start().await.unwrap();
        // The first line: a 500 (retried in a later batch); the second: a 400 (a row error).
        server.push_faults([
            caiflow_testkit::Fault::Status(500),
            caiflow_testkit::Fault::Status(400),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &server, provider, Some(FAST));
        let store = dir.path().join("runs");
        let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=4", "rounds=1"]);
        let (_, stderr) = run_ok(caiflow().args(&args));
        let rows = dump(
            &store.join("r"),
            "SELECT count(*) AS n, count(error) AS e FROM revisions",
        );
        assert_eq!(table_row(&rows, "4"), vec!["4", "1"], "{rows}\n{stderr}");
        // 4 responses (one twice), 3 critiques and revisions for the rows without error.
        assert_eq!(server.requests(), 5 + 3 + 3, "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_validation_fails_its_rows_with_the_providers_reason() {
    let server = MockServer::start().await.unwrap();
    server.fail_next_batch();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &server, Provider::OpenAi, Some(FAST));
    let store = dir.path().join("runs");
    let args = run_args(&cfg, &store, "plans/sl_cai.sql", &["limit=3", "rounds=1"]);
    let (_, stderr) = run_ok(caiflow().args(&args));
    let rows = dump(
        &store.join("r"),
        "SELECT count(*) AS n, count(error) FILTER (WHERE error LIKE '%refused batch%injected validation failure%') AS e FROM revisions",
    );
    assert_eq!(table_row(&rows, "3"), vec!["3", "3"], "{rows}\n{stderr}");
    assert_eq!(server.requests(), 0, "no line of a failed batch runs");
    let statuses = server.batch_statuses();
    assert_eq!(
        statuses.values().filter(|s| *s == "failed").count(),
        1,
        "{statuses:?}"
    );
}
