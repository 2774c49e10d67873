//! `red_team_prompts` and `helpful_sft` over every supported input shape.

use std::io::Write;

use crate::common::*;
use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;

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

/// 40 different red-team prompts plus 20 edited copies (case changed, a word added): near
/// dedup keeps about 40, as a `red_team_prompts` option and as `near_dedup` over any table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_duplicates_are_dropped_by_minhash() {
    let dir = tempfile::tempdir().unwrap();
    let originals: Vec<String> =
        std::fs::read_to_string(repo_root().join("data/red_team_prompts.jsonl"))
            .unwrap()
            .lines()
            .take(40)
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
    assert_eq!(originals.len(), 40);
    let mut all = originals.clone();
    for (i, p) in originals.iter().take(20).enumerate() {
        let mut words: Vec<&str> = p.split(' ').collect();
        words.insert(1 + i % (words.len() - 1), "really");
        all.push(words.join(" ").to_uppercase());
    }
    let path = dir.path().join("prompts.jsonl");
    std::fs::write(
        &path,
        all.iter()
            .map(|p| serde_json::json!({ "prompt": p }).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let s = session();
    let count = |out: &[datafusion::arrow::array::RecordBatch]| rows(out);
    let exact = collect(
        &s,
        &format!("SELECT * FROM red_team_prompts('{}')", path.display()),
    )
    .await;
    assert_eq!(
        count(&exact),
        60,
        "exact dedup alone keeps the edited copies"
    );
    let near = collect(
        &s,
        &format!(
            "SELECT prompt FROM red_team_prompts('{}', near_dedup => 0.8)",
            path.display()
        ),
    )
    .await;
    let kept = count(&near);
    assert!((38..=42).contains(&kept), "kept {kept} of 60");
    let texts: Vec<String> = column(&near, "prompt").into_iter().flatten().collect();
    assert_eq!(
        texts[..40],
        originals[..],
        "the first of each family is kept, in order"
    );
    let dropped = s
        .progress
        .snapshot()
        .iter()
        .find(|p| p.name == "red_team_prompts")
        .map(|p| p.rows_dropped.load(std::sync::atomic::Ordering::Relaxed))
        .unwrap();
    assert_eq!(dropped as usize, 60 - kept, "the count dropped is reported");

    collect(
        &s,
        &format!(
            "CREATE VIEW raw AS SELECT * FROM red_team_prompts('{}')",
            path.display()
        ),
    )
    .await;
    let out = collect(
        &s,
        "SELECT * FROM near_dedup(raw, column => 'prompt', threshold => 0.8)",
    )
    .await;
    assert_eq!(count(&out), kept, "near_dedup over a table agrees");
    let out = collect(&s, "SELECT count(*) AS n FROM near_dedup('SELECT prompt AS p FROM raw', column => 'p', threshold => 1.0)").await;
    assert_eq!(
        column(&out, "n"),
        vec![Some("60".to_string())],
        "1.0 drops only identical texts"
    );

    for (sql, needle) in [
        (
            "SELECT * FROM near_dedup(raw, column => 'text')",
            "no column 'text'",
        ),
        (
            "SELECT * FROM near_dedup(raw, threshold => 1.5)",
            "threshold => 1.5",
        ),
        (
            "SELECT * FROM near_dedup(raw, threshold => 'high')",
            "threshold",
        ),
    ] {
        let e = s
            .ctx
            .sql(sql)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(needle), "{sql}: {e}");
    }
    let bad = format!(
        "SELECT * FROM red_team_prompts('{}', near_dedup => 0)",
        path.display()
    );
    let e = s
        .ctx
        .sql(&bad)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("near_dedup => 0"), "{e}");
}

/// A record that is not UTF-8 is one skipped record; the rest of the file is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_invalid_utf8_is_skipped_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let mut bytes = b"{\"prompt\": \"first\"}\n{\"prompt\": \"bad \xff\xfe byte\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"prompt\": \"third\"}\n");
    std::fs::write(&path, bytes).unwrap();
    let s = session();
    let out = collect(
        &s,
        &format!(
            "SELECT prompt FROM red_team_prompts('{}') ORDER BY prompt",
            path.display()
        ),
    )
    .await;
    assert_eq!(
        column(&out, "prompt"),
        vec![Some("first".into()), Some("third".into())]
    );
    let skipped = s
        .progress
        .stage("red_team_prompts")
        .records_skipped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(skipped, 1, "the bad record is counted");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Whatever bytes a prompts file holds (JSONL, a JSON array, broken UTF-8, nesting),
    /// reading it gives rows or an error naming the file, never a panic.
    #[test]
    fn any_prompts_file_reads_or_fails_cleanly(
        records in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..6),
        as_array in proptest::bool::ANY,
        prompts in proptest::collection::vec("\\PC{0,30}", 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        if as_array {
            bytes.push(b'[');
        }
        for p in &prompts {
            bytes.extend_from_slice(serde_json::json!({"prompt": p}).to_string().as_bytes());
            bytes.extend_from_slice(if as_array { b",".as_slice() } else { b"\n".as_slice() });
        }
        for r in &records {
            bytes.extend_from_slice(r);
            bytes.push(b'\n');
        }
        let path = dir.path().join(if as_array { "p.json" } else { "p.jsonl" });
        std::fs::write(&path, bytes).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let s = session();
            let sql = format!("SELECT count(*) FROM red_team_prompts('{}')", path.display());
            if let Ok(df) = s.ctx.sql(&sql).await {
                let _ = df.collect().await;
            }
        });
    }
}
