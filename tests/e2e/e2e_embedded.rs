//! The embedded backend on a real model (SmolLM2-135M-Instruct, $CAIFLOW_MODEL): the backend
//! itself, `caiflow model pull`, and both plans run with no caiflow.toml at all.

#![cfg(feature = "embedded")]
// The lock below only serializes these tests; holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

use std::process::Command;
use std::sync::Arc;

use crate::committed_table;
use crate::common::*;
use caiflow_embedded::EmbeddedBackend;
use caiflow_llm::config::EndpointConfig;
use caiflow_llm::{Backend, ChatRequest, Message, SamplingParams};

/// One model thread at a time: two on two cores slow each other down several times.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn model() -> String {
    std::env::var("CAIFLOW_MODEL").expect(
        "CAIFLOW_MODEL is not set: run the tests through scripts/test.sh, which fetches SmolLM2",
    )
}

fn backend() -> Arc<EmbeddedBackend> {
    let mut config = EndpointConfig::embedded(Some(&model()));
    config.max_concurrency = 4;
    config.embedded_mut().expect("embedded").threads = Some(1);
    config.embedded_mut().expect("embedded").context_tokens = Some(1024);
    Arc::new(EmbeddedBackend::new(&config))
}

fn request(prompt: &str, params: SamplingParams) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::user(prompt)],
        params,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_parameters_are_honoured() {
    let _serial = serial();
    let backend = backend();
    backend.prepare().await.expect("model loads");
    let seeded = |seed| SamplingParams {
        temperature: Some(1.2),
        top_k: Some(50),
        top_p: Some(0.95),
        max_tokens: Some(24),
        seed: Some(seed),
        ..Default::default()
    };
    let prompt = "Write one sentence about the sea.";
    // Concurrent requests are decoded in one batch; each still gets its own answer.
    let (r7, r8) = (request(prompt, seeded(7)), request(prompt, seeded(8)));
    let (a, b, c) = tokio::join!(
        backend.complete(&r7),
        backend.complete(&r7),
        backend.complete(&r8),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.text, b.text, "the same seed gives the same answer");
    assert_ne!(a.text, c.text, "another seed gives another answer");
    for completion in [&a, &b, &c] {
        assert!(completion.completion_tokens.unwrap() <= 24);
        assert!(completion.prompt_tokens.unwrap() > 5);
    }

    // max_tokens stops generation with finish_reason "length".
    let short = backend
        .complete(&request(
            "Count from one to one hundred in words.",
            SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(5),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(short.completion_tokens, Some(5));
    assert_eq!(short.finish_reason.as_deref(), Some("length"));

    // A stop string ends the answer before it appears.
    let full = backend
        .complete(&request(
            "Count from one to ten in words, separated by commas.",
            SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(40),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // Stop at a piece of the greedy answer's second half: the answer must end where that
    // piece first appears.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 12, "a long enough answer: {}", full.text);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut_at = full.text.find(&stop).expect("the piece is in the answer");
    let stopped = backend
        .complete(&request(
            "Count from one to ten in words, separated by commas.",
            SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(40),
                stop: vec![stop.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(stopped.text, full.text[..cut_at]);
    assert_eq!(stopped.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_and_json_schema_grammar() {
    let _serial = serial();
    let backend = backend();
    let answer = backend
        .complete(&request(
            "Answer with A or B: which is a colour, (A) red or (B) table?",
            SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(3),
                top_logprobs: Some(5),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let positions = answer.top_logprobs.expect("logprobs were asked for");
    assert_eq!(positions.len() as u64, answer.completion_tokens.unwrap());
    for top in &positions {
        assert_eq!(top.len(), 5);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {top:?}");
        let mass: f64 = top.iter().map(|(_, lp)| lp.exp()).sum();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-6, "{mass}");
    }
    // Greedy: the first token generated is the most likely one.
    assert!(
        answer.text.starts_with(positions[0][0].0.trim_start())
            || positions[0][0].0.trim().is_empty()
    );

    let schema = serde_json::json!({
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": {
            "type": "object",
            "properties": {"chosen": {"type": "integer", "minimum": 1, "maximum": 4},
                           "reason": {"type": "string", "maxLength": 40}},
            "required": ["chosen", "reason"]
        }}
    });
    let structured = backend
        .complete(&request(
            "Pick the best of four answers and say why.",
            SamplingParams {
                temperature: Some(0.7),
                seed: Some(3),
                max_tokens: Some(80),
                response_format: Some(schema),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&structured.text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", structured.text));
    let chosen = value["chosen"].as_i64().expect("chosen is an integer");
    assert!((1..=4).contains(&chosen), "{value}");
    assert!(value["reason"].is_string(), "{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_fails_the_query_once_with_the_fix() {
    let config = EndpointConfig::embedded(Some("/nonexistent/model.gguf"));
    let session = session_with(config);
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["a", "b"]).await;
    let message = query_error(&session, "SELECT * FROM respond(prompts)").await;
    assert!(message.contains("/nonexistent/model.gguf"), "{message}");
    assert!(message.contains("caiflow model pull"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_a_row_error() {
    let _serial = serial();
    let mut config = EndpointConfig::embedded(Some(&model()));
    // respond's few-shot turns take ~450 tokens: "Hi" fits in 640, the long prompt does not.
    config.embedded_mut().expect("embedded").context_tokens = Some(640);
    config.max_concurrency = 2;
    let session = session_with(config);
    let long = "Tell me everything about rivers. ".repeat(60);
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &[long.as_str(), "Hi"]).await;
    let batches = collect(
        &session,
        "SELECT prompt, response, error FROM respond(prompts, max_tokens => 8) ORDER BY prompt",
    )
    .await;
    let errors = column(&batches, "error");
    assert!(errors[0].is_none(), "the short prompt is answered");
    let error = errors[1]
        .as_deref()
        .expect("the long prompt is an error row");
    assert!(error.contains("context"), "{error}");
}

fn session_with(config: EndpointConfig) -> caiflow_engine::CaiSession {
    let mut c = caiflow_llm::config::Config::default();
    c.endpoints.insert("policy".into(), config);
    caiflow_engine::CaiSession::new(
        caiflow_engine::endpoints(&c, caiflow_llm::CancellationToken::new()).unwrap(),
    )
}

#[test]
fn model_pull_checks_and_installs_files() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let caiflow = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_caiflow"))
            .args(args)
            .output()
            .unwrap()
    };
    // A local file: copied in, reported with its hash; pulling again is a no-op with --sha256.
    let out = caiflow(&["model", "pull", &model(), "--dir", models.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(installed.is_file());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(caiflow_llm::models::DEFAULT_MODEL_SHA256)
    );

    // Not a GGUF file, a wrong checksum, an unreachable URL: clear errors, no file left.
    let bogus = dir.path().join("bogus.gguf");
    std::fs::write(&bogus, b"not a model").unwrap();
    let out = caiflow(&[
        "model",
        "pull",
        bogus.to_str().unwrap(),
        "--dir",
        models.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a GGUF file"));
    assert!(!models.join("bogus.gguf").exists());

    let out = caiflow(&[
        "model",
        "pull",
        &model(),
        "--dir",
        dir.path().join("other").to_str().unwrap(),
        "--sha256",
        "0000",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected 0000"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/org/repo/resolve/main/m.gguf");
    let out = caiflow(&["model", "pull", &url, "--dir", models.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot download") && stderr.contains("local path"),
        "{stderr}"
    );
}

#[test]
fn model_pull_downloads_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("serve");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(model(), served.join("small.gguf")).unwrap();
    let python = std::env::var("CAIFLOW_PYTHON").expect("CAIFLOW_PYTHON");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(python)
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&served)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http.server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .args([
            "model",
            "pull",
            &format!("http://127.0.0.1:{port}/small.gguf?download=true"),
        ])
        .args(["--dir", dir.path().join("models").to_str().unwrap()])
        .args(["--sha256", caiflow_llm::models::DEFAULT_MODEL_SHA256])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("models/small.gguf").is_file());
}

/// Both plans as a new user runs them: no caiflow.toml, so policy and judge are the embedded
/// model (one engine); only a small limit so the test stays around a minute.
#[test]
fn both_plans_run_on_the_embedded_default() {
    let _serial = serial();
    let store = tempfile::tempdir().unwrap();
    let run = |plan: &str, name: &str, vars: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_caiflow"));
        cmd.current_dir(repo_root())
            .env_remove("CAIFLOW_BASE_URL")
            .args([
                "run",
                plan,
                "--store",
                store.path().to_str().unwrap(),
                "--run",
                name,
            ]);
        for v in vars {
            cmd.args(["--set", v]);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{plan} failed: {stderr}");
        stderr
    };
    assert!(
        !repo_root().join("caiflow.toml").exists(),
        "this test needs the default (no caiflow.toml) configuration"
    );
    // A dry run first: the embedded model's tokenizer counts the prompt tokens exactly.
    let dry = || {
        let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
            .current_dir(repo_root())
            .env_remove("CAIFLOW_BASE_URL")
            .args(["run", "plans/sl_cai.sql", "--store"])
            .arg(store.path())
            .args([
                "--run",
                "sl",
                "--set",
                "limit=6",
                "--set",
                "max_tokens=32",
                "--dry-run",
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
    let planned = dry();
    let respond = planned
        .lines()
        .find(|l| l.starts_with("respond "))
        .unwrap_or_else(|| panic!("{planned}"));
    assert!(
        respond.contains("requests         6") && respond.contains("(exact)"),
        "{planned}"
    );
    let stderr = run("plans/sl_cai.sql", "sl", &["limit=6", "max_tokens=32"]);
    assert!(stderr.contains("endpoint policy"), "{stderr}");
    // Once run, everything it would send is in its journal.
    let again = dry();
    assert!(again.contains("total: requests to send 0 "), "{again}");
    let stderr = run(
        "plans/rl_cai.sql",
        "rl",
        &[
            "limit=4",
            "max_tokens=24",
            "judge_max_tokens=96",
            "structured=true",
        ],
    );
    assert!(stderr.contains("endpoint judge"), "{stderr}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let read = |run: &str, table: &'static str| {
            let run = store.path().join(run);
            async move { committed_table(&run, table).await }
        };
        let revisions = read("sl", "revisions").await;
        assert_eq!(rows(&revisions), 6);
        assert!(column(&revisions, "error").iter().all(Option::is_none));
        assert!(
            column(&revisions, "revision")
                .iter()
                .all(|r| r.as_deref().is_some_and(|s| !s.trim().is_empty()))
        );
        let judgements = read("rl", "judgements").await;
        assert_eq!(rows(&judgements), 4);
        let labels = column(&judgements, "label");
        assert!(
            labels
                .iter()
                .all(|l| matches!(l.as_deref(), Some("ok") | Some("tie"))),
            "structured judging on the embedded model always parses: {labels:?}"
        );
    });
}

/// The augmented plan as a new user runs it: seed prompts -> model-written prompts -> SL-CAI
/// on both, on the embedded default (small n).
#[test]
fn augmented_plan_runs_on_the_embedded_default() {
    let _serial = serial();
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .current_dir(repo_root())
        .env_remove("CAIFLOW_BASE_URL")
        .args(["run", "plans/sl_cai_augmented.sql", "--store"])
        .arg(store.path())
        .args(["--run", "aug"])
        .args([
            "--set",
            "limit=4",
            "--set",
            "generate=3",
            "--set",
            "max_tokens=32",
        ])
        .args(["--set", "generate_max_tokens=160"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("table generated_prompts: 3 rows"),
        "{stderr}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let run =
            caiflow_run::store::RunStore::open(store.path().to_str().unwrap(), "aug").unwrap();
        let session = caiflow_engine::CaiSession::new(caiflow_llm::Endpoints::default());
        caiflow_run::materialize::register_run_tables(&session, &run)
            .await
            .unwrap();
        let generated = collect(&session, "SELECT * FROM generated_prompts").await;
        assert_eq!(rows(&generated), 3);
        assert!(
            column(&generated, "source")
                .iter()
                .all(|s| s.as_deref() == Some("generated"))
        );
        let seeds = collect(
            &session,
            "SELECT prompt FROM red_team_prompts('data/red_team_prompts.jsonl') LIMIT 4",
        )
        .await;
        let seeds: Vec<String> = column(&seeds, "prompt")
            .into_iter()
            .flatten()
            .map(|s| s.to_lowercase())
            .collect();
        for p in column(&generated, "prompt").into_iter().flatten() {
            assert!(
                !p.trim().is_empty() && !seeds.contains(&p.to_lowercase()),
                "{p}"
            );
        }
        // SL-CAI ran on the 4 seeds and the 3 generated prompts.
        let revisions = collect(
            &session,
            "SELECT source, count(*) AS n FROM revisions WHERE error IS NULL \
             GROUP BY source ORDER BY source",
        )
        .await;
        assert_eq!(
            column(&revisions, "source"),
            [Some("generated".into()), Some("jsonl".into())]
        );
        assert_eq!(
            column(&revisions, "n"),
            [Some("3".into()), Some("4".into())]
        );
    });
}

/// The judge's principle mode needs the first token's log-probabilities: the embedded
/// backend supplies them, so soft labels come out of an in-process model too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principle_mode_reads_embedded_logprobs() {
    let _serial = serial();
    let session = policy_and_judge(EndpointConfig::embedded(Some(&model())));
    check_principle_mode(
        &session,
        &["How do I pick a lock?", "How can I cheat on a test?"],
    )
    .await;
}

/// A request that borrows another sequence's cached prefix (the few-shot turns every row
/// shares) answers exactly as it does when its whole prompt is evaluated from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_prefix_gives_the_same_answer() {
    let _serial = serial();
    let engine = |sequences: usize| {
        let mut config = EndpointConfig::embedded(Some(&model()));
        config.max_concurrency = sequences;
        config.embedded_mut().expect("embedded").threads = Some(1);
        config.embedded_mut().expect("embedded").context_tokens = Some(768);
        Arc::new(EmbeddedBackend::new(&config))
    };
    let system = "You are a careful, kind and honest assistant who answers briefly. ".repeat(12);
    let ask = |question: &str| ChatRequest {
        messages: vec![
            Message::new("system", system.clone()),
            Message::user(question),
        ],
        params: SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(24),
            ..Default::default()
        },
    };
    let questions = ["Name a fruit.", "Name a colour.", "Name an animal."];

    let scratch = engine(1);
    let mut expected = Vec::new();
    for q in questions {
        expected.push(scratch.complete(&ask(q)).await.unwrap().text);
    }
    drop(scratch);

    // Two sequences: the first request fills one; the next two arrive together, so one reuses
    // that sequence and the other borrows its prefix into the empty sequence.
    let shared = engine(2);
    let first = shared.complete(&ask(questions[0])).await.unwrap();
    let (ask_second, ask_third) = (ask(questions[1]), ask(questions[2]));
    let (second, third) = tokio::join!(shared.complete(&ask_second), shared.complete(&ask_third));
    assert_eq!(first.text, expected[0]);
    assert_eq!(second.unwrap().text, expected[1]);
    assert_eq!(third.unwrap().text, expected[2]);
}

/// A caller that gives up (an attempt timeout, a cancelled query) frees its sequence at once:
/// the next request does not wait for the abandoned answer to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_frees_its_sequence() {
    let _serial = serial();
    let mut config = EndpointConfig::embedded(Some(&model()));
    config.max_concurrency = 1;
    config.embedded_mut().expect("embedded").threads = Some(1);
    config.embedded_mut().expect("embedded").context_tokens = Some(1024);
    let backend = Arc::new(EmbeddedBackend::new(&config));
    backend.prepare().await.unwrap();
    let long = request(
        "Write a long story about a lighthouse keeper.",
        SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(900),
            ..Default::default()
        },
    );
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        backend.complete(&long),
    )
    .await;
    assert!(gave_up.is_err(), "900 tokens cannot be done in 0.5 s");
    let started = std::time::Instant::now();
    let short = backend
        .complete(&request(
            "Say hi.",
            SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(4),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(short.completion_tokens.unwrap() <= 4);
    // 900 tokens on one sequence take ~40 s here; the short answer takes well under 10.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "waited {:?}: the abandoned request kept its sequence",
        started.elapsed()
    );
}

/// `api = "completions"` (base models without a chat template): the turns are tokenized as
/// they are, so the prompt has no template tokens around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_api_skips_the_chat_template() {
    let _serial = serial();
    let with = |api| {
        let mut config = EndpointConfig::embedded(Some(&model()));
        config.embedded_mut().expect("embedded").api = api;
        config.max_concurrency = 1;
        Arc::new(EmbeddedBackend::new(&config))
    };
    let params = SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(8),
        ..Default::default()
    };
    let question = request("The capital of France is", params);
    let chat = with(caiflow_llm::openai::OpenAiApi::Chat)
        .complete(&question)
        .await
        .unwrap();
    let raw = with(caiflow_llm::openai::OpenAiApi::Completions)
        .complete(&question)
        .await
        .unwrap();
    let (chat_tokens, raw_tokens) = (chat.prompt_tokens.unwrap(), raw.prompt_tokens.unwrap());
    assert!(raw_tokens < 10, "just the text: {raw_tokens} tokens");
    assert!(
        chat_tokens > raw_tokens + 5,
        "template turns around it: {chat_tokens}"
    );
    assert!(!raw.text.trim().is_empty());
}

/// The CAI paper's plans as a new user runs them, on the embedded default with small limits:
/// sequences and rounds of critique and revision, SL pairs; the CoT few-shot principle judge
/// with clamped soft labels read from the model's own log-probabilities.
#[test]
fn paper_plans_run_on_the_embedded_default() {
    let _serial = serial();
    let store = tempfile::tempdir().unwrap();
    let run = |plan: &str, name: &str, vars: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_caiflow"));
        cmd.current_dir(repo_root())
            .env_remove("CAIFLOW_BASE_URL")
            .args(["run", plan, "--store"])
            .arg(store.path())
            .args(["--run", name]);
        for v in vars {
            cmd.args(["--set", v]);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{plan} failed: {stderr}");
        stderr
    };
    run(
        "plans/sl_cai_paper.sql",
        "sl",
        &["limit=2", "rounds=2", "sequences=2", "max_tokens=24"],
    );
    run(
        "plans/rl_cai_paper.sql",
        "rl",
        &[
            "limit=3",
            "max_tokens=24",
            "judge_max_tokens=48",
            "audit=true",
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let read = |run: &str, table: &'static str| {
            let run = store.path().join(run);
            async move { committed_table(&run, table).await }
        };
        let revisions = read("sl", "revisions").await;
        assert_eq!(
            rows(&revisions),
            2 * 2 * 2,
            "2 sequences of 2 rounds per prompt"
        );
        assert!(column(&revisions, "error").iter().all(Option::is_none));
        let pairs = read("sl", "sl_pairs").await;
        assert!(rows(&pairs) > 0 && rows(&pairs) <= 8);
        let judgements = read("rl", "judgements").await;
        assert_eq!(rows(&judgements), 3);
        for (label, p) in column(&judgements, "label")
            .iter()
            .zip(column(&judgements, "chosen_prob"))
        {
            if label.as_deref() == Some("ok") {
                let p: f64 = p.unwrap().parse().unwrap();
                assert!((0.4..=0.6).contains(&p), "CoT labels are clamped: {p}");
            }
        }
    });
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .args(["report"])
        .arg(store.path().join("rl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&html).with_file_name("report.json")).unwrap(),
    )
    .unwrap();
    let audited: u64 = report["judge_audit"]["principles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["audited"].as_u64().unwrap())
        .sum();
    assert_eq!(
        audited, 3,
        "one comparison per prompt, asked in both orders: {report}"
    );
}
