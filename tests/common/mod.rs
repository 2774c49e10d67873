//! Helpers shared by the integration tests: the `caiflow` command, configuration files of
//! mock endpoints, real servers (llama.cpp, moto), Python readers; and the session helpers
//! of [`session`].
#![allow(dead_code)]

mod session;
pub use session::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    python_with(&["-c", script])
}

/// Run the test venv's interpreter with `args` (a script file and its arguments); its
/// stdout.
pub fn python_with(args: &[&str]) -> String {
    let python = std::env::var("CAIFLOW_PYTHON")
        .expect("CAIFLOW_PYTHON is not set: run the tests through scripts/test.sh");
    let out = Command::new(python).args(args).output().expect("python");
    assert!(
        out.status.success(),
        "python {:?}: {}",
        args.first(),
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

/// The `caiflow` binary, run from the repository root: the one command builder of the tests.
pub fn caiflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    c.current_dir(repo_root());
    c
}

/// Run `cmd`, which must succeed: its stdout and stderr.
pub fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("run caiflow");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "caiflow failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

/// Write `dir/caiflow.toml` with one `[endpoints.NAME]` per `(name, base_url, more keys,
/// one per line)`: the one config writer of the tests. Returns its path.
pub fn write_config(dir: &Path, endpoints: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (name, base_url, keys) in endpoints {
        text.push_str(&format!("[endpoints.{name}]\nbase_url = '{base_url}'\n"));
        for line in keys.lines().map(str::trim).filter(|l| !l.is_empty()) {
            text.push_str(line);
            text.push('\n');
        }
    }
    let path = dir.join("caiflow.toml");
    std::fs::write(&path, text).expect("write caiflow.toml");
    path
}
