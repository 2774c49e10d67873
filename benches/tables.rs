//! Table figures: committing a run table as a Delta table (10k and 1M rows) against the
//! previous layout (Parquet files plus a JSON manifest written last), `inspect` (reading
//! every table's latest record and counts), and the start of a resumed run whose 10 tables
//! are all committed and reused.
//!
//! `cargo bench --bench tables` (release) or `cargo test --bench tables` (debug); rows are
//! shaped like a small `revisions` table (ids, text, an error column).

use std::time::Instant;

use bytes::Bytes;
use caiflow_engine::CaiSession;
use caiflow_llm::{CancellationToken, Endpoints};
use caiflow_run::materialize::{RunOptions, Runner, manifests};
use caiflow_run::store::RunStore;
use datafusion::dataframe::DataFrameWriteOptions;

fn rows_sql(n: usize) -> String {
    format!(
        "SELECT CAST(value AS VARCHAR) AS prompt_id, \
                concat('a revision of prompt ', CAST(value AS VARCHAR), ' that is a little longer than a title') AS revision, \
                CASE WHEN value % 50 = 0 THEN 'endpoint failed' END AS error, \
                CASE WHEN value % 10 = 0 THEN 'test' ELSE 'train' END AS split \
         FROM generate_series(1, {n})"
    )
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_root = dir.path().to_str().expect("path").to_string();
    let session = CaiSession::new(Endpoints::default());

    for n in [10_000usize, 1_000_000] {
        // Delta: one overwrite commit.
        let store = RunStore::open(&store_root, &format!("delta-{n}")).expect("store");
        store.register(&session.ctx);
        let df = session.ctx.sql(&rows_sql(n)).await.expect("sql");
        let started = Instant::now();
        let files = Default::default();
        let write = caiflow_run::delta::TableWrite {
            store: &store,
            name: "revisions",
            partition_by: vec!["split".into()],
            record: serde_json::json!({ "bench": true }),
            files: &files,
            stop: CancellationToken::new(),
        };
        caiflow_run::delta::write(write, df)
            .await
            .expect("delta write");
        let delta = started.elapsed().as_secs_f64();
        let files = parquet_files(&dir.path().join(format!("delta-{n}/revisions")));

        // The manifest layout: Parquet into an attempt folder, then the manifest.
        let store = RunStore::open(&store_root, &format!("manifest-{n}")).expect("store");
        let df = session.ctx.sql(&rows_sql(n)).await.expect("sql");
        let started = Instant::now();
        df.write_parquet(
            &store.location("revisions/1/"),
            DataFrameWriteOptions::new().with_partition_by(vec!["split".into()]),
            None,
        )
        .await
        .expect("parquet");
        store
            .put(
                "revisions/_manifest.json",
                Bytes::from(
                    serde_json::to_vec(&serde_json::json!({ "data": "revisions/1/" }))
                        .expect("json"),
                ),
            )
            .await
            .expect("manifest");
        let manifest = started.elapsed().as_secs_f64();
        println!(
            "commit {n} rows: delta {delta:.2} s ({files} Parquet files), parquet+manifest {manifest:.2} s"
        );
    }

    // A run with 10 committed tables of 10k rows: inspect, and a resumed run's start.
    let store = RunStore::open(&store_root, "ten").expect("store");
    let plan: String = (0..10)
        .map(|i| format!("CREATE TABLE t{i} AS {};\n", rows_sql(10_000)))
        .collect();
    let stop = CancellationToken::new();
    let options = || RunOptions {
        stop: stop.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    Runner::new(&session, &store, options())
        .run(&plan, |_| {})
        .await
        .expect("first run");
    let first = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let ms = manifests(&store).await.expect("manifests");
    let inspect = started.elapsed().as_secs_f64();
    assert_eq!(ms.len(), 10);
    let resumed_session = CaiSession::new(Endpoints::default());
    let started = Instant::now();
    let mut runner = Runner::new(&resumed_session, &store, options());
    runner.run(&plan, |_| {}).await.expect("resumed run");
    let resumed = started.elapsed().as_secs_f64();
    assert!(
        runner
            .tables
            .iter()
            .all(|(_, o)| *o == caiflow_run::materialize::TableOutcome::Reused)
    );
    println!(
        "10 tables x 10k rows: first run {first:.2} s; inspect (records and counts) {inspect:.2} s; resumed run, all reused {resumed:.2} s"
    );
}

/// Parquet files under `dir`, in every sub-folder.
fn parquet_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .map(|p| {
            if p.is_dir() {
                parquet_files(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "parquet"))
            }
        })
        .sum()
}
