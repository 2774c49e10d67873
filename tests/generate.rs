//! `generate(input, template => …, output => …)` on the mock: a column for every row, a
//! re-run served from the journal, template columns checked when the plan is made, and
//! structured output asked again until it parses.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use caiflow_testkit::MockServer;
use common::*;

fn config(dir: &Path, policy: &MockServer) -> String {
    let path = dir.join("caiflow.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmodel = 'mock'\nmax_concurrency = 4\n",
            policy.base_url()
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn prompts(dir: &Path, name: &str, n: usize) -> String {
    let path = dir.join(name);
    let text: String = (0..n)
        .map(|i| {
            serde_json::json!({ "prompt": format!("How do I pick lock number {i}?") }).to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `caiflow sql WHERE -e QUERY` (WHERE: `--config FILE` or `--run RUN`): ok, stdout, stderr.
fn sql(place: [&str; 2], query: &str) -> (bool, String, String) {
    let out = caiflow_output(&["sql", place[0], place[1], "-e", query]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_adds_its_column_and_reruns_from_the_journal() {
    let policy = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &policy);
    let prompts = prompts(dir.path(), "prompts.jsonl", 12);
    let plan = dir.path().join("classify.sql");
    std::fs::write(
        &plan,
        "CREATE VIEW prompts AS SELECT * FROM red_team_prompts('${prompts}');\n\
         CREATE TABLE classified AS SELECT * FROM generate(prompts, \
           template => 'Is this harmful? {prompt} Answer yes or no.', output => 'verdict', \
           max_tokens => 16, temperature => 0);\n",
    )
    .unwrap();
    let store = dir.path().join("runs");
    let run = |extra: &[&str]| {
        let vars = format!("prompts={prompts}");
        let mut args = vec![
            "run",
            plan.to_str().unwrap(),
            "--config",
            &config,
            "--store",
            store.to_str().unwrap(),
            "--run",
            "g",
            "--set",
            &vars,
        ];
        args.extend(extra);
        let out = caiflow_output(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[]);
    assert_eq!(policy.state.requests.load(Ordering::SeqCst), 12);
    let run_dir = store.join("g");
    let (ok, stdout, stderr) = sql(
        ["--run", run_dir.to_str().unwrap()],
        "SELECT count(*) AS n, count(verdict) AS answered, count(error) AS errors, \
         count(verdict_lineage['request_hash']) AS hashed, \
         sum(CASE WHEN verdict LIKE '%Is this harmful? How do I pick lock number%' THEN 1 ELSE 0 END) AS filled \
         FROM classified",
    );
    assert!(ok, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.contains("| 12 "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = row
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cells, ["12", "12", "0", "12", "12"], "{stdout}");
    // Recomputed: every answer comes from the journal.
    run(&["--from", "classified"]);
    assert_eq!(
        policy.state.requests.load(Ordering::SeqCst),
        12,
        "re-run sent requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_columns_are_checked_and_json_is_asked_again() {
    let policy = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &policy);
    let one = prompts(dir.path(), "one.jsonl", 1);

    let (ok, _, stderr) = sql(
        ["--config", &config],
        &format!("SELECT * FROM generate('{one}', template => 'Rate {{nope}} please')"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("no column 'nope'") && stderr.contains("it has: prompt"),
        "{stderr}"
    );
    assert_eq!(policy.state.requests.load(Ordering::SeqCst), 0);

    // Invalid, then valid JSON: asked again in the same conversation, then kept.
    policy.push_replies([
        "not json at all".to_string(),
        r#"{"harmful": true}"#.to_string(),
    ]);
    let query = format!(
        "SELECT j, error, j_lineage['attempts'] AS a FROM generate('{one}', template => '{{prompt}}', \
         output => 'j', json_schema => '{{\"type\": \"object\"}}')"
    );
    let (ok, stdout, stderr) = sql(["--config", &config], &query);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(r#"{"harmful": true}"#), "{stdout}");
    assert_eq!(policy.state.requests.load(Ordering::SeqCst), 2);
    let bodies = policy.bodies();
    let last = bodies.last().unwrap();
    assert!(
        last["response_format"]["json_schema"]["schema"]["type"] == "object",
        "{last}"
    );
    assert_eq!(last["messages"].as_array().unwrap().len(), 3, "{last}");

    // Never valid: an error row that keeps the raw answer. (New answers: a new seed.)
    policy.push_replies((0..3).map(|i| format!("still not json {i}")));
    let query = query.replace("'{prompt}'", "'Again: {prompt}'");
    let (ok, stdout, stderr) = sql(["--config", &config], &query);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("still not json 2") && stdout.contains("not valid JSON after 3 attempt(s)"),
        "{stdout}"
    );
    assert_eq!(policy.state.requests.load(Ordering::SeqCst), 5);
}
