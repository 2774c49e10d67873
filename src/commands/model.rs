//! `caiflow model pull`: fetch a GGUF model (Hugging Face, a URL or a file), checked by
//! sha256.

use std::path::PathBuf;

use super::Exit;

/// `caiflow model pull`.
pub async fn pull(
    source: Option<String>,
    dir: PathBuf,
    sha256: Option<String>,
) -> anyhow::Result<Exit> {
    let source = caiflow_llm::models::Source::parse(source.as_deref());
    if !matches!(source, caiflow_llm::models::Source::File(_)) {
        eprintln!("fetching {} into {}", source.file_name(), dir.display());
    }
    let pulled = caiflow_llm::models::pull(&source, &dir, sha256.as_deref()).await?;
    let state = if pulled.already_present {
        "already present"
    } else {
        "pulled"
    };
    println!(
        "{} ({state}, {:.1} MB, sha256 {})",
        pulled.path.display(),
        pulled.bytes as f64 / 1e6,
        pulled.sha256
    );
    Ok(Exit::Success)
}
