//! A cluster on this machine for tests and benchmarks: a `caiflow cluster scheduler` and
//! executors as separate processes on free ports of 127.0.0.1, killed (by PID) on drop, their
//! logs kept in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port `p` with `p + 1` free too (an executor's Flight and gRPC ports).
pub fn free_port_pair() -> u16 {
    loop {
        let Ok(a) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = a.local_addr() else { continue };
        let p = addr.port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

pub struct LocalCluster {
    bin: PathBuf,
    scheduler: Child,
    pub port: u16,
    /// (id, process) of each executor started, in order.
    pub executors: Vec<(String, Child)>,
    tasks: usize,
    /// Environment given to every process (`AWS_*` for an S3 store).
    env: Vec<(String, String)>,
    /// Arguments every executor gets (`--config`, `--allow`).
    executor_args: Vec<String>,
    logs: PathBuf,
    _logs: TempDir,
}

/// A temporary folder removed on drop (without a tempfile dependency here).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.executors {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    match std::fs::File::create(dir.join(name)) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

impl LocalCluster {
    /// Start a scheduler (executors lost after `executor_timeout` s) and `executors`
    /// executors with `tasks` task slots each; waits until all are registered.
    pub fn start(
        bin: &Path,
        executors: usize,
        tasks: usize,
        executor_timeout: u64,
    ) -> LocalCluster {
        Self::start_with_env(bin, executors, tasks, executor_timeout, vec![])
    }

    /// [`LocalCluster::start`], every process with `env` added to its environment.
    pub fn start_with_env(
        bin: &Path,
        executors: usize,
        tasks: usize,
        executor_timeout: u64,
        env: Vec<(String, String)>,
    ) -> LocalCluster {
        Self::start_with(bin, executors, tasks, executor_timeout, env, vec![])
    }

    /// [`LocalCluster::start_with_env`], every executor started with `executor_args` too
    /// (`--config FILE`, `--allow DIR`: what it may serve and touch).
    pub fn start_with(
        bin: &Path,
        executors: usize,
        tasks: usize,
        executor_timeout: u64,
        env: Vec<(String, String)>,
        executor_args: Vec<String>,
    ) -> LocalCluster {
        let logs = std::env::temp_dir().join(format!(
            "caiflow-cluster-{}-{}",
            std::process::id(),
            free_port_pair()
        ));
        std::fs::create_dir_all(&logs).expect("log folder");
        let port = free_port_pair();
        let scheduler = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args([
                "cluster",
                "scheduler",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--executor-timeout",
                &executor_timeout.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log_file(&logs, "scheduler.log"))
            .spawn()
            .expect("start the scheduler");
        let mut cluster = LocalCluster {
            bin: bin.to_path_buf(),
            scheduler,
            port,
            executors: vec![],
            tasks,
            env,
            executor_args,
            logs: logs.clone(),
            _logs: TempDir(logs),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the scheduler did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..executors {
            cluster.add_executor();
        }
        cluster.wait_for_executors(executors);
        cluster
    }

    /// `df://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    /// Start one more executor; returns its id (its address).
    pub fn add_executor(&mut self) -> String {
        let bind = format!("127.0.0.1:{}", free_port_pair());
        let n = self.executors.len();
        let child = Command::new(&self.bin)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args([
                "cluster",
                "executor",
                "--scheduler",
                &format!("127.0.0.1:{}", self.port),
                "--bind",
                &bind,
                "--concurrent-tasks",
                &self.tasks.to_string(),
                "--heartbeat",
                "1",
            ])
            .args(&self.executor_args)
            .stdout(Stdio::null())
            .stderr(log_file(&self.logs, &format!("executor-{n}.log")))
            .spawn()
            .expect("start an executor");
        self.executors.push((bind.clone(), child));
        bind
    }

    /// `kill -9` the executor `id`.
    pub fn kill_executor(&mut self, id: &str) {
        if let Some((_, child)) = self.executors.iter_mut().find(|(i, _)| i == id) {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Executors the scheduler lists (its REST API).
    pub fn registered(&self) -> usize {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return 0;
        };
        let req = format!(
            "GET /api/executors HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_err() {
            return 0;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        let Some((_, body)) = reply.split_once("\r\n\r\n") else {
            return 0;
        };
        // The body may be chunked: take the JSON array inside.
        let (Some(start), Some(end)) = (body.find('['), body.rfind(']')) else {
            return 0;
        };
        serde_json::from_str::<Vec<serde_json::Value>>(&body[start..=end])
            .map(|v| v.len())
            .unwrap_or(0)
    }

    pub fn wait_for_executors(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.registered() < n {
            assert!(
                Instant::now() < deadline,
                "{n} executors did not register; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every process's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.logs) else {
            return out;
        };
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("== {}\n", entry.file_name().to_string_lossy()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
