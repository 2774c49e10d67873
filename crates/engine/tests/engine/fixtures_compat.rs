//! Compatibility with real third-party files in ../shared/fixtures (NeMo-Aligner's CAI
//! files, Anthropic HH). Outside CI the folder may be absent: the tests then say so and
//! skip; CI sets CAIFLOW_REQUIRE_FIXTURES=1, which turns a missing fixture into a failure.

use crate::common::*;
use caiflow_engine::CaiSession;
use caiflow_engine::constitution::{FewShot, load_constitution};
use caiflow_llm::Endpoints;

#[test]
fn nemo_aligner_constitution_loads_with_wrappers_stripped() {
    let Some(path) = fixture("nemo-aligner/CritiqueRevisionInstructions.json") else {
        return;
    };
    let c = load_constitution(&path).unwrap();
    assert_eq!(c.principles.len(), 16);
    assert_eq!(c.principles[0].id, "harmful0");
    assert_eq!(c.principles[15].id, "harmful15");
    for p in &c.principles {
        for text in [&p.critique_request, &p.revision_request] {
            assert!(
                !text.contains("CritiqueRequest:") && !text.contains("RevisionRequest:"),
                "{text}"
            );
            assert!(
                !text.ends_with("Critique:") && !text.ends_with("Revision:"),
                "{text}"
            );
            assert_eq!(text.trim(), text);
        }
    }
}

#[test]
fn nemo_aligner_few_shot_file_loads() {
    let Some(path) = fixture("nemo-aligner/few_shot_samples_example.json") else {
        return;
    };
    let f = FewShot::resolve(path.to_str().unwrap()).unwrap();
    assert_eq!(f.samples.len(), 2);
    assert_eq!(f.samples[0].critique_request, "critique request");
    assert_eq!(f.messages().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hh_harmless_base_test_set_yields_a_prompt_for_every_record() {
    let Some(path) = fixture("hh-rlhf/harmless-base-test.jsonl.gz") else {
        return;
    };
    let s = CaiSession::new(Endpoints::default());
    let out = collect(&s, &format!("SELECT count(*) AS n, count(DISTINCT prompt_id) AS ids FROM red_team_prompts('{}', dedup => false)", path.display())).await;
    assert_eq!(column(&out, "n"), vec![Some("2312".into())]);
    assert_eq!(
        s.progress
            .stage("red_team_prompts")
            .records_skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let deduped = collect(
        &s,
        &format!(
            "SELECT count(*) AS n FROM red_team_prompts('{}')",
            path.display()
        ),
    )
    .await;
    assert_eq!(
        column(&deduped, "n"),
        column(&out, "ids"),
        "dedup keeps one row per distinct prompt"
    );
    let empty = collect(&s, &format!("SELECT count(*) AS n FROM red_team_prompts('{}') WHERE trim(prompt) = '' OR prompt LIKE '%Assistant:%'", path.display())).await;
    assert_eq!(column(&empty, "n"), vec![Some("0".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nemo_constitution_drives_critique_and_revise() {
    let Some(path) = fixture("nemo-aligner/CritiqueRevisionInstructions.json") else {
        return;
    };
    let server = caiflow_testkit::MockServer::start().await.unwrap();
    let s = session_for(&server.base_url(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    register_prompts(&s, dir.path(), &["a", "b", "c"]).await;
    let c = format!("constitution => '{}'", path.display());
    let out = collect(
        &s,
        &format!("SELECT * FROM revise(critique(respond(prompts), {c}), rounds => 2, {c})"),
    )
    .await;
    assert_eq!(rows(&out), 6);
    assert!(column(&out, "error").iter().all(Option::is_none));
    assert!(
        column(&out, "principle_id")
            .iter()
            .all(|p| p.as_deref().is_some_and(|p| p.starts_with("harmful")))
    );
}
