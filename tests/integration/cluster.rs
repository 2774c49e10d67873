//! Plans on a cluster: a scheduler and executors as separate `caiflow cluster` processes on
//! 127.0.0.1 (free ports, stopped by PID), the mock as the endpoint.
//!
//! A plan run with `--cluster` must give the tables a local run gives (same keys, principle
//! ids and request hashes), spread its requests over the executors (lineage `worker`), keep
//! the endpoint's `max_concurrency` in total, and survive an executor killed mid-run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use caiflow_engine::CaiSession;
use caiflow_run::materialize::register_run_tables;
use caiflow_run::store::RunStore;
use caiflow_testkit::MockServer;
use caiflow_testkit::cluster::{LocalCluster as Cluster, free_port_pair};
use datafusion::arrow::array::{Array, AsArray};

fn mock_config(dir: &Path, policy: &str, judge: &str, max_concurrency: usize) -> PathBuf {
    let keys = |model: &str| format!("model = '{model}'\nmax_concurrency = {max_concurrency}");
    write_config(
        dir,
        &[
            ("policy", policy, &keys("mock")),
            ("judge", judge, &keys("judge")),
        ],
    )
}

/// Start a cluster whose executors serve the endpoints at `urls` (an executor config written
/// into `dir`) and read and write under `allow`.
fn start_cluster(
    dir: &Path,
    urls: &[&str],
    allow: &[&Path],
    env: Vec<(String, String)>,
) -> Cluster {
    let mut text = String::new();
    for (i, url) in urls.iter().enumerate() {
        text.push_str(&format!("[endpoints.e{i}]\nbase_url = '{url}'\n\n"));
    }
    let config = dir.join("executor.toml");
    std::fs::write(&config, text).expect("executor config");
    let mut args = vec!["--config".to_string(), config.display().to_string()];
    for a in allow {
        args.extend(["--allow".to_string(), a.display().to_string()]);
    }
    Cluster::start_with(Path::new(env!("CARGO_BIN_EXE_caiflow")), 2, 2, 6, env, args)
}

fn write_prompts(dir: &Path, n: usize) -> PathBuf {
    let prompts = dir.join("prompts.jsonl");
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&serde_json::json!({ "prompt": format!("cluster prompt {i}") }).to_string());
        text.push('\n');
    }
    std::fs::write(&prompts, text).expect("prompts");
    prompts
}

fn run_plan(
    plan: &str,
    config: &Path,
    store: &Path,
    run: &str,
    prompts: &Path,
    cluster: Option<&str>,
) -> std::process::Output {
    let mut cmd = caiflow();
    cmd.args([
        "run",
        plan,
        "--config",
        config.to_str().expect("utf-8"),
        "--store",
        store.to_str().expect("utf-8"),
        "--run",
        run,
        "--set",
        &format!("prompts={}", prompts.display()),
    ]);
    if let Some(url) = cluster {
        cmd.args(["--cluster", url]);
    }
    cmd.output().expect("run caiflow")
}

fn assert_ok(out: &std::process::Output, cluster: Option<&Cluster>) {
    assert!(
        out.status.success(),
        "caiflow failed:\nstderr: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.map(Cluster::logs).unwrap_or_default()
    );
}

/// Rows of `sql` over a run's tables, each row's columns joined by `|`, sorted.
async fn rows_of(store: &Path, run: &str, sql: &str) -> Vec<String> {
    let store = RunStore::open(store.to_str().expect("utf-8"), run).expect("run store");
    let session = CaiSession::new(caiflow_llm::Endpoints::default());
    register_run_tables(&session, &store).await.expect("tables");
    let batches = session
        .ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .expect("collect");
    let mut out = vec![];
    for b in &batches {
        let columns: Vec<_> = b
            .columns()
            .iter()
            .map(|c| {
                datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Utf8)
                    .expect("cast")
            })
            .collect();
        for i in 0..b.num_rows() {
            let row: Vec<String> = columns
                .iter()
                .map(|c| {
                    let s = c.as_string::<i32>();
                    if s.is_null(i) {
                        "∅".to_string()
                    } else {
                        s.value(i).to_string()
                    }
                })
                .collect();
            out.push(row.join("|"));
        }
    }
    out.sort();
    out
}

const SL_KEYS: &str = "SELECT prompt_id, round, principle_id, respond_lineage.request_hash, \
     critique_lineage.request_hash, revise_lineage.request_hash FROM revisions";
const SL_WORKERS: &str = "SELECT DISTINCT revise_lineage.worker FROM revisions";
const RL_KEYS: &str = "SELECT prompt_id, label, judge_lineage.request_hash, \
     array_length(candidates), candidates[1]['response'], candidates[4]['response'] FROM judgements WHERE label = 'ok'";
const RL_WORKERS: &str = "SELECT DISTINCT judge_lineage.worker FROM judgements";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sl_and_rl_plans_on_a_cluster_match_a_local_run() {
    let max_concurrency = 4;
    let n = 40;
    // A policy and a judge endpoint for each run; the judges always pick (1, 3).
    let mut mocks = vec![];
    for _ in 0..4 {
        let m = MockServer::start().await.expect("mock");
        m.set_latency(Duration::from_millis(20));
        mocks.push(m);
    }
    for judge in [&mocks[1], &mocks[3]] {
        judge.push_replies((0..n).map(|_| r#"{"chosen": 1, "rejected": 3}"#.to_string()));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = write_prompts(dir.path(), n);
    let local_config = mock_config(
        dir.path(),
        &mocks[0].base_url(),
        &mocks[1].base_url(),
        max_concurrency,
    );
    let cluster_dir = dir.path().join("c");
    std::fs::create_dir_all(&cluster_dir).expect("dir");
    let cluster_config = mock_config(
        &cluster_dir,
        &mocks[2].base_url(),
        &mocks[3].base_url(),
        max_concurrency,
    );
    let store = dir.path().join("runs");
    std::fs::create_dir_all(&store).expect("store");
    let closed = format!("http://127.0.0.1:{}/v1", free_port_pair());
    let cluster = {
        let (root, urls) = (
            dir.path().to_path_buf(),
            [mocks[2].base_url(), mocks[3].base_url(), closed.clone()],
        );
        tokio::task::spawn_blocking(move || {
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            start_cluster(&root, &urls, &[&root], vec![])
        })
        .await
        .expect("cluster")
    };

    for (plan, keys, workers) in [
        ("plans/sl_cai.sql", SL_KEYS, SL_WORKERS),
        ("plans/rl_cai.sql", RL_KEYS, RL_WORKERS),
    ] {
        let name = Path::new(plan)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let out = run_plan(
            plan,
            &local_config,
            &store,
            &format!("{name}-local"),
            &prompts,
            None,
        );
        assert_ok(&out, None);
        let out = run_plan(
            plan,
            &cluster_config,
            &store,
            &format!("{name}-cluster"),
            &prompts,
            Some(&cluster.url()),
        );
        assert_ok(&out, Some(&cluster));

        let local = rows_of(&store, &format!("{name}-local"), keys).await;
        let remote = rows_of(&store, &format!("{name}-cluster"), keys).await;
        assert!(!local.is_empty(), "{plan}: the local run has rows");
        assert_eq!(
            local, remote,
            "{plan}: the cluster's rows differ from a local run's"
        );

        let served = rows_of(&store, &format!("{name}-cluster"), workers).await;
        let ids: Vec<&str> = cluster
            .executors
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(
            served.len(),
            2,
            "{plan}: both executors served requests: {served:?}"
        );
        for w in &served {
            assert!(
                ids.contains(&w.as_str()),
                "{plan}: worker {w} is an executor ({ids:?})"
            );
        }
        let local_workers = rows_of(&store, &format!("{name}-local"), workers).await;
        assert_eq!(local_workers, vec!["local".to_string()]);

        // The executors wrote the table's files (one or more per task), committed once;
        // another engine reads it back.
        let table = if name == "sl_cai" {
            "revisions"
        } else {
            "judgements"
        };
        let path = store.join(format!("{name}-cluster")).join(table);
        let read = python(&format!(
            // os._exit: deltalake's native threads can abort the interpreter's teardown.
            "import os, sys, deltalake\nt = deltalake.DeltaTable('{}')\nprint(t.version(), len(t.file_uris()), t.to_pyarrow_table().num_rows)\nsys.stdout.flush()\nos._exit(0)",
            path.display()
        ));
        let figures: Vec<usize> = read
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(figures.first(), Some(&0), "{plan}: one commit: {read}");
        assert!(
            figures.get(1).is_some_and(|f| *f >= 2),
            "{plan}: files from several tasks: {read}"
        );
        assert_eq!(figures.get(2), Some(&n), "{plan}: every row once: {read}");
    }
    // A Delta table named in SQL is read by the executors (as the files of its version).
    let revisions = store.join("sl_cai-local").join("revisions");
    let out = caiflow()
        .args([
            "sql",
            "--config",
            cluster_config.to_str().expect("utf-8"),
            "--cluster",
        ])
        .arg(cluster.url())
        .arg("-e")
        .arg(format!(
            "CREATE EXTERNAL TABLE r STORED AS DELTA LOCATION '{0}'; SELECT count(*) AS n FROM r; \
             SELECT count(*) AS prompts FROM red_team_prompts('{0}'); \
             SELECT count(*) AS kept FROM near_dedup(r, column => 'prompt', threshold => 1.0); \
             SELECT array_length(make_array(7, 8, 9)) AS three",
            revisions.display()
        ))
        .output()
        .expect("caiflow sql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.matches(&format!("| {n} ")).count() == 3
            && stdout.contains("| 3 "),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The functions that hold their process's session are refused, saying what to do.
    for (query, expected) in [
        (
            "SELECT llm('policy', 'hi') AS a".to_string(),
            "llm() runs in one process, not on a cluster",
        ),
        (
            format!(
                "SELECT * FROM red_team_generate('{}', n => 2)",
                prompts.display()
            ),
            "red_team_generate runs in one process, not on a cluster",
        ),
    ] {
        let out = caiflow()
            .args(["sql", "--config", cluster_config.to_str().expect("utf-8")])
            .args(["--cluster", &cluster.url(), "-e", &query])
            .output()
            .expect("caiflow sql");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{query}: {stderr}"
        );
    }

    // An endpoint the executors cannot reach: one line naming it, nothing committed.
    let config = mock_config(&cluster_dir, &closed, &closed, max_concurrency);
    let out = run_plan(
        "plans/sl_cai.sql",
        &config,
        &store,
        "unreachable",
        &prompts,
        Some(&cluster.url()),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("caiflow: error:"))
        .collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains(&closed) && error[0].contains("a task failed on the cluster"),
        "{stderr}"
    );
    assert!(!committed(&store.join("unreachable"), "revisions"));

    for (what, mock) in [("policy", &mocks[2]), ("judge", &mocks[3])] {
        let peak = mock
            .state
            .peak_in_flight
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            peak as usize <= max_concurrency,
            "{what}: the cluster had {peak} requests in flight, max_concurrency is {max_concurrency}"
        );
        assert!(
            mock.repeated() as usize <= max_concurrency,
            "{what}: {} requests were repeated",
            mock.repeated()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_mid_run_is_replaced_and_every_row_lands_once() {
    let max_concurrency = 4;
    let mock = MockServer::start().await.expect("mock");
    mock.set_latency(Duration::from_millis(60));
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 60;
    let prompts = write_prompts(dir.path(), n);
    let config = mock_config(
        dir.path(),
        &mock.base_url(),
        &mock.base_url(),
        max_concurrency,
    );
    let store = dir.path().join("runs");
    std::fs::create_dir_all(&store).expect("store");
    let mut cluster = {
        let (root, url) = (dir.path().to_path_buf(), mock.base_url());
        tokio::task::spawn_blocking(move || start_cluster(&root, &[&url], &[&root], vec![]))
            .await
            .expect("cluster")
    };
    let url = cluster.url();
    let run = {
        let (config, store, prompts) = (config.clone(), store.clone(), prompts.clone());
        std::thread::spawn(move || {
            run_plan(
                "plans/sl_cai.sql",
                &config,
                &store,
                "killed",
                &prompts,
                Some(&url),
            )
        })
    };
    // Three requests a prompt (respond, critique, revise): kill a third of the way in.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (mock.requests() as usize) < n {
        assert!(Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = cluster.executors[0].0.clone();
    cluster.kill_executor(&victim);
    let fresh = cluster.add_executor();
    let out = tokio::task::spawn_blocking(move || run.join().expect("run thread"))
        .await
        .expect("join");
    assert_ok(&out, Some(&cluster));

    let ids = rows_of(&store, "killed", "SELECT prompt_id FROM revisions").await;
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(
        ids.len(),
        n,
        "every prompt has one revision row\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert_eq!(distinct.len(), n, "no prompt twice");
    let errors = rows_of(
        &store,
        "killed",
        "SELECT count(*) FROM revisions WHERE error IS NOT NULL",
    )
    .await;
    assert_eq!(errors, vec!["0".to_string()]);
    let workers = rows_of(&store, "killed", SL_WORKERS).await;
    assert!(!workers.is_empty());
    // The journal keeps repeats to what was in flight on the killed executor (its share of
    // the endpoint's concurrency).
    assert!(
        mock.repeated() as usize <= max_concurrency,
        "{} requests were sent twice",
        mock.repeated()
    );
    eprintln!(
        "killed {victim}, started {fresh}; workers {workers:?}; {} requests, {} repeated",
        mock.requests(),
        mock.repeated()
    );
}

#[test]
fn an_unreachable_scheduler_is_one_line_naming_it() {
    let port = free_port_pair();
    let out = caiflow()
        .args([
            "sql",
            "-e",
            "SELECT 1",
            "--cluster",
            &format!("df://127.0.0.1:{port}"),
        ])
        .output()
        .expect("run caiflow");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains(&format!("df://127.0.0.1:{port}")) && lines[0].contains("unreachable"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_on_a_cluster_with_its_run_on_s3() {
    let moto = MotoServer::start();
    moto.create_bucket("cluster");
    let env: Vec<(String, String)> = moto
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mock = MockServer::start().await.expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 20;
    let prompts = write_prompts(dir.path(), n);
    let config = mock_config(dir.path(), &mock.base_url(), &mock.base_url(), 4);
    let cluster_env = env.clone();
    let cluster = {
        let (root, url) = (dir.path().to_path_buf(), mock.base_url());
        tokio::task::spawn_blocking(move || {
            start_cluster(
                &root,
                &[&url],
                &[&root, Path::new("s3://cluster/runs")],
                cluster_env,
            )
        })
        .await
        .expect("cluster")
    };
    let with_env = |cmd: &mut Command| {
        for (k, v) in &env {
            cmd.env(k, v);
        }
    };
    let mut run = caiflow();
    with_env(&mut run);
    let out = run
        .args(["run", "plans/sl_cai.sql", "--config"])
        .arg(&config)
        .args(["--store", "s3://cluster/runs", "--run", "s3run", "--set"])
        .arg(format!("prompts={}", prompts.display()))
        .args(["--cluster", &cluster.url()])
        .output()
        .expect("run caiflow");
    assert_ok(&out, Some(&cluster));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("table revisions: {n} rows")),
        "{stderr}"
    );
    // The executors journalled into the bucket and wrote the table's files there.
    let mut inspect = caiflow();
    with_env(&mut inspect);
    let listed = inspect
        .args(["inspect", "s3://cluster/runs/s3run"])
        .output()
        .expect("inspect");
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("table revisions") && listed.contains(&format!("{n} rows")),
        "{listed}"
    );
    assert_eq!(mock.requests() as usize, 3 * n, "each request once");
}

/// A cluster shared by a team: its executors hold secrets in their environment, serve only
/// the endpoints their owner configured, touch only their `--allow` folders, and run only
/// jobs signed with the cluster's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_only_its_own_endpoints_folders_and_signed_jobs() {
    let approved = MockServer::start().await.expect("mock");
    let attacker = MockServer::start().await.expect("attacker");
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 4;
    let prompts = write_prompts(dir.path(), n);
    let store = dir.path().join("runs");
    std::fs::create_dir_all(&store).expect("store");
    let elsewhere = tempfile::tempdir().expect("another folder");
    let token = "team-secret-token".to_string();
    let env = vec![
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "executor-own-secret".to_string(),
        ),
        ("CAIFLOW_CLUSTER_TOKEN".to_string(), token.clone()),
    ];
    let cluster = {
        let (root, url) = (dir.path().to_path_buf(), approved.base_url());
        tokio::task::spawn_blocking(move || start_cluster(&root, &[&url], &[&root], env))
            .await
            .expect("cluster")
    };
    let run = |config: &Path, store: &Path, run: &str, token: Option<&str>| {
        let mut cmd = caiflow();
        cmd.env_remove("CAIFLOW_CLUSTER_TOKEN");
        if let Some(t) = token {
            cmd.env("CAIFLOW_CLUSTER_TOKEN", t);
        }
        cmd.args(["run", "plans/sl_cai.sql", "--config"])
            .arg(config)
            .arg("--store")
            .arg(store)
            .args(["--run", run, "--set"])
            .arg(format!("prompts={}", prompts.display()))
            .args(["--cluster", &cluster.url()])
            .output()
            .expect("run caiflow")
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    // A job without the token is refused before any task runs.
    let good = mock_config(dir.path(), &approved.base_url(), &approved.base_url(), 2);
    let out = run(&good, &store, "unsigned", None);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not signed"), "{}", stderr(&out));
    assert_eq!(approved.requests(), 0);

    // An endpoint of the client's choosing, with the executor's AWS secret as its key: refused;
    // the secret never reaches that server.
    let hostile_dir = dir.path().join("hostile");
    std::fs::create_dir_all(&hostile_dir).expect("dir");
    let hostile = hostile_dir.join("caiflow.toml");
    std::fs::write(
        &hostile,
        format!(
            "[endpoints.policy]\nbase_url = '{0}'\nmodel = 'm'\napi_key_env = 'AWS_SECRET_ACCESS_KEY'\n\n\
             [endpoints.judge]\nbase_url = '{0}'\nmodel = 'm'\napi_key_env = 'AWS_SECRET_ACCESS_KEY'\n",
            attacker.base_url()
        ),
    )
    .expect("config");
    // The client itself needs the variable set to name it.
    let out = {
        let mut cmd = caiflow();
        cmd.env("CAIFLOW_CLUSTER_TOKEN", &token)
            .env("AWS_SECRET_ACCESS_KEY", "client-side")
            .args(["run", "plans/sl_cai.sql", "--config"])
            .arg(&hostile)
            .arg("--store")
            .arg(&store)
            .args(["--run", "hostile", "--set"])
            .arg(format!("prompts={}", prompts.display()))
            .args(["--cluster", &cluster.url()]);
        cmd.output().expect("run caiflow")
    };
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refuses endpoint '")
            && stderr(&out).contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        attacker.requests(),
        0,
        "nothing was sent to the client's server"
    );
    assert!(
        !attacker
            .bodies()
            .iter()
            .any(|b| b.to_string().contains("executor-own-secret"))
    );

    // A run store outside the executors' --allow folders: refused.
    let out = run(&good, elsewhere.path(), "outside", Some(&token));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--allow"), "{}", stderr(&out));

    // Signed, approved and inside: it runs.
    let out = run(&good, &store, "signed", Some(&token));
    assert_ok(&out, Some(&cluster));
    assert_eq!(approved.requests() as usize, 3 * n);
}
