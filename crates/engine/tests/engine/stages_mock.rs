//! The CAI stages as SQL table functions against the mock endpoint.

use std::collections::BTreeSet;

use crate::common::*;
use caiflow_testkit::{Fault, MockServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_critique_revise_chain_with_rounds() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "red team prompt number ", 12).await;
    collect(
        &session,
        "CREATE VIEW r AS SELECT * FROM respond(prompts, max_tokens => 16, few_shot => 'none')",
    )
    .await;
    collect(
        &session,
        "CREATE VIEW c AS SELECT * FROM critique(r, max_tokens => 16, seed => 7)",
    )
    .await;
    let out = collect(
        &session,
        "SELECT * FROM revise(c, rounds => 3, max_tokens => 16, seed => 7)",
    )
    .await;
    assert_eq!(rows(&out), 36, "3 rounds for each of 12 prompts");
    // 12 responses + 12 critiques + 12 * (3 revisions + 2 further critiques)
    assert_eq!(server.requests(), 12 + 12 + 12 * 5);
    for col in [
        "response",
        "critique",
        "revision",
        "principle_id",
        "revision_request",
    ] {
        assert!(
            column(&out, col)
                .iter()
                .all(|v| v.as_deref().is_some_and(|s| !s.is_empty())),
            "{col} has empties"
        );
    }
    assert!(column(&out, "error").iter().all(Option::is_none));
    let rounds: BTreeSet<_> = column(&out, "round").into_iter().flatten().collect();
    assert_eq!(
        rounds,
        ["1", "2", "3"].iter().map(|s| s.to_string()).collect()
    );
    let principles: BTreeSet<_> = column(&out, "principle_id").into_iter().flatten().collect();
    assert!(
        principles.len() > 3,
        "principles should vary: {principles:?}"
    );
    // Lineage is recorded for every stage.
    let lineage = column(&out, "revise_lineage");
    assert!(
        lineage
            .iter()
            .all(|l| l.as_deref().is_some_and(|s| s.contains("attempts: 1"))),
        "{:?}",
        lineage[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principles_are_drawn_the_same_on_a_rerun() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["a", "b", "c", "d", "e"]).await;
    let sql = "SELECT prompt_id, principle_id FROM critique((SELECT *, 'r' AS response FROM prompts), seed => 3) ORDER BY prompt_id";
    let first = column(&collect(&session, sql).await, "principle_id");
    let second = column(&collect(&session, sql).await, "principle_id");
    assert_eq!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rows_carry_their_error_downstream_and_the_query_succeeds() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |e| e.retry.max_attempts = 2);
    let dir = tempfile::tempdir().unwrap();
    register_prompts(
        &session,
        dir.path(),
        &["fine one", "broken [[fail:500]]", "fine two"],
    )
    .await;
    let out = collect(
        &session,
        "SELECT prompt, response, critique, error FROM critique(respond(prompts, few_shot => 'none'), few_shot => 'none') ORDER BY prompt",
    )
    .await;
    let errors = column(&out, "error");
    let prompts = column(&out, "prompt");
    assert_eq!(rows(&out), 3);
    for (p, e) in prompts.iter().zip(&errors) {
        let p = p.as_deref().unwrap();
        if p.contains("[[fail") {
            let e = e.as_deref().expect("error set");
            assert!(
                e.starts_with("respond: endpoint 'policy': HTTP 500") && e.contains("2 attempt"),
                "{e}"
            );
        } else {
            assert!(e.is_none(), "{p}: {e:?}");
        }
    }
    let critique = column(&out, "critique");
    assert_eq!(critique.iter().filter(|c| c.is_none()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_inside_a_stage_are_recovered_and_counted_in_attempts() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |e| e.max_concurrency = 1);
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["one"]).await;
    server.push_faults([
        Fault::RateLimited {
            retry_after_secs: 0,
        },
        Fault::Status(502),
    ]);
    let out = collect(
        &session,
        "SELECT respond_lineage['attempts'] AS attempts, error FROM respond(prompts)",
    )
    .await;
    assert_eq!(column(&out, "attempts"), vec![Some("3".to_string())]);
    assert_eq!(column(&out, "error"), vec![None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_limits_are_pushed_below_the_stage() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_numbered_prompts(&session, dir.path(), "p", 30).await;
    let out = collect(
        &session,
        "SELECT * FROM respond(prompts) WHERE prompt IN ('p1', 'p2', 'p3')",
    )
    .await;
    assert_eq!(rows(&out), 3);
    assert_eq!(server.requests(), 3, "no request for filtered-out rows");
    let out = collect(&session, "SELECT * FROM respond(prompts) LIMIT 5").await;
    assert_eq!(rows(&out), 5);
    assert_eq!(server.requests(), 3 + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn few_shot_turns_come_before_the_prompt() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["the real prompt"]).await;
    collect(
        &session,
        "SELECT * FROM respond(prompts, system => 'be kind')",
    )
    .await;
    let body = &server.bodies()[0];
    let messages = body["messages"].as_array().unwrap();
    let few_shot = caiflow_engine::constitution::FewShot::resolve("default").unwrap();
    assert_eq!(messages.len(), 1 + few_shot.samples.len() * 6 + 1);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages.last().unwrap()["content"], "the real prompt");
    assert!(body["seed"].is_u64() && body["max_tokens"] == 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_errors_name_the_problem() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["x"]).await;
    let cases = [
        ("SELECT * FROM critique(prompts)", "no column 'response'"),
        (
            "SELECT * FROM respond(prompts, temprature => 0.1)",
            "unknown option 'temprature'",
        ),
        (
            "SELECT * FROM respond(prompts, max_tokens => lots)",
            "max_tokens",
        ),
        (
            "SELECT * FROM respond(no_such_table)",
            "no table or view named 'no_such_table'",
        ),
        (
            "SELECT * FROM revise((SELECT *, 'r' AS response, 'p' AS principle_id, 'c' AS critique FROM prompts), rounds => 0)",
            "rounds",
        ),
    ];
    for (sql, expected) in cases {
        let err = match session.ctx.sql(sql).await {
            Ok(df) => df
                .collect()
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected),
            "{sql}: expected '{expected}' in: {err}"
        );
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"harmful0": {"prompt": ["x"]}}"#).unwrap();
    let err = session
        .ctx
        .sql(&format!("SELECT * FROM critique((SELECT *, 'r' AS response FROM prompts), constitution => '{}')", bad.display()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("edit_request") && err.contains("bad.json"),
        "{err}"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_read_stored_parquet_intermediates_by_path() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["a", "b"]).await;
    let stored = dir.path().join("responses");
    collect(
        &session,
        &format!(
            "COPY (SELECT * FROM respond(prompts, few_shot => 'none')) TO '{}/' STORED AS PARQUET",
            stored.display()
        ),
    )
    .await;
    let before = server.requests();
    let out = collect(
        &session,
        &format!(
            "SELECT * FROM critique('{}/', few_shot => 'none')",
            stored.display()
        ),
    )
    .await;
    assert_eq!(rows(&out), 2);
    assert_eq!(server.requests() - before, 2, "only the critique stage ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_barrier_between_stages_a_slow_row_does_not_hold_back_the_others() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    // One prompt's every request takes 1.5 s; the others answer at once. All three prompts
    // arrive in the same input batch.
    register_prompts(
        &session,
        dir.path(),
        &["slow one [[delay:1500]]", "fast one", "fast two"],
    )
    .await;
    let out = collect(
        &session,
        "SELECT * FROM critique(respond(prompts, few_shot => 'none'), few_shot => 'none')",
    )
    .await;
    assert_eq!(rows(&out), 3);
    // Order of arrival at the server: both fast critiques must come before the slow row's
    // response is even finished, i.e. before the slow critique request.
    let order: Vec<(bool, bool)> = server
        .bodies()
        .iter()
        .map(|b| {
            let text = b.to_string();
            let is_critique = b["messages"].as_array().is_some_and(|m| m.len() > 1);
            (text.contains("slow one"), is_critique)
        })
        .collect();
    let slow_critique = order
        .iter()
        .position(|&(slow, crit)| slow && crit)
        .expect("slow critique sent");
    let fast_critiques: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, (slow, crit))| !*slow && *crit)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(fast_critiques.len(), 2);
    assert!(
        fast_critiques.iter().all(|&i| i < slow_critique),
        "arrival order: {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unreachable_endpoints_fail_fast_naming_them() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["x"]).await;
    let err = session
        .ctx
        .sql("SELECT * FROM respond(prompts, endpoint => 'judgee')")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown endpoint 'judgee'"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let down = session_for(&url, |_| {});
    register_prompts(&down, dir.path(), &["x", "y"]).await;
    let started = std::time::Instant::now();
    let err = query_error(&down, "SELECT * FROM respond(prompts)").await;
    assert!(err.contains(&url) && err.contains("unreachable"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_input_is_zero_rows_out() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &[]).await;
    let out = collect(
        &session,
        "SELECT * FROM revise(critique(respond(prompts)), rounds => 2)",
    )
    .await;
    assert_eq!(rows(&out), 0);
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_constitution_file_is_named() {
    let server = MockServer::start().await.unwrap();
    let session = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&session, dir.path(), &["x"]).await;
    let err = session
        .ctx
        .sql("SELECT * FROM critique((SELECT *, 'r' AS response FROM prompts), constitution => '/no/such/constitution.toml')")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/no/such/constitution.toml") && err.contains("No such file"),
        "{err}"
    );
}
