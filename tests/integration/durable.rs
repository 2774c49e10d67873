//! Durable runs against a mock endpoint that counts requests by fingerprint: kill -9 and
//! resume, re-runs, option changes, repair, and stores that cannot be written.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use caiflow_testkit::{Fault, MockServer};

fn caiflow() -> Command {
    caiflow_in(&repo_root())
}

/// caiflow run from `dir` (a user's folder other than the repository).
fn caiflow_in(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    c.current_dir(dir);
    c
}

struct Fixture {
    server: MockServer,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prompts: usize, latency_ms: u64) -> Fixture {
        let server = MockServer::start().await.unwrap();
        server.set_latency(Duration::from_millis(latency_ms));
        let dir = tempfile::tempdir().unwrap();
        let keys = "max_concurrency = 4\nretry = { max_attempts = 2, initial_backoff_ms = 10 }";
        write_config(dir.path(), &[("policy", &server.base_url(), keys)]);
        let text: String = (0..prompts)
            .map(|i| format!("{{\"prompt\": \"durable prompt {i}\"}}\n"))
            .collect();
        std::fs::write(dir.path().join("prompts.jsonl"), text).unwrap();
        Fixture { server, dir }
    }

    fn args(&self, run: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "plans/sl_cai.sql".into(),
            "--config".into(),
            self.dir.path().join("caiflow.toml").display().to_string(),
            "--store".into(),
            self.dir.path().join("store").display().to_string(),
            "--run".into(),
            run.into(),
            "--set".into(),
            format!(
                "prompts={}",
                self.dir.path().join("prompts.jsonl").display()
            ),
            "--set".into(),
            "max_tokens=16".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, run: &str, extra: &[&str]) -> String {
        let out = caiflow().args(self.args(run, extra)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "run failed: {stderr}");
        stderr
    }

    fn run_dir(&self, run: &str) -> std::path::PathBuf {
        self.dir.path().join("store").join(run)
    }

    /// (prompt_id, revision) of the run's committed revisions table, sorted.
    async fn revisions(&self, run: &str) -> Vec<(String, String)> {
        let store = caiflow_run::store::RunStore::open(
            self.dir.path().join("store").to_str().unwrap(),
            run,
        )
        .unwrap();
        let session = caiflow_engine::CaiSession::new(caiflow_llm::Endpoints::default());
        caiflow_run::materialize::register_run_tables(&session, &store)
            .await
            .unwrap();
        let out = collect(&session, "SELECT prompt_id, coalesce(revision, 'ERROR') AS r FROM revisions ORDER BY prompt_id, r").await;
        column(&out, "prompt_id")
            .into_iter()
            .zip(column(&out, "r"))
            .map(|(a, b)| (a.unwrap_or_default(), b.unwrap_or_default()))
            .collect()
    }
}

fn kill_after(cmd: Command, after: Duration) {
    kill_when(cmd, || true, after);
}

/// Start `cmd`, wait until `ready()` holds (at most 30 s), then `after` more, then kill -9.
pub(crate) fn kill_when(mut cmd: Command, ready: impl Fn() -> bool, after: Duration) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !ready() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_several_points_then_resume_equals_an_uninterrupted_run() {
    // 40 prompts x 3 calls at 4 in flight and 150 ms each: about 4.5 s of requests.
    let f = Fixture::new(40, 150).await;
    f.run("clean", &[]);
    let clean = f.revisions("clean").await;
    assert_eq!(clean.len(), 40);
    let clean_requests = f.server.requests();
    assert_eq!(clean_requests, 120);

    let before = f.server.requests();
    let repeated_before = f.server.repeated();
    for after_ms in [1000u64, 1600, 2200] {
        let mut cmd = caiflow();
        cmd.args(f.args("killed", &[]));
        kill_after(cmd, Duration::from_millis(after_ms));
        // No table is visible until its Delta commit is written.
        let run = f.run_dir("killed");
        for table in ["revisions", "sft"] {
            if !committed(&run, table) {
                let out = caiflow()
                    .args(["sql", "--run", run.to_str().unwrap(), "-e", "SELECT 1"])
                    .output()
                    .unwrap();
                let tables = String::from_utf8_lossy(&out.stderr).to_string();
                assert!(
                    !tables.contains(table),
                    "{table} visible without a commit: {tables}"
                );
            }
        }
    }
    let stderr = f.run("killed", &[]);
    assert_eq!(
        f.revisions("killed").await,
        clean,
        "resumed run equals the uninterrupted one"
    );
    // The second run asks the same questions as the clean one (same seeds), so every request
    // of it is a repeat of the clean run's; what counts is how often it repeated itself.
    let sent = f.server.requests() - before;
    let self_repeats = f.server.repeated() - repeated_before - 120;
    eprintln!(
        "killed 3 times: {sent} requests sent for 120 logical ones; {self_repeats} sent twice\n{stderr}"
    );
    // At most the requests in flight at each kill (4) plus about a second of completions
    // (4 in flight / 60 ms = ~67 per second) per kill.
    assert!(
        self_repeats <= 3 * (4 + 70),
        "{self_repeats} repeated requests"
    );
    assert!(sent < 120 + 3 * (4 + 70));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_reuses_everything_and_an_option_change_recomputes_only_what_depends_on_it() {
    let f = Fixture::new(10, 0).await;
    f.run("r", &[]);
    assert_eq!(f.server.requests(), 30);

    let stderr = f.run("r", &[]);
    assert_eq!(f.server.requests(), 30, "nothing is sent again");
    assert!(
        stderr.contains("table revisions: reused") && stderr.contains("table sft: reused"),
        "{stderr}"
    );

    // Change only the revision request: respond and critique come from the journal.
    let stderr = f.run("r", &["--set", "revise_max_tokens=8"]);
    assert_eq!(
        f.server.requests(),
        40,
        "only the 10 revise requests are new: {stderr}"
    );
    assert!(
        stderr.contains("table revisions: 10 rows") && stderr.contains("table sft:"),
        "{stderr}"
    );

    // --from recomputes a table and its dependents, at no cost.
    let stderr = f.run(
        "r",
        &["--set", "revise_max_tokens=8", "--from", "revisions"],
    );
    assert_eq!(f.server.requests(), 40);
    assert!(
        stderr.contains("30 requests served from the journal"),
        "{stderr}"
    );

    let out = caiflow()
        .args(["inspect", f.run_dir("r").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("table revisions") && text.contains("journal: 40 results"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_keyed_by_another_hash_scheme_is_said_before_anything_is_sent() {
    let f = Fixture::new(10, 0).await;
    f.run("r", &[]);
    assert_eq!(f.server.requests(), 30);
    let scheme = f.run_dir("r").join("journal").join("SCHEME");
    assert_eq!(
        std::fs::read_to_string(&scheme).unwrap().trim(),
        caiflow_llm::REQUEST_HASH_SCHEME
    );
    // A lost SCHEME file deletes nothing: the run is served from the journal.
    std::fs::remove_file(&scheme).unwrap();
    let stderr = f.run("r", &["--from", "revisions"]);
    assert_eq!(f.server.requests(), 30, "{stderr}");
    assert!(stderr.contains("SCHEME is missing"), "{stderr}");
    assert!(scheme.exists(), "written again");

    // As a journal written before the canonical hash looks: SCHEME names the old scheme.
    std::fs::write(&scheme, "caiflow-request-v1 (JSON text)\n").unwrap();
    let stderr = f.run("r", &["--from", "revisions"]);
    let said = stderr
        .lines()
        .position(|l| {
            l.contains("30 journalled requests were keyed by hash scheme caiflow-request-v1")
        })
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        stderr
            .lines()
            .nth(said)
            .unwrap()
            .contains("will be sent again")
    );
    assert_eq!(f.server.requests(), 60, "they were sent again, as said");
    // The journal is this scheme's now: the next run is served from it.
    let stderr = f.run("r", &["--from", "revisions"]);
    assert_eq!(f.server.requests(), 60, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_an_input_file_recomputes_what_depends_on_it_and_sends_only_the_new_rows() {
    let f = Fixture::new(10, 0).await;
    f.run("r", &[]);
    assert_eq!(f.server.requests(), 30);
    let ids = |rows: &[(String, String)]| -> std::collections::BTreeSet<String> {
        rows.iter().map(|(id, _)| id.clone()).collect()
    };
    let before = ids(&f.revisions("r").await);
    let prompts = f.dir.path().join("prompts.jsonl");

    // Rewritten with the same content (a new modification time): nothing recomputes.
    let text = std::fs::read_to_string(&prompts).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&prompts, &text).unwrap();
    let stderr = f.run("r", &[]);
    assert!(stderr.contains("table revisions: reused"), "{stderr}");
    assert_eq!(f.server.requests(), 30);

    // One prompt edited: the tables recompute; only that prompt's three calls are new.
    std::fs::write(
        &prompts,
        text.replace("durable prompt 3\"", "durable prompt 3, edited\""),
    )
    .unwrap();
    let stderr = f.run("r", &[]);
    assert!(
        stderr.contains("table revisions: 10 rows") && stderr.contains("table sft:"),
        "{stderr}"
    );
    assert_eq!(f.server.requests(), 33, "{stderr}");
    let after = ids(&f.revisions("r").await);
    assert_eq!(after.len(), 10);
    assert_eq!(
        before.intersection(&after).count(),
        9,
        "one prompt (and its id) changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_rematerialization_leaves_the_previous_version_readable() {
    let f = Fixture::new(20, 0).await;
    f.run("r", &[]);
    let before = f.revisions("r").await;
    assert_eq!(before.len(), 20);
    let sent = f.server.requests();
    // Recompute revisions (a changed option: 20 new revise requests, 4 at a time, 150 ms
    // each) and kill it half-way.
    f.server.set_latency(Duration::from_millis(150));
    let mut cmd = caiflow();
    cmd.args(f.args("r", &["--set", "revise_max_tokens=8"]));
    kill_after(cmd, Duration::from_millis(500));
    let new = f.server.requests() - sent;
    assert!(new > 0 && new < 20, "killed half-way: {new} new requests");
    // The table is its previous version, whole: same rows, nothing of the new write.
    assert_eq!(f.revisions("r").await, before);
    let out = caiflow()
        .args(["inspect", f.run_dir("r").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("version 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_retries_only_failed_requests() {
    let f = Fixture::new(12, 0).await;
    // The first five requests fail with a non-retryable 400.
    f.server.push_faults((0..5).map(|_| Fault::Status(400)));
    f.run("r", &[]);
    let failed = f
        .revisions("r")
        .await
        .iter()
        .filter(|(_, r)| r == "ERROR")
        .count();
    assert_eq!(failed, 5);
    let before = f.server.requests();
    let out = caiflow()
        .args(["repair", f.run_dir("r").to_str().unwrap(), "--config"])
        .arg(f.dir.path().join("caiflow.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = f.server.requests() - before;
    assert!(f.revisions("r").await.iter().all(|(_, r)| r != "ERROR"));
    // Each failed row needs at most its three calls; rows that were fine cost nothing.
    assert!(
        (5..=15).contains(&sent),
        "{sent} requests for 5 failed rows"
    );
    let out = caiflow()
        .args(["repair", f.run_dir("r").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to repair"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_store_is_a_clear_error_and_the_next_run_succeeds() {
    let f = Fixture::new(3, 0).await;
    let blocker = f.dir.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let mut args = f.args("r", &[]);
    let store_at = args.iter().position(|a| a == "--store").unwrap() + 1;
    args[store_at] = blocker.display().to_string();
    let out = caiflow().args(&args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-folder"), "{err}");
    assert_eq!(f.server.requests(), 0);
    f.run("r", &[]);
    assert!(committed(&f.run_dir("r"), "sft"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_an_s3_store_resumes_and_reads_back() {
    let moto = MotoServer::start();
    let f = Fixture::new(16, 40).await;
    let with_env = |mut c: Command| {
        for (k, v) in moto.env() {
            c.env(k, v);
        }
        c
    };
    let mut args = f.args("s3run", &[]);
    let store_at = args.iter().position(|a| a == "--store").unwrap() + 1;

    // A bucket that does not exist: a clear error, nothing sent.
    args[store_at] = "s3://missing-bucket/runs".into();
    let out = with_env(caiflow()).args(&args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not writable") && err.contains("missing-bucket"),
        "{err}"
    );
    assert_eq!(f.server.requests(), 0);

    moto.create_bucket("caiflow");
    args[store_at] = "s3://caiflow/runs".into();
    // Killed mid-run: no table becomes visible.
    let mut cmd = with_env(caiflow());
    cmd.args(&args);
    kill_after(cmd, Duration::from_millis(600));
    let out = with_env(caiflow())
        .args(["inspect", "s3://caiflow/runs/s3run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("table sft"), "{text}");

    let out = with_env(caiflow()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read_revisions = || {
        let out = with_env(caiflow())
            .args([
                "sql",
                "--run",
                "s3://caiflow/runs/s3run",
                "-e",
                "SELECT count(*) AS n, count(DISTINCT prompt_id) AS p, \
                 min(revise_lineage['max_tokens']) AS lo, \
                 max(revise_lineage['max_tokens']) AS hi FROM revisions",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let committed_before = read_revisions();
    assert!(
        committed_before.contains("| 16 | 16 | 16 | 16 |"),
        "{committed_before}"
    );

    // Killed while recomputing revisions (a changed option): the table stays its previous
    // version, whole, with nothing of the unfinished write visible.
    f.server.set_latency(Duration::from_millis(150));
    let sent = f.server.requests();
    let mut rerun = f.args("s3run", &["--set", "revise_max_tokens=8"]);
    rerun[store_at] = "s3://caiflow/runs".into();
    let mut cmd = with_env(caiflow());
    cmd.args(&rerun);
    // Killed once the first new request is in (about two of four waves later).
    kill_when(
        cmd,
        || f.server.requests() > sent,
        Duration::from_millis(250),
    );
    let new = f.server.requests() - sent;
    assert!(new > 0 && new < 16, "killed half-way: {new} new requests");
    assert_eq!(read_revisions(), committed_before);
    f.server.set_latency(Duration::from_millis(40));

    let export_dir = f.dir.path().join("exported");
    let out = with_env(caiflow())
        .args([
            "export",
            "s3://caiflow/runs/s3run",
            "--format",
            "trl-sft",
            "--out",
            export_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: usize = std::fs::read_dir(&export_dir)
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert!(rows >= 16, "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_sigterm_stop_gracefully_keep_completed_work_and_exit_130() {
    for (signal, run) in [("-INT", "stopped"), ("-TERM", "terminated")] {
        let f = Fixture::new(40, 150).await;
        let child = caiflow()
            .args(f.args(run, &[]))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        // The stop says how to resume: the same command, with the run named.
        let hint = stderr
            .lines()
            .find(|l| l.contains("To resume: caiflow run plans/sl_cai.sql"))
            .unwrap_or_else(|| panic!("{stderr}"));
        assert!(hint.contains(&format!("--run {run}")), "{hint}");
        let dir = f.run_dir(run);
        assert!(!committed(&dir, "revisions"), "nothing is committed");
        let sent_before = f.server.requests();
        assert!(sent_before > 0 && sent_before < 120, "{sent_before}");

        f.run(run, &[]);
        assert_eq!(f.revisions(run).await.len(), 40);
        // Everything completed before the stop was kept: nothing is asked twice.
        assert_eq!(
            f.server.repeated(),
            0,
            "{signal}: {} requests in all",
            f.server.requests()
        );
        assert_eq!(f.server.requests(), 120);
    }
}

/// `repair` regenerates only the failed rows, with the run's own configuration, from any
/// folder: the saved plan's relative paths resolve where the run was made, and a
/// configuration that would change the model is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_uses_the_runs_own_configuration_from_any_folder() {
    let f = Fixture::new(20, 0).await;
    // 13 of the 20 respond requests fail for good (a 400 is not retried).
    f.server.push_faults((0..13).map(|_| Fault::Status(400)));
    f.run("r", &[]);
    let before = f.revisions("r").await;
    let good: Vec<_> = before
        .iter()
        .filter(|(_, r)| r != "ERROR")
        .cloned()
        .collect();
    assert_eq!(good.len(), 7, "{before:?}");
    let sent = f.server.requests();

    // Another model in another caiflow.toml: refused, nothing sent.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("caiflow.toml");
    std::fs::write(
        &other,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmodel = 'another-model'\n",
            f.server.base_url()
        ),
    )
    .unwrap();
    let out = caiflow_in(elsewhere.path())
        .args(["repair", f.run_dir("r").to_str().unwrap(), "--config"])
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("model 'another-model'") && err.contains("repair without --config"),
        "{err}"
    );
    assert_eq!(f.server.requests(), sent);

    // From that folder (its caiflow.toml names another model), without --config: the run's
    // own configuration; only the failed rows are asked again.
    let out = caiflow_in(elsewhere.path())
        .args(["repair", f.run_dir("r").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = f.revisions("r").await;
    assert!(after.iter().all(|(_, r)| r != "ERROR"), "{after:?}");
    for row in &good {
        assert!(after.contains(row), "good row {row:?} was regenerated");
    }
    let repaired = f.server.requests() - sent;
    assert!(
        (13..=39).contains(&repaired),
        "{repaired} requests for 13 failed rows"
    );
    let models: std::collections::BTreeSet<String> = f
        .server
        .bodies()
        .iter()
        .filter_map(|b| b["model"].as_str().map(str::to_string))
        .collect();
    assert_eq!(models.len(), 1, "one model throughout: {models:?}");
}

/// One process per run: a second one is refused naming the holder, vacuum included (so it
/// never races a write); vacuum right after a run leaves caiflow's tables caiflow's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_per_run_and_vacuum_keeps_the_tables() {
    let f = Fixture::new(20, 150).await;
    let mut first = caiflow()
        .args(f.args("r", &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while f.server.requests() == 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for args in [
        f.args("r", &[]),
        vec!["vacuum".into(), f.run_dir("r").display().to_string()],
    ] {
        let out = caiflow().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("is in use by caiflow run (pid") && err.lines().count() == 1,
            "{err}"
        );
    }
    assert!(first.wait().unwrap().success());
    let sent = f.server.requests();
    assert_eq!(sent, 60);

    // A re-materialization, then vacuum with no retention: the old version's files go, the
    // tables stay caiflow's and are reused.
    f.run("r", &["--from", "revisions"]);
    let out = caiflow()
        .args([
            "vacuum",
            f.run_dir("r").to_str().unwrap(),
            "--retain-hours",
            "0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("table revisions: ") && !l.contains(": 0 file")),
        "{text}"
    );
    let out = caiflow()
        .args(["inspect", f.run_dir("r").to_str().unwrap()])
        .output()
        .unwrap();
    let inspected = String::from_utf8_lossy(&out.stdout);
    assert!(
        inspected.contains("table revisions") && inspected.contains("VACUUM END"),
        "{inspected}"
    );
    let stderr = f.run("r", &[]);
    assert!(stderr.contains("table revisions: reused"), "{stderr}");
    assert_eq!(
        f.server.requests(),
        sent,
        "nothing recomputed after a vacuum"
    );
    // The default retention keeps what was removed within the last 7 days.
    f.run("r", &["--from", "revisions"]);
    let out = caiflow()
        .args(["vacuum", f.run_dir("r").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("table revisions: 0 file(s) deleted"),
        "{text}"
    );
}

/// A damaged table (a data file gone, a commit cut short) is reported by inspect and
/// recomputed by the next run, free from the journal; report and vacuum keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_version_is_reported_and_recomputed() {
    let f = Fixture::new(6, 0).await;
    f.run("r", &[]);
    let sent = f.server.requests();
    let table = f.run_dir("r").join("revisions");
    // A commit cut short: the latest log entry truncated.
    let log = table.join("_delta_log").join("00000000000000000000.json");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, &text[..text.len() / 2]).unwrap();
    for command in ["inspect", "report", "vacuum"] {
        let out = caiflow()
            .args([command, f.run_dir("r").to_str().unwrap()])
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{command}: {all}");
        if command == "inspect" {
            assert!(
                all.contains("table revisions") && all.contains("DAMAGED"),
                "{all}"
            );
        }
    }
    let stderr = f.run("r", &[]);
    assert!(stderr.contains("table revisions: 6 rows"), "{stderr}");
    assert_eq!(f.server.requests(), sent, "recomputed from the journal");
    assert_eq!(f.revisions("r").await.len(), 6);
    // The damaged table was moved aside, not deleted.
    let aside = std::fs::read_dir(f.run_dir("r"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("revisions.damaged-")
        });
    assert!(aside);
}
