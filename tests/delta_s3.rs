//! Delta commits on S3 (moto) without an external lock: two writers race for the same table
//! version; the log's put-if-absent lets exactly one win it, and the other gets a clear
//! error or commits the next version after checking for conflicts. Nothing is lost or torn.
//! (Its own test binary: it sets the AWS variables of this process.)

mod common;

use caiflow_llm::CancellationToken;
use caiflow_run::delta;
use caiflow_run::store::RunStore;
use common::*;
use datafusion::prelude::SessionContext;

async fn write(store: &RunStore, ctx: &SessionContext, writer: u32) -> Result<u64, String> {
    let df = ctx
        .sql(&format!(
            "SELECT {writer} AS writer, v AS row FROM (VALUES (1), (2), (3)) t(v)"
        ))
        .await
        .map_err(|e| e.to_string())?;
    delta::write(
        store,
        "t",
        df,
        vec![],
        serde_json::json!({ "writer": writer }),
        CancellationToken::new(),
    )
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_for_one_version_on_s3() {
    let moto = MotoServer::start();
    moto.create_bucket("race");
    for (k, v) in moto.env() {
        // SAFETY: this test binary has this one test; no other thread reads the environment yet.
        unsafe { std::env::set_var(k, v) };
    }
    let store = RunStore::open("s3://race/runs", "r").expect("store");
    let ctx = SessionContext::new();
    store.register(&ctx);
    assert_eq!(write(&store, &ctx, 0).await, Ok(0));

    for round in 0..5u32 {
        let (a, b) = tokio::join!(
            write(&store, &ctx, 10 * round + 1),
            write(&store, &ctx, 10 * round + 2)
        );
        let won: Vec<u64> = [&a, &b]
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .copied()
            .collect();
        assert!(
            !won.is_empty(),
            "round {round}: nobody committed: {a:?} {b:?}"
        );
        for r in [&a, &b] {
            if let Err(e) = r {
                assert!(e.contains("writing table t"), "a clear error: {e}");
            }
        }
        if won.len() == 2 {
            assert_ne!(won[0], won[1], "two commits of one version: {a:?} {b:?}");
        }
        // The table is whole: one writer's three rows, and its log has one entry a version.
        let table = delta::open(&store, "t", None)
            .await
            .expect("open")
            .expect("a table");
        let history = delta::history(&table).await.expect("history");
        let latest = history.first().expect("a version");
        assert_eq!(latest.version + 1, history.len() as u64);
        let winner = latest.record.as_ref().expect("caiflow's record")["writer"]
            .as_u64()
            .expect("writer");
        let rows = ctx
            .read_table(delta::provider(&table).await.expect("provider"))
            .expect("read")
            .collect()
            .await
            .expect("rows");
        let written: Vec<String> = column(&rows, "writer").into_iter().flatten().collect();
        assert_eq!(written.len(), 3, "{written:?}");
        assert!(
            written.iter().all(|w| *w == winner.to_string()),
            "{written:?} vs {winner}"
        );
        eprintln!(
            "round {round}: {a:?} / {b:?}; latest v{} by writer {winner}",
            latest.version
        );
    }
}
