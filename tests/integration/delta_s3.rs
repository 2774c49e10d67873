//! Delta commits on S3 (moto) without an external lock: two writers race for the same table
//! version; the log's put-if-absent lets exactly one win it, and the other gets a clear
//! error or commits the next version after checking for conflicts. Nothing is lost or torn.
//! A Delta table on S3 is a plan input: read by `red_team_prompts` and `CREATE EXTERNAL TABLE
//! … STORED AS DELTA`, fingerprinted by its latest commit.
//! (Its own test binary: it sets the AWS variables of this process.)

use crate::common::*;
use caiflow_llm::CancellationToken;
use caiflow_run::delta;
use caiflow_run::store::RunStore;
use datafusion::prelude::SessionContext;

async fn write(store: &RunStore, ctx: &SessionContext, writer: u32) -> Result<u64, String> {
    write_rows(
        store,
        ctx,
        "t",
        &format!("SELECT {writer} AS writer, v AS row FROM (VALUES (1), (2), (3)) t(v)"),
        writer,
    )
    .await
}

async fn write_rows(
    store: &RunStore,
    ctx: &SessionContext,
    table: &str,
    sql: &str,
    writer: u32,
) -> Result<u64, String> {
    let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
    let files = Default::default();
    let write = delta::TableWrite {
        store,
        name: table,
        partition_by: vec![],
        record: serde_json::json!({ "writer": writer }),
        files: &files,
        stop: CancellationToken::new(),
    };
    delta::write(write, df).await.map_err(|e| e.to_string())
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

    delta_tables_on_s3_are_plan_inputs(&ctx).await;
}

async fn delta_tables_on_s3_are_plan_inputs(ctx: &SessionContext) {
    let inputs = RunStore::open("s3://race/inputs", "r").expect("store");
    inputs.register(ctx);
    let prompts = "SELECT 'an s3 prompt ' || v AS prompt FROM (VALUES (1), (2), (3), (4)) t(v)";
    write_rows(&inputs, ctx, "prompts", prompts, 0)
        .await
        .expect("write the input");
    let location = "s3://race/inputs/r/prompts";

    // A session that knows nothing of the bucket: it is registered from the AWS variables.
    let session = caiflow_engine::CaiSession::new(caiflow_llm::Endpoints::default());
    delta::register_delta_tables(&session);
    let sql = format!(
        "CREATE EXTERNAL TABLE p STORED AS DELTA LOCATION '{location}'; \
         SELECT (SELECT count(*) FROM red_team_prompts('{location}')) AS read, \
                (SELECT count(*) FROM p) AS external"
    );
    caiflow_run::inputs::register_s3_inputs(&session.ctx, &sql).expect("buckets");
    let mut batches = vec![];
    for statement in sql.split(';') {
        batches = collect(&session, statement).await;
    }
    assert_eq!(column(&batches, "read"), vec![Some("4".to_string())]);
    assert_eq!(column(&batches, "external"), vec![Some("4".to_string())]);

    // Its fingerprint is its latest commit: a new version changes it.
    let env = session.ctx.runtime_env();
    let first = delta::input_fingerprint(&env, location)
        .await
        .expect("fingerprint")
        .expect("a Delta table");
    assert_eq!(
        delta::input_fingerprint(&env, location)
            .await
            .expect("again"),
        Some(first.clone())
    );
    write_rows(&inputs, ctx, "prompts", prompts, 1)
        .await
        .expect("a new version");
    let second = delta::input_fingerprint(&env, location)
        .await
        .expect("fingerprint")
        .expect("a Delta table");
    assert_ne!(first, second);
    assert_eq!(
        delta::input_fingerprint(&env, "s3://race/inputs/r/no-such-table")
            .await
            .expect("no table"),
        None
    );
}
