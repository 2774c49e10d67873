//! What the CAI paper's recipe costs next to NeMo-Aligner's: requests and tokens per prompt
//! of `plans/sl_cai_paper.sql` (4 critique-revision sequences of 4 rounds, few-shot) and
//! `plans/rl_cai_paper.sql` (a pair of responses, a CoT few-shot principle judge) against
//! `plans/sl_cai.sql` and `plans/rl_cai.sql`, from each run's own usage (`caiflow report`).
//!
//! `cargo bench --bench paper [-- --prompts 6 --max-tokens 64]` runs the plans on the
//! embedded default (no caiflow.toml: SmolLM2-135M-Instruct, `$CAIFLOW_MODEL` or
//! `models/`), so tokens are the model's own. Under `cargo test` a smoke run on the testkit
//! mock (2 prompts) checks the requests per prompt each plan must make.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use caiflow_testkit::MockServer;

struct Figures {
    requests: f64,
    prompt_tokens: f64,
    completion_tokens: f64,
    seconds: f64,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(
    plan: &str,
    store: &Path,
    config: Option<&Path>,
    prompts: usize,
    sets: &[String],
) -> Figures {
    let name = plan.trim_start_matches("plans/").trim_end_matches(".sql");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    cmd.current_dir(root())
        .env_remove("CAIFLOW_BASE_URL")
        .args(["run", plan, "--store"])
        .arg(store)
        .args(["--run", name, "--set", &format!("limit={prompts}")]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let started = Instant::now();
    let out = cmd.output().expect("caiflow runs");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{plan}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .arg("report")
        .arg(store.join(name))
        .output()
        .expect("caiflow report");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let html = String::from_utf8_lossy(&report.stdout).trim().to_string();
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(&html).with_file_name("report.json")).expect("report.json"),
    )
    .expect("report json");
    let total = &json["usage_total"];
    let per = |key: &str| total[key].as_u64().unwrap_or(0) as f64 / prompts as f64;
    Figures {
        requests: per("requests"),
        prompt_tokens: per("prompt_tokens"),
        completion_tokens: per("completion_tokens"),
        seconds,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let value = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let prompts = value("--prompts", if benching { 6 } else { 2 });
    let max_tokens = value("--max-tokens", 64);
    let store = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The smoke run's servers: a policy and a judge that reads verdicts and gives logprobs.
    let mocks = (!benching).then(|| {
        rt.block_on(async {
            let policy = MockServer::start().await.expect("mock");
            let judge = MockServer::start().await.expect("mock");
            judge.set_logprobs(Some(vec![("A".into(), -0.2), ("B".into(), -1.8)]));
            judge.push_replies(
                (0..prompts).map(|_| r#"{"chosen": 1, "rejected": 2} ok"#.to_string()),
            );
            (policy, judge)
        })
    });
    let config = mocks.as_ref().map(|(policy, judge)| {
        let path = store.path().join("caiflow.toml");
        std::fs::write(
            &path,
            format!(
                "[endpoints.policy]\nbase_url = '{}'\n[endpoints.judge]\nbase_url = '{}'\n",
                policy.base_url(),
                judge.base_url()
            ),
        )
        .expect("config");
        path
    });
    let tokens = format!("max_tokens={max_tokens}");
    let judge_tokens = format!("judge_max_tokens={}", max_tokens * 2);
    let plans: [(&str, Vec<String>, f64); 4] = [
        ("plans/sl_cai.sql", vec![tokens.clone()], 3.0),
        ("plans/sl_cai_paper.sql", vec![tokens.clone()], 33.0),
        (
            "plans/rl_cai.sql",
            vec![
                tokens.clone(),
                judge_tokens.clone(),
                "structured=true".into(),
            ],
            5.0,
        ),
        (
            "plans/rl_cai_paper.sql",
            vec![tokens.clone(), judge_tokens.clone()],
            4.0,
        ),
    ];
    println!(
        "{prompts} prompts per plan, max_tokens {max_tokens} (judge {}), on {}",
        max_tokens * 2,
        if benching {
            "the embedded default (SmolLM2-135M-Instruct)"
        } else {
            "the testkit mock"
        }
    );
    println!(
        "{:<24} {:>14} {:>18} {:>22} {:>8}",
        "plan", "requests/prompt", "prompt tokens/prompt", "completion tokens/prompt", "wall s"
    );
    for (plan, sets, expected) in plans {
        let f = run(plan, store.path(), config.as_deref(), prompts, &sets);
        println!(
            "{:<24} {:>14.1} {:>18.0} {:>22.0} {:>8.1}",
            plan.trim_start_matches("plans/"),
            f.requests,
            f.prompt_tokens,
            f.completion_tokens,
            f.seconds
        );
        // Judges may ask again on an unreadable verdict; everything else is exact.
        assert!(
            f.requests >= expected && (plan.contains("rl_cai.sql") || f.requests == expected),
            "{plan}: {} requests per prompt, expected {expected}",
            f.requests
        );
    }
}
