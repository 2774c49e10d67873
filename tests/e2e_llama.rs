//! End to end on a real model: llama.cpp's server (PyPI `xllamacpp`) serving
//! SmolLM2-135M-Instruct on 127.0.0.1, driven by `caiflow run plans/sl_cai.sql`.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use caiflow::constitution::Constitution;
use common::*;

#[test]
fn sl_cai_plan_on_a_real_model() {
    let server = LlamaServer::start(8);
    let store = tempfile::tempdir().unwrap();
    let config = store.path().join("caiflow.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmodel = 'smollm2'\nmax_concurrency = 8\ntimeout_secs = 120\n",
            server.base_url()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .current_dir(repo_root())
        .args([
            "run",
            "plans/sl_cai.sql",
            "--config",
            config.to_str().unwrap(),
        ])
        .args(["--store", store.path().to_str().unwrap(), "--run", "real"])
        .args([
            "--set",
            "limit=20",
            "--set",
            "max_tokens=48",
            "--set",
            "helpful_ratio=0.2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    eprintln!(
        "sl_cai on SmolLM2: 20 prompts in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let run = store.path().join("real");
    let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .args(["sql", "--run", run.to_str().unwrap(), "-e"])
        .arg("SELECT prompt_id, response, critique, revision, principle_id, error FROM revisions")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Read the stored table back with DataFusion directly for exact checks.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.read_parquet(format!("{}/revisions/", run.display()), Default::default())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    assert_eq!(rows(&batches), 20);
    for col in ["response", "critique", "revision"] {
        for (i, v) in column(&batches, col).iter().enumerate() {
            assert!(
                v.as_deref().is_some_and(|s| !s.trim().is_empty()),
                "row {i}: empty {col}"
            );
        }
    }
    assert!(column(&batches, "error").iter().all(Option::is_none));
    let constitution: BTreeSet<String> = Constitution::default_embedded()
        .principles
        .into_iter()
        .map(|p| p.id)
        .collect();
    let drawn: BTreeSet<String> = column(&batches, "principle_id")
        .into_iter()
        .flatten()
        .collect();
    assert!(drawn.is_subset(&constitution), "{drawn:?}");
    assert!(drawn.len() >= 5, "principles should vary: {drawn:?}");

    // Another Parquet reader sees the same tables: pyarrow, with the split partitions.
    let python = std::env::var("CAIFLOW_PYTHON").unwrap();
    let check = format!(
        r#"
import pyarrow.dataset as ds
rev = ds.dataset("{run}/revisions", format="parquet").to_table()
assert rev.num_rows == 20, rev.num_rows
for c in ["prompt_id", "prompt", "response", "critique", "revision", "principle_id", "round", "error", "revise_lineage"]:
    assert c in rev.column_names, c
sft = ds.dataset("{run}/sft", format="parquet", partitioning="hive").to_table()
assert set(sft.column("split").to_pylist()) <= {{"train", "test"}}
assert sft.num_rows >= 20, sft.num_rows
print("pyarrow ok", rev.num_rows, sft.num_rows)
"#,
        run = run.display()
    );
    let out = Command::new(python).arg("-c").arg(check).output().unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for format in ["nemo-sft", "trl-sft"] {
        let out = Command::new(env!("CARGO_BIN_EXE_caiflow"))
            .args(["export", run.to_str().unwrap(), "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut n = 0;
        for file in String::from_utf8_lossy(&out.stdout).lines() {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let turns = if format == "nemo-sft" {
                    &v["conversations"]
                } else {
                    &v["messages"]
                };
                assert_eq!(turns.as_array().map(Vec::len), Some(2), "{line}");
                n += 1;
            }
        }
        assert!(n >= 20, "{format}: {n} rows exported");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_a_row_error_and_the_run_goes_on() {
    let server = LlamaServer::start(2);
    let session = session_for(&server.base_url(), |e| e.timeout_secs = 60.0);
    let dir = tempfile::tempdir().unwrap();
    let long = vec!["word"; 6000].join(" ");
    register_prompts(&session, dir.path(), &[&long, "Say hello."]).await;
    let out = collect(&session, "SELECT prompt, response, error FROM respond(prompts, few_shot => 'none', max_tokens => 16)").await;
    assert_eq!(rows(&out), 2);
    let errors = column(&out, "error");
    let responses = column(&out, "response");
    let failed: Vec<_> = errors.iter().flatten().collect();
    assert_eq!(failed.len(), 1, "{errors:?}");
    assert!(
        failed[0].contains("HTTP 400") && failed[0].contains("context"),
        "{}",
        failed[0]
    );
    assert_eq!(responses.iter().flatten().count(), 1);
}
