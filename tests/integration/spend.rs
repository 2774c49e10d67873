//! Spend control on the mock: dry runs that count what the real run sends, token budgets
//! that stop a run before they are passed (checked against the mock's own token counters)
//! and resume without repeats, usage that adds up across sessions, truncated answers, and
//! option values refused when the plan is made.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::Ordering;

use crate::common::*;
use caiflow_testkit::MockServer;

/// Two mock endpoints; the policy has a price, so costs are computed.
fn config(dir: &Path, policy: &MockServer, judge: &MockServer) -> PathBuf {
    let priced = "model = 'mock'\nmax_concurrency = 4\n\
                  price = { input_per_mtok = 3.0, output_per_mtok = 15.0 }";
    let judge_keys = "model = 'mock-judge'\nmax_concurrency = 4";
    write_config(
        dir,
        &[
            ("policy", &policy.base_url(), priced),
            ("judge", &judge.base_url(), judge_keys),
        ],
    )
}

fn prompts(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let text: String = (0..n)
        .map(|i| {
            serde_json::json!({ "prompt": format!("How do I get into my neighbour's shed number {i}?") })
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    prompts: PathBuf,
}

impl Setup {
    fn new(policy: &MockServer, judge: &MockServer, n: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        Setup {
            config: config(dir.path(), policy, judge),
            prompts: prompts(dir.path(), n),
            dir,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// `caiflow run PLAN --run NAME` with the setup's config, store and prompts.
    fn run(&self, plan: &str, name: &str, extra: &[&str]) -> Output {
        let prompts = format!("prompts={}", self.prompts.display());
        let store = self.store();
        let mut args = vec![
            "run",
            plan,
            "--config",
            self.config.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--run",
            name,
            "--set",
            &prompts,
        ];
        args.extend(extra);
        caiflow_output(&args)
    }

    fn inspect(&self, name: &str) -> String {
        let run = self.store().join(name);
        caiflow_ok(&["inspect", run.to_str().unwrap()]).0
    }
}

/// `stage rows R requests N[-M] free F …` lines of a dry run: stage → (requests, max).
fn dry_requests(stdout: &str) -> Vec<(String, u64, u64)> {
    stdout
        .lines()
        .filter(|l| l.contains(" rows ") && l.contains(" requests "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "requests").unwrap();
            let n = words[at + 1];
            let (lo, hi) = match n.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (n.parse().unwrap(), n.parse().unwrap()),
            };
            (words[0].to_string(), lo, hi)
        })
        .collect()
}

/// The run's total usage line of `caiflow inspect`: (requests, tokens).
fn run_usage(inspect: &str) -> (u64, u64) {
    let line = inspect
        .lines()
        .find(|l| l.contains("usage: last session"))
        .unwrap_or_else(|| panic!("no usage in:\n{inspect}"));
    let total = line.split("session(s): ").nth(1).unwrap();
    let words: Vec<&str> = total.split_whitespace().collect();
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}

fn judge_replies(judge: &MockServer, n: usize) {
    judge.push_replies((0..n).map(|_| r#"{"chosen": 1, "rejected": 2} because."#.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_send_nothing_and_count_what_the_real_run_sends() {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    let s = Setup::new(&policy, &judge, 10);
    for (plan, vars) in [
        ("plans/sl_cai.sql", vec!["--set", "rounds=2"]),
        ("plans/rl_cai.sql", vec![]),
    ] {
        let name = plan.trim_start_matches("plans/").trim_end_matches(".sql");
        let mut args = vars.clone();
        args.push("--dry-run");
        let out = s.run(plan, name, &args);
        let (stdout, stderr) = output_text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert_eq!(
            policy.state.requests.load(Ordering::SeqCst),
            0,
            "dry run sent"
        );
        assert_eq!(
            judge.state.requests.load(Ordering::SeqCst),
            0,
            "dry run sent"
        );
        assert!(!s.store().join(name).exists(), "dry run wrote the run");
        let stages = dry_requests(&stdout);
        assert!(!stages.is_empty(), "{stdout}");
        assert!(stdout.contains("endpoint policy:"), "{stdout}");
        assert!(
            stdout.contains("cost <= $"),
            "policy has a price:\n{stdout}"
        );
        assert!(stdout.contains("(estimate)"), "{stdout}");

        judge_replies(&judge, 100);
        let out = s.run(plan, name, &vars);
        let (stdout2, stderr2) = output_text(&out);
        assert!(out.status.success(), "{stdout2}\n{stderr2}");
        let sent = policy.state.requests.load(Ordering::SeqCst)
            + judge.state.requests.load(Ordering::SeqCst);
        let (lo, hi) = stages
            .iter()
            .fold((0, 0), |(a, b), (_, lo, hi)| (a + lo, b + hi));
        // Every verdict parses at the first try: the real run sends the range's low end.
        assert_eq!(sent, lo, "dry run said {lo}-{hi}:\n{stdout}");
        if plan.contains("rl_cai") {
            let judge_line = stages.iter().find(|(n, _, _)| n == "judge").unwrap();
            assert_eq!(judge_line.1, 10);
            assert_eq!(judge_line.2, 30, "3 attempts per prompt at most");
            assert_eq!(
                stages.iter().find(|(n, _, _)| n == "sample").unwrap().1,
                40,
                "10 prompts x 4 temperatures"
            );
        } else {
            let n = |stage: &str| stages.iter().find(|(n, _, _)| n == stage).unwrap().1;
            assert_eq!((n("respond"), n("critique")), (10, 10), "{stdout}");
            // Round 1's revision, then round 2's critique and revision.
            assert_eq!(n("revise"), 30, "{stdout}");
        }

        // A dry run of the finished run: every request is in its journal, so free.
        let out = s.run(plan, name, &[vars.as_slice(), &["--dry-run"]].concat());
        let (stdout3, _) = output_text(&out);
        assert!(stdout3.contains("total: requests to send 0"), "{stdout3}");
        policy.state.requests.store(0, Ordering::SeqCst);
        judge.state.requests.store(0, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_stops_before_it_is_passed_and_the_rerun_continues() {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    let s = Setup::new(&policy, &judge, 12);
    // The whole run, uninterrupted, in another run of the same store: its usage.
    let out = s.run("plans/sl_cai.sql", "whole", &[]);
    assert!(out.status.success(), "{:?}", output_text(&out));
    let whole = run_usage(&s.inspect("whole"));
    let whole_requests = policy.state.requests.load(Ordering::SeqCst);
    assert_eq!(whole.0, whole_requests, "usage counts the requests sent");
    let mock_tokens = policy.state.prompt_tokens.load(Ordering::SeqCst)
        + policy.state.completion_tokens.load(Ordering::SeqCst);
    assert_eq!(
        whole.1, mock_tokens,
        "usage counts the tokens the server reported"
    );

    // A budget of a third of that stops the run.
    policy.state.requests.store(0, Ordering::SeqCst);
    policy.state.prompt_tokens.store(0, Ordering::SeqCst);
    policy.state.completion_tokens.store(0, Ordering::SeqCst);
    let budget = (whole.1 / 3).to_string();
    let out = s.run("plans/sl_cai.sql", "budget", &["--max-tokens", &budget]);
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let last = stderr
        .lines()
        .rfind(|l| l.contains("caiflow: stopped:"))
        .unwrap();
    assert!(
        last.contains(&format!("token budget reached (--max-tokens {budget})"))
            && last.contains("run the same command again with a larger budget"),
        "{last}"
    );
    let spent = policy.state.prompt_tokens.load(Ordering::SeqCst)
        + policy.state.completion_tokens.load(Ordering::SeqCst);
    assert!(
        spent > 0 && spent <= whole.1 / 3,
        "spent {spent} of {budget}"
    );
    assert!(!committed(&s.store().join("budget"), "revisions"));
    let first = policy.state.requests.load(Ordering::SeqCst);
    assert!(first < whole_requests, "{first} of {whole_requests}");

    // The same command with a larger budget finishes, repeating nothing that was answered.
    let out = s.run(
        "plans/sl_cai.sql",
        "budget",
        &["--max-tokens", &(whole.1 * 2).to_string()],
    );
    assert!(out.status.success(), "{:?}", output_text(&out));
    let stats: serde_json::Value = reqwest::get(format!("http://{}/stats", policy.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let repeated = stats["repeated"].as_u64().unwrap();
    // Run "whole" sent every request once already, so repeats are counted against it:
    // this run's requests beyond the whole run's are the repeats.
    let total = policy.state.requests.load(Ordering::SeqCst);
    assert!(
        total <= whole_requests + 4,
        "{total} requests for a run of {whole_requests}: more repeats than the 4 in flight ({repeated} repeated in all)"
    );
    // Usage across the interrupted and the resumed session equals the uninterrupted run's.
    let inspect = s.inspect("budget");
    assert_eq!(run_usage(&inspect), whole, "{inspect}");
    assert!(inspect.contains("2 session(s)"), "{inspect}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answers_are_counted_skipped_by_export_and_retried() {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    policy.honor_max_tokens(true);
    let s = Setup::new(&policy, &judge, 8);
    // Revisions of at most 4 words: every one is cut off.
    let out = s.run("plans/sl_cai.sql", "cut", &["--set", "revise_max_tokens=4"]);
    let (_, stderr) = output_text(&out);
    assert!(out.status.success(), "{stderr}");
    let revise = stderr
        .lines()
        // The summary's line: stage rows requests journal retries errors truncated …
        .rfind(|l| l.trim_start().starts_with("revise ") && l.split_whitespace().count() == 10)
        .unwrap_or_else(|| panic!("{stderr}"));
    let truncated: u64 = revise.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert_eq!(truncated, 8, "{revise}");
    let run = s.store().join("cut");
    let out_dir = s.dir.path().join("sft");
    let (_, stderr) = caiflow_ok(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "trl-sft",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(stderr.contains("skipped 8 row(s): truncated"), "{stderr}");
    let kept = s.dir.path().join("sft-kept");
    let (_, stderr) = caiflow_ok(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "trl-sft",
        "--out",
        kept.to_str().unwrap(),
        "--keep-truncated",
    ]);
    assert!(!stderr.contains("truncated"), "{stderr}");

    // retry_truncated: the cut-off answers are asked again with more tokens.
    let sql = format!(
        "SELECT count(*) AS n, sum(CASE WHEN respond_lineage['finish_reason'] = 'length' THEN 1 ELSE 0 END) AS cut, \
         min(respond_lineage['max_tokens']) AS m \
         FROM respond('SELECT * FROM red_team_prompts(''{}'')', max_tokens => 3, retry_truncated => 64)",
        s.prompts.display()
    );
    policy.state.requests.store(0, Ordering::SeqCst);
    let (stdout, _) = caiflow_ok(&["sql", "--config", s.config.to_str().unwrap(), "-e", &sql]);
    assert_eq!(table_row(&stdout, "| 8 "), ["8", "0", "64"], "{stdout}");
    assert_eq!(
        policy.state.requests.load(Ordering::SeqCst),
        16,
        "8 asked twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_option_values_are_planning_errors() {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    let s = Setup::new(&policy, &judge, 2);
    // Options are checked before the input's columns: a prompts file stands for every input.
    let input = format!("'{}'", s.prompts.display());
    let cases = [
        (
            format!("respond({input}, temperature => -1)"),
            "temperature => -1",
            "[0, 2]",
        ),
        (
            format!("respond({input}, temperature => 2.5)"),
            "temperature => 2.5",
            "[0, 2]",
        ),
        (
            format!("respond({input}, max_tokens => 0)"),
            "max_tokens => 0",
            ">= 1",
        ),
        (
            format!("respond({input}, top_p => 0)"),
            "top_p => 0",
            "(0, 1]",
        ),
        (
            format!("respond({input}, top_p => 1.5)"),
            "top_p => 1.5",
            "(0, 1]",
        ),
        (
            format!("respond({input}, top_k => 0)"),
            "top_k => 0",
            ">= 1",
        ),
        (
            format!("respond({input}, max_tokens => 64, retry_truncated => 32)"),
            "retry_truncated => 32",
            "> max_tokens (64)",
        ),
        (
            format!("sample({input}, temperatures => '0.5,3')"),
            "3 is out of range",
            "[0, 2]",
        ),
        (
            format!("critique({input}, round => 0)"),
            "round => 0",
            ">= 1",
        ),
        (
            format!("revise({input}, rounds => 0)"),
            "rounds => 0",
            "1 to 16",
        ),
        (
            format!("judge({input}, attempts => 0)"),
            "attempts => 0",
            ">= 1",
        ),
        (
            format!("judge({input}, mode => 'principle', clamp => '0.5,0.5')"),
            "clamp => '0.5,0.5'",
            "low < high",
        ),
        (
            format!("blend({input}, 'data/helpful_sft.jsonl', ratio => 1.5)"),
            "ratio => 1.5",
            "[0, 1)",
        ),
    ];
    for (call, what, range) in cases {
        let out = caiflow_output(&[
            "sql",
            "--config",
            s.config.to_str().unwrap(),
            "-e",
            &format!("SELECT count(*) FROM {call}"),
        ]);
        let (stdout, stderr) = output_text(&out);
        assert!(!out.status.success(), "{call} was accepted:\n{stdout}");
        assert!(
            stderr.contains(what) && stderr.contains(range),
            "{call}: the error names neither the option and value nor the range:\n{stderr}"
        );
    }
    assert_eq!(policy.state.requests.load(Ordering::SeqCst), 0);
    // Limits in caiflow.toml are checked when it is read.
    let bad = s.dir.path().join("bad.toml");
    for (line, needle) in [
        ("budget = { max_tokens = 0 }", "budget"),
        (
            "price = { input_per_mtok = -1.0, output_per_mtok = 1.0 }",
            "price",
        ),
        ("max_error_rate = 2.0", "max_error_rate"),
    ] {
        std::fs::write(
            &bad,
            format!("[endpoints.policy]\nbase_url = 'http://127.0.0.1:9/v1'\n{line}\n"),
        )
        .unwrap();
        let out = caiflow_output(&[
            "run",
            "plans/sl_cai.sql",
            "--config",
            bad.to_str().unwrap(),
            "--dry-run",
        ]);
        let (_, stderr) = output_text(&out);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{line}: {stderr}"
        );
    }
    // A bad budget on the command line is refused before anything runs.
    let out = s.run("plans/sl_cai.sql", "x", &["--max-cost=-1"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).1.contains("max_cost"),
        "{:?}",
        output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_budgets_on_the_command_line_and_per_endpoint() {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    let s = Setup::new(&policy, &judge, 12);
    let out = s.run("plans/sl_cai.sql", "n", &["--max-requests", "7"]);
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("request budget reached (--max-requests 7)"),
        "{stderr}"
    );
    let first = policy.state.requests.load(Ordering::SeqCst);
    assert!(first <= 7, "{first}");

    // The same limit in caiflow.toml, on the endpoint: it counts every session of the run.
    let config = std::fs::read_to_string(&s.config).unwrap().replace(
        "max_concurrency = 4\nprice",
        "max_concurrency = 4\nbudget = { max_requests = 20 }\nprice",
    );
    std::fs::write(&s.config, config).unwrap();
    policy.state.requests.store(0, Ordering::SeqCst);
    let out = s.run("plans/sl_cai.sql", "n", &[]);
    let (_, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("request budget reached (endpoints.policy.budget.max_requests 20)"),
        "{stderr}"
    );
    let sent = policy.state.requests.load(Ordering::SeqCst);
    let (run_requests, _) = run_usage(&s.inspect("n"));
    assert!(
        run_requests <= 20 && first + sent == run_requests,
        "{run_requests} in the run, {first} then {sent}"
    );
}
