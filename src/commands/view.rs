//! `caiflow view RUN`: serve the run's rows to a browser until Ctrl-C.

use anyhow::Context;

use caiflow_llm::CancellationToken;
use caiflow_run::store::RunStore;

use super::Exit;

/// `caiflow view RUN [--port P] [--bind ADDR] [--config FILE]`.
pub async fn view(
    run: String,
    bind: &str,
    port: u16,
    config: Option<std::path::PathBuf>,
) -> anyhow::Result<Exit> {
    let report = crate::config::load_report(config.as_deref())?;
    let store = RunStore::open_spec(&run)?;
    let viewer = caiflow_view::Viewer::open(store, &report).await?;
    if viewer.sl.is_none() && viewer.rl.is_none() {
        eprintln!(
            "caiflow: {} has no committed SL-CAI or RL-CAI table yet: the viewer shows none",
            viewer.run
        );
    }
    let listener = tokio::net::TcpListener::bind((bind, port))
        .await
        .with_context(|| format!("listening on {bind}:{port} (choose another with --port)"))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "caiflow: warning: listening on {addr}, not this machine only: anyone who can reach it reads the run's rows (there is no login); --bind 127.0.0.1 keeps it local"
        );
    }
    eprintln!(
        "caiflow: viewing {} at http://{addr}/ (Ctrl-C stops)",
        viewer.run
    );
    let stop = CancellationToken::new();
    let on_interrupt = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_interrupt.cancel();
    });
    caiflow_view::serve(viewer, listener, stop).await?;
    Ok(Exit::Success)
}
