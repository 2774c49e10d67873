//! End to end on a real model: SmolLM2 behind llama.cpp's own server and embedded in
//! process. Its own binary, so its tests do not share the cores with the others'.

#[path = "../common/mod.rs"]
mod common;

mod e2e_embedded;
mod e2e_llama;

/// A committed table of a local run (`store/run`), read through its manifest.
pub async fn committed_table(
    run: &std::path::Path,
    table: &str,
) -> Vec<datafusion::arrow::array::RecordBatch> {
    let (store, name) = (
        run.parent().unwrap().to_str().unwrap(),
        run.file_name().unwrap().to_str().unwrap(),
    );
    let store = caiflow_run::store::RunStore::open(store, name).unwrap();
    let session = caiflow_engine::CaiSession::new(caiflow_llm::Endpoints::default());
    caiflow_run::materialize::register_run_tables(&session, &store)
        .await
        .unwrap();
    common::collect(&session, &format!("SELECT * FROM {table}")).await
}
