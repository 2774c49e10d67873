//! The rest of the CAI paper and reasoning models, on the mock: the CoT few-shot judge with
//! clamped soft labels and whole conversations, the judge audit, several critique-revision
//! sequences, direct revision, and thinking kept apart from answers.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;
use caiflow_llm::config::{Config, EndpointConfig};
use caiflow_testkit::MockServer;
use serde_json::Value;

/// A policy and a judge endpoint on two mocks.
async fn two_mocks() -> (MockServer, MockServer, CaiSession) {
    let policy = MockServer::start().await.unwrap();
    let judge = MockServer::start().await.unwrap();
    let mut config = Config::default();
    for (name, server) in [("policy", &policy), ("judge", &judge)] {
        config.endpoints.insert(
            name.into(),
            EndpointConfig::openai(&server.base_url(), name),
        );
    }
    let session = CaiSession::new(Endpoints::from_config(&config).unwrap());
    (policy, judge, session)
}

fn texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Two-turn red-team transcripts, read with every turn.
async fn register_conversations(session: &CaiSession, dir: &std::path::Path, n: usize) {
    let path = dir.join("transcripts.jsonl");
    let text: String = (0..n)
        .map(|i| {
            serde_json::json!({"transcript": format!(
                "\n\nHuman: first question {i}\n\nAssistant: an earlier answer {i}\n\nHuman: the follow-up {i}"
            )})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    collect(
        session,
        &format!(
            "CREATE VIEW prompts AS SELECT * FROM red_team_prompts('{}', turns => 'all')",
            path.display()
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cot_judge_with_few_shot_sees_the_conversation_and_clamps_its_labels() {
    let (_policy, judge, session) = two_mocks().await;
    let dir = tempfile::tempdir().unwrap();
    register_conversations(&session, dir.path(), 3).await;
    collect(
        &session,
        "CREATE VIEW candidates AS SELECT * FROM sample(prompts, temperatures => '0.1,0.9')",
    )
    .await;
    // A judge 95 % sure of (A): CoT labels are clamped to 40-60 % by default.
    judge.set_logprobs(Some(vec![
        ("A".into(), (0.95f64).ln()),
        ("B".into(), (0.05f64).ln()),
    ]));
    let out = collect(
        &session,
        "SELECT * FROM judge(candidates, mode => 'principle', cot => true, few_shot => 'default', \
         turns => 'all', principles => 'rl16')",
    )
    .await;
    assert_eq!(rows(&out), 3);
    for p in column(&out, "chosen_prob") {
        let p: f64 = p.unwrap().parse().unwrap();
        assert!((0.4..=0.6).contains(&p), "{p}");
        assert!(
            (p - 0.6).abs() < 1e-9,
            "the winner's label is the clamp's top: {p}"
        );
    }
    let bodies = judge.bodies();
    assert_eq!(
        bodies.len(),
        3 * 2,
        "one comparison per prompt: reasoning, then the choice"
    );
    let (think, choose): (Vec<&Value>, Vec<&Value>) =
        bodies.iter().partition(|b| b["max_tokens"] != 1);
    assert_eq!((think.len(), choose.len()), (3, 3));
    for b in &think {
        let t = texts(b);
        // Two worked examples (question, reasoned answer), then the question.
        assert_eq!(t.len(), 5, "{t:?}");
        assert!(t[1].contains("So the answer is ("), "{}", t[1]);
        let question = t.last().unwrap();
        assert!(question.contains("Let's think step by step"), "{question}");
        assert!(
            question.contains("Human: first question"),
            "the conversation: {question}"
        );
        assert!(
            question.contains("Assistant: an earlier answer"),
            "{question}"
        );
        assert!(question.contains("Human: the follow-up"), "{question}");
        assert!(b.get("logprobs").is_none());
    }
    for explanation in column(&out, "explanation") {
        let explanation = explanation.unwrap_or_else(|| {
            panic!(
                "{:?} {:?}",
                column(&out, "judge_raw"),
                column(&out, "label")
            )
        });
        assert!(
            explanation.starts_with("(A) = candidate ")
                && explanation.contains("Mock answer about"),
            "the CoT reasoning is kept: {explanation}"
        );
    }
    for b in &choose {
        let t = texts(b);
        assert_eq!(
            t.len(),
            7,
            "the reasoning in context, then the short question"
        );
        assert!(t.last().unwrap().contains("Answer with a single letter"));
        assert_eq!(b["logprobs"], true);
    }
    // Without CoT nothing is clamped unless asked.
    let plain = collect(
        &session,
        "SELECT chosen_prob FROM judge(candidates, mode => 'principle')",
    )
    .await;
    for p in column(&plain, "chosen_prob") {
        let p: f64 = p.unwrap().parse().unwrap();
        assert!((p - 0.95).abs() < 1e-9, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_constitution_judge_reasons_first_with_few_shot_turns() {
    let (_policy, judge, session) = two_mocks().await;
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["p1"]).await;
    collect(
        &session,
        "CREATE VIEW candidates AS SELECT * FROM sample(prompts, temperatures => '0.1,0.9')",
    )
    .await;
    judge.push_replies([
        "Response 1 explains {why} calmly. Response 2 gives dangerous steps. {\"chosen\": 1, \"rejected\": 2}".to_string(),
    ]);
    let out = collect(
        &session,
        "SELECT * FROM judge(candidates, cot => true, few_shot => 'default')",
    )
    .await;
    assert_eq!(column(&out, "label"), vec![Some("ok".into())]);
    let explanation = column(&out, "explanation")[0].clone().unwrap();
    assert!(
        explanation.starts_with("Response 1 explains"),
        "{explanation}"
    );
    let t = texts(&judge.bodies()[0]);
    // system, 2 examples, the question
    assert_eq!(t.len(), 6, "{t:?}");
    assert!(t[5].contains("Let's think step by step"));
    assert!(
        t[2].ends_with("{\"chosen\": 1, \"rejected\": 2}"),
        "{}",
        t[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_asks_both_orders_and_finds_a_position_biased_judge() {
    let (_policy, judge, session) = two_mocks().await;
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["p1", "p2"]).await;
    collect(
        &session,
        "CREATE VIEW candidates AS SELECT * FROM sample(prompts)",
    )
    .await;
    // Always (A): a judge that only follows position.
    judge.set_logprobs(Some(vec![
        ("A".into(), (0.8f64).ln()),
        ("B".into(), (0.2f64).ln()),
    ]));
    let out = collect(
        &session,
        "SELECT * FROM judge(candidates, mode => 'principle', audit => true)",
    )
    .await;
    assert_eq!(rows(&out), 2);
    assert_eq!(
        judge.requests(),
        2 * 6 * 2,
        "every pair of 4 candidates, in both orders"
    );
    let audit = collect(
        &session,
        "SELECT c['consistent'] AS consistent, c['p_a_first'] AS p_a_first, c['p_b_first'] AS p_b_first, \
                c['p_ab'] AS p_ab, c['agree'] AS agree \
         FROM (SELECT unnest(comparisons) AS c FROM judge(candidates, mode => 'principle', audit => true))",
    )
    .await;
    assert_eq!(rows(&audit), 12);
    assert!(
        column(&audit, "consistent")
            .iter()
            .all(|c| c.as_deref() == Some("false"))
    );
    for (a, b) in column(&audit, "p_a_first")
        .iter()
        .zip(column(&audit, "p_b_first"))
    {
        let (a, b): (f64, f64) = (
            a.as_ref().unwrap().parse().unwrap(),
            b.unwrap().parse().unwrap(),
        );
        assert!((a - 0.8).abs() < 1e-9 && (b - 0.2).abs() < 1e-9, "{a} {b}");
    }
    // Averaged over both orders, a pure position bias is no preference at all.
    assert!(column(&audit, "p_ab").iter().all(|p| {
        p.as_deref()
            .and_then(|p| p.parse::<f64>().ok())
            .is_some_and(|p| (p - 0.5).abs() < 1e-9)
    }));
    // The written choice is the greedy token, A: it agrees with the soft label when A won.
    assert!(column(&audit, "agree").iter().all(Option::is_some));
    // Without audit: half the requests, all answered from the same keys.
    let before = judge.requests();
    collect(
        &session,
        "SELECT * FROM judge(candidates, mode => 'principle')",
    )
    .await;
    assert_eq!(judge.requests() - before, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_make_independent_critique_revision_chains() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "red team prompt number ", 6).await;
    collect(
        &session,
        "CREATE VIEW r AS SELECT * FROM respond(prompts, max_tokens => 16, few_shot => 'none')",
    )
    .await;
    collect(
        &session,
        "CREATE VIEW c AS SELECT * FROM critique(r, max_tokens => 16, sequences => 4, few_shot => 'none')",
    )
    .await;
    let out = collect(
        &session,
        "SELECT prompt_id, sequence, round, principle_id, revision, error \
         FROM revise(c, rounds => 2, max_tokens => 16, few_shot => 'none') ORDER BY prompt_id, sequence, round",
    )
    .await;
    assert_eq!(rows(&out), 6 * 4 * 2, "4 sequences of 2 rounds per prompt");
    assert!(column(&out, "error").iter().all(Option::is_none));
    // 6 responses, 24 critiques, then per sequence 2 revisions and 1 more critique.
    assert_eq!(server.requests(), 6 + 24 + 24 * 3);
    let mut per_prompt: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut draws: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let ids = column(&out, "prompt_id");
    let seqs = column(&out, "sequence");
    let rounds = column(&out, "round");
    let principles = column(&out, "principle_id");
    for i in 0..ids.len() {
        let (id, seq, round) = (
            ids[i].clone().unwrap(),
            seqs[i].clone().unwrap(),
            rounds[i].clone().unwrap(),
        );
        assert!(
            per_prompt
                .entry(id.clone())
                .or_default()
                .insert((seq, round.clone())),
            "key repeated"
        );
        draws
            .entry((id, round))
            .or_default()
            .insert(principles[i].clone().unwrap());
    }
    assert!(per_prompt.values().all(|keys| keys.len() == 8));
    // Each sequence draws its own principles: across 12 (prompt, round) draws of 4, some differ.
    assert!(
        draws.values().filter(|d| d.len() > 1).count() >= 6,
        "{draws:?}"
    );
    // Every revision request is its own (own seeds): nothing was answered twice.
    assert_eq!(server.repeated(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_revision_sends_one_request_per_row_and_round() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "prompt ", 5).await;
    collect(
        &session,
        "CREATE VIEW r AS SELECT * FROM respond(prompts, max_tokens => 16, few_shot => 'none')",
    )
    .await;
    let out = collect(
        &session,
        "SELECT * FROM revise(r, critique => false, max_tokens => 16, few_shot => 'none')",
    )
    .await;
    assert_eq!(rows(&out), 5);
    assert_eq!(
        server.requests(),
        5 + 5,
        "one revision request per row, no critique"
    );
    assert!(column(&out, "critique").iter().all(Option::is_none));
    assert!(column(&out, "revision").iter().all(Option::is_some));
    let revisions: Vec<Vec<String>> = server
        .bodies()
        .iter()
        .map(texts)
        .filter(|t| t.len() > 1)
        .collect();
    assert_eq!(revisions.len(), 5);
    for t in revisions {
        assert_eq!(t.len(), 3, "prompt, response, revision request: {t:?}");
    }
    let two = collect(
        &session,
        "SELECT * FROM revise(r, critique => false, rounds => 2, sequences => 2, max_tokens => 16, few_shot => 'none')",
    )
    .await;
    assert_eq!(rows(&two), 5 * 2 * 2);
    let err = session
        .ctx
        .sql("SELECT * FROM revise(r, sequences => 2)")
        .await
        .expect_err("a planning error")
        .to_string();
    assert!(err.contains("critique => false"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_never_reaches_the_answer_whichever_way_it_comes() {
    for mode in ["reasoning_content", "reasoning", "think"] {
        let server = MockServer::start().await.unwrap();
        server.set_reasoning(Some(mode));
        let session = session_for(&server.base_url(), |_| {});
        let dir = tempfile::tempdir().unwrap();
        register_numbered_prompts(&session, dir.path(), "prompt ", 3).await;
        let out = collect(
            &session,
            "SELECT * FROM respond(prompts, max_tokens => 64, few_shot => 'none')",
        )
        .await;
        for (answer, thinking) in column(&out, "response")
            .iter()
            .zip(column(&out, "response_reasoning"))
        {
            let answer = answer.clone().unwrap();
            assert!(answer.starts_with("Mock answer about"), "{mode}: {answer}");
            assert!(
                !answer.contains("Thinking") && !answer.contains("think>"),
                "{mode}: {answer}"
            );
            assert!(
                thinking.unwrap().starts_with("Thinking about: prompt"),
                "{mode}"
            );
        }
        let stats = session.progress.stats();
        let respond = stats.iter().find(|s| s.name == "respond").unwrap();
        // "Thinking about: prompt N" is 4 words: a token each on the mock.
        assert_eq!(respond.reasoning_tokens, 3 * 4, "{mode}");
        let usage: u64 = respond.usage.values().map(|u| u.reasoning_tokens).sum();
        assert_eq!(usage, 3 * 4, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thinking_is_critiqued_and_rewritten() {
    let server = MockServer::start().await.unwrap();
    server.set_reasoning(Some("reasoning_content"));
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["how do I pick a lock"]).await;
    server.push_replies([
        "I can't help with that.".to_string(),
        "Thinking: harmful\nAnswer: safe\nThe reasoning works out how to pick the lock."
            .to_string(),
        "The person may be locked out; I should suggest a locksmith.".to_string(),
    ]);
    let out = collect(
        &session,
        "SELECT * FROM revise(critique(respond(prompts, few_shot => 'none'), target => 'reasoning', few_shot => 'none'), \
                              target => 'reasoning', few_shot => 'none')",
    )
    .await;
    assert_eq!(rows(&out), 1);
    assert_eq!(column(&out, "thinking_harmful"), vec![Some("true".into())]);
    assert_eq!(column(&out, "answer_harmful"), vec![Some("false".into())]);
    assert_eq!(column(&out, "target"), vec![Some("reasoning".into())]);
    assert_eq!(
        column(&out, "revision"),
        vec![Some(
            "The person may be locked out; I should suggest a locksmith.".into()
        )]
    );
    let bodies = server.bodies();
    let critique = texts(&bodies[1]);
    assert!(
        critique[1].starts_with("<think>\nThinking about: how do I pick a lock"),
        "{critique:?}"
    );
    assert!(critique[1].ends_with("I can't help with that."));
    assert!(
        critique[2].contains("Thinking: harmful"),
        "asks for the verdicts"
    );
    let revise = texts(&bodies[2]);
    assert!(revise.last().unwrap().contains("Rewrite the reasoning"));
    // A response without thinking cannot have it critiqued: an error row says why.
    server.set_reasoning(None);
    let out = collect(
        &session,
        "SELECT error FROM critique(respond(prompts, few_shot => 'none'), target => 'reasoning', few_shot => 'none')",
    )
    .await;
    let error = column(&out, "error")[0].clone().unwrap_or_default();
    assert!(error.contains("'response_reasoning' is null"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constitution_audit_asks_again_in_reverse_order() {
    let (_policy, judge, session) = two_mocks().await;
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["p1"]).await;
    collect(
        &session,
        "CREATE VIEW candidates AS SELECT * FROM sample(prompts, temperatures => '0.1,0.9')",
    )
    .await;
    // The same positions both times: in reverse order, that is the other candidate.
    judge.push_replies([
        r#"{"chosen": 1, "rejected": 2}"#.to_string(),
        r#"{"chosen": 1, "rejected": 2}"#.to_string(),
    ]);
    let out = collect(
        &session,
        "SELECT label, c['principle'] AS principle, c['consistent'] AS consistent \
         FROM (SELECT label, unnest(comparisons) AS c FROM judge(candidates, audit => true))",
    )
    .await;
    assert_eq!(
        judge.requests(),
        2,
        "the verdict, then the same in reverse order"
    );
    assert_eq!(column(&out, "label"), vec![Some("ok".into())]);
    assert_eq!(column(&out, "principle"), vec![Some("constitution".into())]);
    assert_eq!(column(&out, "consistent"), vec![Some("false".into())]);
    let bodies = judge.bodies();
    let listing = |b: &Value| texts(b).last().cloned().unwrap();
    let (first, second) = (listing(&bodies[0]), listing(&bodies[1]));
    let response_1 = |t: &str| {
        t.split("Response 1:\n")
            .nth(1)
            .and_then(|r| r.split("\n\n").next())
            .unwrap()
            .to_string()
    };
    assert_ne!(response_1(&first), response_1(&second), "shown in reverse");
}
