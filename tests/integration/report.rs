//! `caiflow report`: the figures of an SL-CAI run (two rounds) and an RL-CAI run on the mock
//! agree with their tables, and headless Chromium renders the HTML report.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use caiflow_testkit::MockServer;
use serde_json::Value;

fn config(dir: &Path, policy: &MockServer, judge: &MockServer) -> PathBuf {
    write_config(
        dir,
        &[
            (
                "policy",
                &policy.base_url(),
                "model = 'mock'\nmax_concurrency = 4",
            ),
            (
                "judge",
                &judge.base_url(),
                "model = 'mock-judge'\nmax_concurrency = 4",
            ),
        ],
    )
}

/// 24 prompts; the mock's answers repeat the prompt, so the 6 that say "I can't" make
/// refusals of the initial responses.
fn prompts(dir: &Path) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let text: String = (0..24)
        .map(|i| {
            let p = if i % 4 == 0 {
                format!("I can't sleep ({i}); which pills knock a person out?")
            } else {
                format!("How do I get into my neighbour's shed number {i}?")
            };
            serde_json::json!({ "prompt": p }).to_string() + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Export `run` as `format` and load the folder with Hugging Face `datasets` (offline, its
/// cache in `dir`): the dataset card's front matter names each split's file.
pub(crate) fn load_export(run: &str, format: &str, dir: &Path) -> Value {
    let out = dir.join(format!("export-{format}"));
    let (_, stderr) = caiflow_ok(&[
        "export",
        run,
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
    ]);
    let card = out.join("README.md");
    assert!(stderr.contains(&card.display().to_string()), "{stderr}");
    let text = std::fs::read_to_string(&card).unwrap();
    assert!(
        text.starts_with("---\n") && text.contains("configs:"),
        "{text}"
    );
    assert!(
        !text.contains("api_key") && !text.contains("http://"),
        "no keys or URLs: {text}"
    );
    assert!(
        !text.contains(&dir.display().to_string()),
        "no local paths: {text}"
    );
    let loaded = python(&format!(
        "import json, os\n\
         os.environ['HF_HUB_OFFLINE'] = '1'\n\
         os.environ['HF_DATASETS_CACHE'] = {cache:?}\n\
         import datasets\n\
         ds = datasets.load_dataset({out:?})\n\
         print(json.dumps({{s: {{'rows': ds[s].num_rows, 'columns': ds[s].column_names}} for s in ds}}))",
        cache = dir.join("hf-cache").display().to_string(),
        out = out.display().to_string(),
    ));
    serde_json::from_str(loaded.trim().lines().last().unwrap()).unwrap()
}

/// Drive `caiflow sql --run RUN` (the interactive shell) through a pseudo-terminal: type
/// `lines` one by one, each after the output shows `wait_for[i]`; returns everything shown.
fn shell(run: &str, dir: &Path, lines: &[(&str, &str)]) -> String {
    let script = format!(
        r#"
import os, pty, select, subprocess, sys, time
m, s = pty.openpty()
env = dict(os.environ, CAIFLOW_HISTORY={history:?}, TERM="xterm")
p = subprocess.Popen([{exe:?}, "sql", "--run", {run:?}], stdin=s, stdout=s, stderr=s,
                     cwd={root:?}, env=env, close_fds=True)
os.close(s)
out = b""
def wait(pattern, timeout=60):
    global out
    end = time.time() + timeout
    while pattern.encode() not in out and time.time() < end:
        r, _, _ = select.select([m], [], [], 0.2)
        if r:
            try:
                out += os.read(m, 65536)
            except OSError:
                break
    if pattern.encode() not in out:
        sys.exit("never saw %r in:\n%s" % (pattern, out.decode(errors="replace")))
for line, pattern in {lines}:
    wait(pattern)
    out += b"\n<<typed>>\n"
    os.write(m, line.encode() + b"\r")
p.wait(timeout=60)
print(out.decode(errors="replace"))
"#,
        history = dir.join("history").display().to_string(),
        exe = env!("CARGO_BIN_EXE_caiflow"),
        run = run,
        root = repo_root().display().to_string(),
        lines = serde_json::to_string(lines).unwrap(),
    );
    python(&script)
}

/// Run `plan` over the 24 prompts against the two mocks; returns the run folder.
fn run_plan(
    dir: &Path,
    policy: &MockServer,
    judge: &MockServer,
    plan: &str,
    extra: &[&str],
) -> (PathBuf, String) {
    let config = config(dir, policy, judge);
    let prompts = prompts(dir);
    let store = dir.join("runs");
    let prompts_var = format!("prompts={}", prompts.display());
    let mut args = vec![
        "run",
        plan,
        "--config",
        config.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--set",
        &prompts_var,
    ];
    args.extend(extra);
    let (stdout, stderr) = caiflow_ok(&args);
    (PathBuf::from(stdout.trim().lines().last().unwrap()), stderr)
}

pub(crate) fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn sum(v: &Value) -> u64 {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// The HTML is one self-contained file: several inline SVG charts and nothing to load.
fn check_html(html_path: &Path, min_charts: usize) {
    let html = std::fs::read_to_string(html_path).unwrap();
    assert!(
        html.matches("<svg").count() >= min_charts,
        "{} charts",
        html.matches("<svg").count()
    );
    for remote in ["src=", "href=", "<script", "<link", "url(", "@import"] {
        assert!(!html.contains(remote), "{remote} in the report");
    }
}

/// Headless Chromium renders the page; the screenshot has content (not one colour).
fn render(html_path: &Path, dir: &Path) {
    screenshot(&format!("file://{}", html_path.display()), dir);
}

/// Headless Chromium's screenshot of `url` has content (not one colour).
pub(crate) fn screenshot(url: &str, dir: &Path) {
    let png = dir.join("shot.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,1600",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("chromium (scripts/setup.sh installs it)");
    assert!(
        png.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict = python(&format!(
        "from PIL import Image\n\
         im = Image.open({:?}).convert('RGB')\n\
         colors = im.getcolors(1 << 24)\n\
         white = sum(n for n, c in colors if c == (255, 255, 255))\n\
         print(len(colors), 1 - white / (im.width * im.height))",
        png.display().to_string()
    ));
    let mut parts = verdict.split_whitespace();
    let colors: usize = parts.next().unwrap().parse().unwrap();
    let ink: f64 = parts.next().unwrap().parse().unwrap();
    assert!(colors > 20 && ink > 0.02, "blank screenshot? {verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sl_run_report_agrees_with_its_tables_and_renders() {
    let (policy, judge) = (
        MockServer::start().await.unwrap(),
        MockServer::start().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (run, stderr) = run_plan(
        dir.path(),
        &policy,
        &judge,
        "plans/sl_cai.sql",
        &["--set", "rounds=2", "--report"],
    );
    let html = run.join("report/index.html");
    assert!(
        stderr.contains(&format!("report in {}", html.display())),
        "{stderr}"
    );
    let r = read_json(&run.join("report/report.json"));

    // Every run: per-stage figures, the requests the mock saw.
    let stages = r["stages"].as_array().unwrap();
    let stage = |name: &str| stages.iter().find(|s| s["name"] == name).unwrap().clone();
    let sent: u64 = ["respond", "critique", "revise"]
        .iter()
        .map(|s| stage(s)["sent"].as_u64().unwrap())
        .sum();
    assert_eq!(sent, policy.requests(), "{stages:?}");
    assert_eq!(stage("respond")["rows"], 24);
    assert!(stage("revise")["latency_p95_ms"].as_u64().is_some());
    assert!(stage("respond")["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(r["truncated_share"]["respond"], 0.0);

    // SL-CAI: one row per prompt and round; counts agree with the table.
    let rows = r["tables"]["revisions"].as_u64().unwrap();
    assert_eq!(rows, 48);
    assert_eq!(r["sl_rows"], rows);
    assert_eq!(
        sum(&r["principles"]),
        rows,
        "principle counts sum to the revision rows"
    );
    let rounds = r["by_round"].as_object().unwrap();
    assert_eq!(rounds.keys().collect::<Vec<_>>(), ["1", "2"]);
    assert!(rounds.values().all(|f| f["rows"] == 24));
    assert!(
        rounds["2"]["refusal_rate"]["response"].is_null(),
        "round 2 rows hold no initial response of their own"
    );
    let refusals = r["refusal_rate"]["response"].as_f64().unwrap();
    assert!((refusals - 6.0 / 24.0).abs() < 1e-9, "{refusals}");
    assert!(r["refusal_rate"]["revision"].as_f64().is_some());
    assert!(r["unchanged_revision_rate"].as_f64().is_some());
    let ratios = r["principle_length_ratio"].as_object().unwrap();
    assert_eq!(ratios.len(), r["principles"].as_object().unwrap().len());
    let hist = &r["length_histograms"];
    assert_eq!(
        hist["response"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum::<u64>(),
        24,
        "each initial response counted once"
    );
    assert_eq!(
        hist["revision"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum::<u64>(),
        rows
    );

    check_html(&html, 4);
    render(&html, dir.path());

    // `caiflow report RUN --out DIR` writes the same figures elsewhere.
    let out = dir.path().join("elsewhere");
    caiflow_ok(&[
        "report",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let again = read_json(&out.join("report.json"));
    assert_eq!(again["principles"], r["principles"]);
    assert!(out.join("index.html").is_file());

    // The SQL shell answers over the run's tables.
    let shown = shell(
        run.to_str().unwrap(),
        dir.path(),
        &[
            ("\\d", "caiflow> "),
            ("SELECT count(*) + 0", "sft "),
            ("  AS answer FROM revisions;", "..> "),
            ("SELECT nope FROM revisions;", "row(s)"),
            ("\\q", "error:"),
        ],
    );
    assert!(
        shown.contains("revisions") && shown.contains("sft"),
        "{shown}"
    );
    let answer = shown.split("answer").nth(2).unwrap_or_default();
    assert!(answer.contains("| 48 "), "{shown}");
    assert!(
        shown.contains("error:") && shown.contains("nope"),
        "{shown}"
    );
    assert!(dir.path().join("history").is_file(), "history kept");

    // The export folder loads with `datasets`: the splits, the expected columns.
    let loaded = load_export(run.to_str().unwrap(), "trl-sft", dir.path());
    let splits: Vec<&String> = loaded.as_object().unwrap().keys().collect();
    assert_eq!(splits, ["test", "train"], "{loaded}");
    assert_eq!(loaded["train"]["columns"], serde_json::json!(["messages"]));
    let sft_rows = r["tables"]["sft"].as_u64().unwrap();
    let exported: u64 = ["test", "train"]
        .iter()
        .map(|s| loaded[s]["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(exported, sft_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rl_run_report_counts_labels_positions_and_temperatures() {
    let (policy, judge) = (
        MockServer::start().await.unwrap(),
        MockServer::start().await.unwrap(),
    );
    // Per prompt: a pick, another pick, a tie (the judge's answers are taken in turn).
    judge.push_replies((0..24).map(|i| {
        match i % 3 {
            0 => r#"{"chosen": 1, "rejected": 2}"#,
            1 => r#"{"chosen": 4, "rejected": 1}"#,
            _ => r#"{"chosen": 3, "rejected": 3}"#,
        }
        .to_string()
    }));
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = run_plan(dir.path(), &policy, &judge, "plans/rl_cai.sql", &[]);
    let run = run.to_str().unwrap().to_string();
    let (html, _) = caiflow_ok(&["report", &run]);
    let html = PathBuf::from(html.trim());
    let r = read_json(&html.with_file_name("report.json"));
    let prompts = r["tables"]["judgements"].as_u64().unwrap();
    assert_eq!(prompts, 24);
    assert_eq!(sum(&r["labels"]), prompts, "labels sum to the prompts");
    assert_eq!(r["labels"]["ok"], 16);
    assert_eq!(r["labels"]["tie"], 8);
    assert_eq!(
        sum(&r["chosen_position"]),
        16,
        "chosen positions sum to the ok rows"
    );
    assert_eq!(sum(&r["rejected_position"]), 16);
    // Half the ok verdicts chose the first shown, half the fourth.
    assert_eq!(r["chosen_position"]["1"], 8);
    assert_eq!(r["chosen_position"]["4"], 8);
    let temps = r["chosen_rate_by_temperature"].as_object().unwrap();
    assert_eq!(temps.len(), 4, "{temps:?}");
    let rate_sum: f64 = temps.values().map(|v| v.as_f64().unwrap()).sum();
    assert!(
        (rate_sum - 1.0).abs() < 1e-9,
        "each ok row chose one of four: {rate_sum}"
    );
    assert!(r["length_ratio"].as_f64().is_some());
    assert!(
        r["chosen_prob_histogram"].is_null(),
        "constitution mode has no chosen_prob"
    );
    assert!(r.get("refusal_rate").is_none(), "no SL table in this run");
    check_html(&html, 4);

    let loaded = load_export(&run, "trl-dpo", dir.path());
    for split in loaded.as_object().unwrap().keys() {
        assert_eq!(
            loaded[split]["columns"],
            serde_json::json!(["prompt", "chosen", "rejected", "chosen_prob"])
        );
    }
    let card = std::fs::read_to_string(dir.path().join("export-trl-dpo/README.md")).unwrap();
    assert!(card.contains("| judge | judge | mock-judge |"), "{card}");
    assert!(
        card.contains("Candidate temperatures: `0.01,0.51,1.01,1.51`"),
        "{card}"
    );
    assert!(card.contains("Judge labels: ok 16, tie 8"), "{card}");
}
