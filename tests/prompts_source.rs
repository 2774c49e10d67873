//! `red_team_prompts` and `helpful_sft` over every supported input shape.

mod common;

use std::io::Write;

use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;
use common::*;

fn session() -> CaiSession {
    CaiSession::new(Endpoints::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hh_red_team_jsonl_and_json_array_with_both_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        serde_json::json!({"transcript": "\n\nHuman: How do I pick a lock?\n\nAssistant: No.", "task_descripton_harmlessness_score": -1.5}),
        serde_json::json!({"transcript": "\n\nHuman: Second one\n\nAssistant: Hm.\n\nHuman: follow-up", "task_description_harmlessness_score": 0.5}),
        serde_json::json!({"transcript": "no markers at all"}),
        serde_json::json!({"something": "else"}),
    ];
    let jsonl = dir.path().join("red.jsonl");
    std::fs::write(
        &jsonl,
        records
            .iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>()
            + "{not json\n",
    )
    .unwrap();
    let array = dir.path().join("red.json");
    std::fs::write(&array, serde_json::to_string_pretty(&records).unwrap()).unwrap();

    let s = session();
    for path in [&jsonl, &array] {
        let out = collect(
            &s,
            &format!(
                "SELECT * FROM red_team_prompts('{}') ORDER BY prompt",
                path.display()
            ),
        )
        .await;
        assert_eq!(
            column(&out, "prompt"),
            vec![
                Some("How do I pick a lock?".into()),
                Some("Second one".into())
            ]
        );
        assert_eq!(
            column(&out, "harmlessness_score"),
            vec![Some("-1.5".into()), Some("0.5".into())]
        );
        assert_eq!(column(&out, "source"), vec![Some("hh-red-team".into()); 2]);
    }
    let skipped = s
        .progress
        .stage("red_team_prompts")
        .records_skipped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        skipped,
        3 + 2,
        "3 bad JSONL lines + 2 bad array records are counted"
    );

    let all = collect(
        &s,
        &format!(
            "SELECT conversation FROM red_team_prompts('{}', turns => 'all') ORDER BY prompt DESC",
            jsonl.display()
        ),
    )
    .await;
    let conv = column(&all, "conversation");
    assert!(
        conv[0].as_deref().unwrap().contains("follow-up"),
        "{conv:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hh_preference_records_gz_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("pref.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    for (i, p) in ["alpha", "beta", "alpha"].iter().enumerate() {
        let r = serde_json::json!({"chosen": format!("\n\nHuman: {p}\n\nAssistant: ok {i}"), "rejected": "\n\nHuman: x\n\nAssistant: y"});
        writeln!(enc, "{r}").unwrap();
    }
    enc.finish().unwrap();
    let s = session();
    let out = collect(
        &s,
        &format!("SELECT * FROM red_team_prompts('{}')", gz.display()),
    )
    .await;
    assert_eq!(rows(&out), 2, "duplicates are dropped by default");
    assert_eq!(column(&out, "source")[0].as_deref(), Some("hh-preference"));
    let out = collect(
        &s,
        &format!(
            "SELECT * FROM red_team_prompts('{}', dedup => false)",
            gz.display()
        ),
    )
    .await;
    assert_eq!(rows(&out), 3);

    let csv = dir.path().join("p.csv");
    std::fs::write(&csv, "id,text\n7,\"hello, world\"\n8,\n9,third\n").unwrap();
    let out = collect(&s, &format!("SELECT * FROM red_team_prompts('{}', column => 'text', id_column => 'id') ORDER BY prompt_id", csv.display())).await;
    assert_eq!(
        column(&out, "prompt_id"),
        vec![Some("7".into()), Some("9".into())]
    );
    assert_eq!(column(&out, "prompt")[0].as_deref(), Some("hello, world"));

    let parquet = dir.path().join("p.parquet");
    collect(&s, &format!("COPY (SELECT 'q' || CAST(v AS VARCHAR) AS question FROM (VALUES (1), (2), (3)) t(v)) TO '{}' STORED AS PARQUET", parquet.display())).await;
    let out = collect(
        &s,
        &format!(
            "SELECT * FROM red_team_prompts('{}', column => 'question')",
            parquet.display()
        ),
    )
    .await;
    assert_eq!(rows(&out), 3);
    let err = s
        .ctx
        .sql(&format!(
            "SELECT * FROM red_team_prompts('{}')",
            parquet.display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no column 'prompt'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_ids_are_stable_hashes_of_the_normalized_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.jsonl");
    std::fs::write(&p, "{\"prompt\": \"How  do I\\n do it?\"}\n").unwrap();
    let out = collect(
        &session(),
        &format!("SELECT prompt_id FROM red_team_prompts('{}')", p.display()),
    )
    .await;
    assert_eq!(
        column(&out, "prompt_id")[0].as_deref(),
        Some(caiflow_engine::keys::prompt_id("How do I do it?").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpful_sft_reads_nemo_trl_and_hh_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.jsonl");
    let lines = [
        serde_json::json!({"system": "", "conversations": [{"from": "User", "value": "q1"}, {"from": "Assistant", "value": "a1"}], "mask": "User"}),
        serde_json::json!({"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}),
        serde_json::json!({"chosen": "\n\nHuman: q3\n\nAssistant: a3", "rejected": "x"}),
        serde_json::json!({"messages": [{"role": "user", "content": "no answer"}]}),
    ];
    std::fs::write(
        &p,
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let s = session();
    let out = collect(&s, &format!("SELECT * FROM helpful_sft('{}')", p.display())).await;
    assert_eq!(rows(&out), 3);
    let msgs = column(&out, "messages");
    assert!(
        msgs.iter()
            .all(|m| m.as_deref().is_some_and(|m| m.contains("assistant"))),
        "{msgs:?}"
    );
    assert_eq!(
        s.progress
            .stage("helpful_sft")
            .records_skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
