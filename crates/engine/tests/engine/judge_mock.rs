//! RL-CAI stages against mock endpoints: `sample` candidates, and a scripted `judge`.

use crate::common::*;
use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;
use caiflow_llm::config::{Config, EndpointConfig};
use caiflow_testkit::{Fault, MockServer};
use datafusion::arrow::array::RecordBatch;

struct Setup {
    policy: MockServer,
    judge: MockServer,
    session: CaiSession,
    _dir: tempfile::TempDir,
}

async fn setup(prompts: &[&str]) -> Setup {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    let mut config = Config::default();
    for (name, server) in [("policy", &policy), ("judge", &judge)] {
        let mut e = EndpointConfig::openai(&server.base_url(), name);
        e.retry.initial_backoff_ms = 5;
        e.retry.max_backoff_ms = 20;
        e.retry.max_attempts = 10;
        config.endpoints.insert(name.into(), e);
    }
    let session = CaiSession::new(Endpoints::from_config(&config).unwrap());
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), prompts).await;
    collect(
        &session,
        "CREATE VIEW candidates AS SELECT * FROM sample(prompts)",
    )
    .await;
    Setup {
        policy,
        judge,
        session,
        _dir: dir,
    }
}

fn u32s(batches: &[RecordBatch], col: &str) -> Vec<Option<u32>> {
    column(batches, col)
        .into_iter()
        .map(|v| v.map(|s| s.parse().unwrap()))
        .collect()
}

fn order(batches: &[RecordBatch]) -> Vec<Vec<u32>> {
    column(batches, "candidate_order")
        .into_iter()
        .map(|v| {
            v.unwrap_or_default()
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect()
        })
        .collect()
}

const TEMPERATURES: [f64; 4] = [0.01, 0.51, 1.01, 1.51];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_makes_one_row_per_candidate_with_nemo_defaults() {
    let s = setup(&["p1", "p2"]).await;
    let out = collect(
        &s.session,
        "SELECT * FROM candidates ORDER BY prompt_id, sample_idx",
    )
    .await;
    assert_eq!(rows(&out), 8);
    assert_eq!(
        column(&out, "temperature")[..4],
        ["0.01", "0.51", "1.01", "1.51"].map(|t| Some(t.to_string()))
    );
    for body in s.policy.bodies() {
        assert_eq!(body["top_k"], 50);
        assert_eq!(body["top_p"], 0.95);
    }
    let out = collect(
        &s.session,
        "SELECT * FROM sample(prompts, temperatures => '0.2,0.9')",
    )
    .await;
    assert_eq!(rows(&out), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shuffle_is_recorded_and_mapped_back() {
    let prompts: Vec<String> = (0..6).map(|i| format!("prompt {i}")).collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let s = setup(&refs).await;
    s.judge
        .push_replies((0..6).map(|_| r#"{"chosen": 1, "rejected": 2} Because."#.to_string()));
    let out = collect(&s.session, "SELECT * FROM judge(candidates)").await;
    assert_eq!(rows(&out), 6, "one judge row per prompt");
    let orders = order(&out);
    let chosen = u32s(&out, "chosen_idx");
    let rejected = u32s(&out, "rejected_idx");
    let chosen_text = column(&out, "chosen");
    for i in 0..6 {
        assert_eq!(orders[i].len(), 4);
        assert_eq!(chosen[i], Some(orders[i][0]), "chosen is the first shown");
        assert_eq!(
            rejected[i],
            Some(orders[i][1]),
            "rejected is the second shown"
        );
        let t = TEMPERATURES[orders[i][0] as usize];
        assert!(
            chosen_text[i]
                .as_deref()
                .unwrap()
                .ends_with(&format!("(t={t})")),
            "{:?}",
            chosen_text[i]
        );
    }
    assert!(
        column(&out, "label")
            .iter()
            .all(|l| l.as_deref() == Some("ok"))
    );
    assert!(
        column(&out, "explanation")
            .iter()
            .all(|e| e.as_deref() == Some("Because."))
    );
    let distinct: std::collections::BTreeSet<_> = orders.iter().collect();
    assert!(
        distinct.len() > 1,
        "orders are shuffled per prompt: {orders:?}"
    );
    // What the judge saw: the constitution as system message, candidates in shown order.
    for body in s.judge.bodies() {
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert!(
            messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("CONSTITUTION")
        );
        let user = messages[1]["content"].as_str().unwrap();
        let first = user.find("Response 1:").unwrap();
        let second = user.find("Response 2:").unwrap();
        assert!(first < second);
    }
}

/// A judgement row describes the prompt and its verdict: the candidates are all in
/// `candidates` (sample_idx order), and no column of a single candidate is carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judgements_keep_every_candidate_and_no_single_candidates_columns() {
    let s = setup(&["p1", "p2"]).await;
    s.judge
        .push_replies((0..2).map(|_| r#"{"chosen": 2, "rejected": 1}"#.to_string()));
    let out = collect(
        &s.session,
        "SELECT * FROM judge(candidates) ORDER BY prompt_id",
    )
    .await;
    let schema = out[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for gone in [
        "sample_idx",
        "num_samples",
        "temperature",
        "response",
        "sample_lineage",
    ] {
        assert!(!names.contains(&gone), "{gone} in {names:?}");
    }
    assert!(
        names.contains(&"candidates") && names.contains(&"prompt"),
        "{names:?}"
    );
    let items = collect(
        &s.session,
        "SELECT prompt_id, c['sample_idx'] AS i, c['temperature'] AS t, c['response'] AS r, \
         c['finish_reason'] AS f, c['error'] AS e \
         FROM (SELECT prompt_id, unnest(candidates) AS c FROM judge(candidates)) ORDER BY prompt_id",
    )
    .await;
    assert_eq!(rows(&items), 8);
    let idx = column(&items, "i");
    assert_eq!(
        idx[..4],
        ["0", "1", "2", "3"].map(|i| Some(i.to_string())),
        "sample_idx order"
    );
    let temps = column(&items, "t");
    assert_eq!(
        temps[..4],
        ["0.01", "0.51", "1.01", "1.51"].map(|t| Some(t.to_string()))
    );
    for (r, t) in column(&items, "r").iter().zip(&temps) {
        assert!(
            r.as_deref()
                .unwrap()
                .ends_with(&format!("(t={})", t.as_deref().unwrap())),
            "{r:?}"
        );
    }
    assert!(
        column(&items, "f")
            .iter()
            .all(|f| f.as_deref() == Some("stop"))
    );
    assert!(column(&items, "e").iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dicts_ties_and_reasks() {
    let s = setup(&["only prompt"]).await;
    s.judge
        .push_replies([r#"{'chosen': '#2', 'rejected': 'Response 3'}"#.to_string()]);
    let out = collect(&s.session, "SELECT * FROM judge(candidates)").await;
    let o = &order(&out)[0];
    assert_eq!(u32s(&out, "chosen_idx"), vec![Some(o[1])]);
    assert_eq!(u32s(&out, "rejected_idx"), vec![Some(o[2])]);

    s.judge
        .push_replies([r#"{"chosen": 3, "rejected": 3}"#.to_string()]);
    let out = collect(&s.session, "SELECT * FROM judge(candidates)").await;
    assert_eq!(column(&out, "label"), vec![Some("tie".to_string())]);
    assert_eq!(u32s(&out, "chosen_idx"), u32s(&out, "rejected_idx"));

    // Garbage, then an out-of-range id, then a valid verdict: asked again until valid.
    let before = s.judge.requests();
    s.judge.push_replies([
        "no idea".to_string(),
        r#"{"chosen": 9, "rejected": 1}"#.to_string(),
        r#"{"chosen": 4, "rejected": 1}"#.to_string(),
    ]);
    let out = collect(&s.session, "SELECT * FROM judge(candidates)").await;
    assert_eq!(column(&out, "label"), vec![Some("ok".to_string())]);
    assert_eq!(s.judge.requests() - before, 3);
    let last = s.judge.bodies().pop().unwrap();
    let turns = last["messages"].as_array().unwrap();
    assert_eq!(
        turns.len(),
        6,
        "system, listing, and two re-asks with the failed answers"
    );

    // Garbage every time: an error row with the raw text, after `attempts` tries.
    s.judge
        .push_replies(["first garbage".to_string(), "second garbage".to_string()]);
    let out = collect(&s.session, "SELECT * FROM judge(candidates, attempts => 2)").await;
    assert_eq!(column(&out, "label"), vec![Some("error".to_string())]);
    assert_eq!(
        column(&out, "judge_raw"),
        vec![Some("second garbage".to_string())]
    );
    assert!(
        column(&out, "error")[0]
            .as_deref()
            .unwrap()
            .contains("after 2 attempt")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_ridden_out_and_a_dead_judge_fails_every_row_with_its_reason() {
    let prompts: Vec<String> = (0..4).map(|i| format!("prompt {i}")).collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let s = setup(&refs).await;
    s.judge.push_faults((0..8).map(|_| Fault::RateLimited {
        retry_after_secs: 0,
    }));
    s.judge
        .push_replies((0..4).map(|_| r#"{"chosen": 2, "rejected": 1}"#.to_string()));
    let out = collect(&s.session, "SELECT * FROM judge(candidates)").await;
    assert_eq!(rows(&out), 4);
    assert!(
        column(&out, "label")
            .iter()
            .all(|l| l.as_deref() == Some("ok")),
        "{:?}",
        column(&out, "error")
    );

    s.judge.push_faults((0..200).map(|_| Fault::Status(503)));
    let out = collect(&s.session, "SELECT * FROM judge(candidates)").await;
    assert_eq!(rows(&out), 4, "the run finishes");
    assert!(
        column(&out, "label")
            .iter()
            .all(|l| l.as_deref() == Some("error"))
    );
    assert!(
        column(&out, "error")
            .iter()
            .all(|e| e.as_deref().is_some_and(|e| e.contains("HTTP 503")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_candidates_are_left_out_and_too_few_is_an_error_row() {
    let s = setup(&["good prompt", "bad prompt [[fail:400]]"]).await;
    s.judge
        .push_replies([r#"{"chosen": 1, "rejected": 2}"#.to_string()]);
    let out = collect(
        &s.session,
        "SELECT prompt, label, error, num_candidates FROM judge(candidates) ORDER BY prompt",
    )
    .await;
    assert_eq!(rows(&out), 2);
    assert_eq!(
        column(&out, "label"),
        vec![Some("error".to_string()), Some("ok".to_string())]
    );
    assert!(
        column(&out, "error")[0]
            .as_deref()
            .unwrap()
            .contains("only 0 usable candidate(s) of 4")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principle_mode_reads_soft_labels_from_logprobs() {
    let s = setup(&["p1", "p2"]).await;
    s.judge.set_logprobs(Some(vec![
        ("A".into(), (0.8f64).ln()),
        ("B".into(), (0.2f64).ln()),
        ("The".into(), -3.0),
    ]));
    let out = collect(
        &s.session,
        "SELECT * FROM judge(candidates, mode => 'principle')",
    )
    .await;
    assert_eq!(rows(&out), 2);
    for p in column(&out, "chosen_prob") {
        let p: f64 = p.unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&p), "{p}");
    }
    assert!(
        column(&out, "label")
            .iter()
            .all(|l| matches!(l.as_deref(), Some("ok" | "tie")))
    );
    let bodies = s.judge.bodies();
    assert_eq!(
        bodies.len(),
        2 * 6,
        "every pair of 4 candidates, per prompt"
    );
    for b in &bodies {
        assert_eq!(b["logprobs"], true);
        assert_eq!(b["max_tokens"], 1);
        assert!(
            b["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("(A)")
        );
    }
    let clamped = collect(
        &s.session,
        "SELECT chosen_prob FROM judge(candidates, mode => 'principle', clamp => '0.4,0.6')",
    )
    .await;
    for p in column(&clamped, "chosen_prob") {
        let p: f64 = p.unwrap().parse().unwrap();
        assert!((0.4..=0.6).contains(&p), "{p}");
    }

    s.judge.set_logprobs(None);
    let out = collect(
        &s.session,
        "SELECT * FROM judge(candidates, mode => 'principle')",
    )
    .await;
    let errors = column(&out, "error");
    assert!(
        errors.iter().all(|e| e
            .as_deref()
            .is_some_and(|e| e.contains("returned no logprobs"))),
        "{errors:?}"
    );
}
