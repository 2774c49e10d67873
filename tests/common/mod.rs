//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;
use caiflow_llm::config::{Config, EndpointConfig};
use datafusion::arrow::array::RecordBatch;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A session whose `policy` endpoint points at `base_url`, with quick retries.
pub fn session_for(base_url: &str, configure: impl FnOnce(&mut EndpointConfig)) -> CaiSession {
    let mut e = EndpointConfig::openai(base_url, "mock-model");
    e.retry.initial_backoff_ms = 10;
    e.retry.max_backoff_ms = 50;
    e.timeout_secs = Some(5.0);
    configure(&mut e);
    let mut config = Config::default();
    config.endpoints.insert("policy".into(), e);
    CaiSession::new(Endpoints::from_config(&config).expect("endpoints"))
}

pub async fn collect(session: &CaiSession, sql: &str) -> Vec<RecordBatch> {
    session
        .ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `policy` and `judge` both on `endpoint` (of any kind this build has).
pub fn policy_and_judge(endpoint: EndpointConfig) -> CaiSession {
    let mut config = Config::default();
    for name in ["policy", "judge"] {
        config.endpoints.insert(name.into(), endpoint.clone());
    }
    let endpoints = caiflow_engine::endpoints(&config, caiflow_llm::CancellationToken::new());
    CaiSession::new(endpoints.expect("endpoints"))
}

/// The judge's principle mode over real samples of `prompts`: one row per prompt, none in
/// error, every soft label a probability. Returns the result for more checks.
pub async fn check_principle_mode(session: &CaiSession, prompts: &[&str]) -> Vec<RecordBatch> {
    let dir = tempfile::tempdir().expect("tempdir");
    register_prompts(session, dir.path(), prompts).await;
    let out = collect(
        session,
        "SELECT * FROM judge(sample(prompts, max_tokens => 16), mode => 'principle')",
    )
    .await;
    assert_eq!(rows(&out), prompts.len());
    let errors = column(&out, "error");
    assert!(errors.iter().all(Option::is_none), "{errors:?}");
    for p in column(&out, "chosen_prob") {
        let p: f64 = p.expect("chosen_prob").parse().expect("a number");
        assert!((0.0..=1.0).contains(&p), "{p}");
    }
    out
}

/// The message of a query that must fail when its result is collected.
pub async fn query_error(session: &CaiSession, sql: &str) -> String {
    match session.ctx.sql(sql).await {
        Err(e) => panic!("{sql} should plan and fail while running, but did not plan: {e}"),
        Ok(df) => match df.collect().await {
            Ok(_) => panic!("{sql} should have failed"),
            Err(e) => e.to_string(),
        },
    }
}

pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Every value of a column, as display strings ("" for null).
pub fn column(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = vec![];
    for b in batches {
        let c = b
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"));
        let f = ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).expect("formatter");
        for i in 0..b.num_rows() {
            out.push(if c.is_null(i) {
                None
            } else {
                Some(f.value(i).to_string())
            });
        }
    }
    out
}

/// Write prompts as JSONL `{"prompt": …}` and register them as table `prompts`.
pub async fn register_prompts(session: &CaiSession, dir: &Path, prompts: &[&str]) {
    let path = dir.join("prompts.jsonl");
    let text: String = prompts
        .iter()
        .map(|p| serde_json::json!({ "prompt": p }).to_string() + "\n")
        .collect();
    std::fs::write(&path, text).expect("write prompts");
    collect(
        session,
        &format!(
            "CREATE VIEW prompts AS SELECT * FROM red_team_prompts('{}')",
            path.display()
        ),
    )
    .await;
}

/// `n` prompts `"{prefix}{i}"`, as the owned strings and the slices tests pass around.
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Register `n` numbered prompts as table `prompts`.
pub async fn register_numbered_prompts(session: &CaiSession, dir: &Path, prefix: &str, n: usize) {
    let prompts = numbered(prefix, n);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    register_prompts(session, dir, &refs).await;
}

/// Where shared fixtures live; `None` (the test then says so and skips) unless CI demands them.
pub fn fixture(relative: &str) -> Option<PathBuf> {
    let path = repo_root()
        .join("..")
        .join("shared")
        .join("fixtures")
        .join(relative);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CAIFLOW_REQUIRE_FIXTURES").is_ok_and(|v| v == "1") {
        panic!(
            "fixture {} is missing and CAIFLOW_REQUIRE_FIXTURES=1",
            path.display()
        );
    }
    eprintln!("SKIP: fixture {} not found", path.display());
    None
}

/// A real llama.cpp server (PyPI `xllamacpp`) serving SmolLM2, started for a test and
/// stopped on drop. Needs CAIFLOW_PYTHON (a Python with xllamacpp) and CAIFLOW_MODEL (the
/// GGUF), which `scripts/test.sh` sets up; without them the test fails, it does not skip.
pub struct LlamaServer {
    child: Child,
    pub port: u16,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        unsafe_kill(self.child.id());
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl LlamaServer {
    pub fn start(parallel: usize) -> LlamaServer {
        let python = std::env::var("CAIFLOW_PYTHON")
            .expect("CAIFLOW_PYTHON is not set: run the tests through scripts/test.sh, which installs the llama.cpp server");
        let model = std::env::var("CAIFLOW_MODEL")
            .expect("CAIFLOW_MODEL is not set: run the tests through scripts/test.sh, which fetches SmolLM2");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("caiflow-llama-{port}.log")))
                .expect("log");
        let child = Command::new(python)
            .arg(repo_root().join("tests/support/llama_server.py"))
            .arg(&model)
            .arg(port.to_string())
            .arg(parallel.to_string())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start llama server");
        let server = LlamaServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.contains("\"ok\"") {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "llama server on port {port} did not become healthy in 90 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

/// A real S3-compatible server (PyPI `moto[s3]`'s `moto_server`) on a free port, stopped on
/// drop. Needs CAIFLOW_MOTO (the `moto_server` program), which `scripts/setup.sh` installs.
pub struct MotoServer {
    child: Child,
    pub port: u16,
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        unsafe_kill(self.child.id());
        let _ = self.child.wait();
    }
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let program = std::env::var("CAIFLOW_MOTO")
            .expect("CAIFLOW_MOTO is not set: run the tests through scripts/test.sh, which installs moto_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto accepts any credentials).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    /// The environment the AWS client of object_store reads.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

/// Whether table `table` of a local run has a committed Delta version.
pub fn committed(run: &Path, table: &str) -> bool {
    std::fs::read_dir(run.join(table).join("_delta_log"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .unwrap_or(false)
}

/// Run a Python script with the test venv's interpreter (pyarrow, deltalake, polars); its
/// stdout.
pub fn python(script: &str) -> String {
    let python = std::env::var("CAIFLOW_PYTHON")
        .expect("CAIFLOW_PYTHON is not set: run the tests through scripts/test.sh");
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A finished process's stdout and stderr, as text.
pub fn output_text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Run the `caiflow` binary from the repository root, which must succeed: stdout, stderr.
pub fn caiflow_ok(args: &[&str]) -> (String, String) {
    let out = caiflow_output(args);
    let (stdout, stderr) = output_text(&out);
    assert!(
        out.status.success(),
        "caiflow {args:?} failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// The cells of the first row of a printed table (`| a | b |`) that contains `marker`.
pub fn table_row(stdout: &str, marker: &str) -> Vec<String> {
    stdout
        .lines()
        .find(|l| l.starts_with('|') && l.contains(marker))
        .unwrap_or_else(|| panic!("no row with {marker} in {stdout}"))
        .split('|')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Run the `caiflow` binary from the repository root; its output, whatever the status.
pub fn caiflow_output(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .current_dir(repo_root())
        .args(args)
        .output()
        .expect("run caiflow")
}
