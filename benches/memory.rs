//! Cost that does not grow with the run: each `caiflow` runs as its own process, and so does
//! the OpenAI-compatible mock (this program, started again with `--serve-mock`), so the
//! figures are caiflow's alone.
//!
//! 1. One LLM stage (`respond`) over N prompts at zero latency with ~200-word answers: peak
//!    RSS and CPU time per request of caiflow, for each N, in a first run and in a re-run
//!    served entirely from the journal (`--from responses`).
//! 2. A synthetic journal of J entries (~1 KB answers): time from the start of a resumed run
//!    to its first new request, and peak RSS until then.
//! 3. With `--sl N`: SL-CAI (respond → critique → revise) over N prompts at zero latency:
//!    wall time, requests/s, peak RSS.
//!
//! `cargo bench --bench memory [-- --prompts 20000,200000 --journal 10000000 --sl 1000000]`;
//! under `cargo test` a smoke run (1,000 and 2,000 prompts, a 20,000-entry journal).

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caiflow_llm::{Completion, RequestHash};
use caiflow_run::journal::SegmentWriter;
use caiflow_testkit::MockServer;
use caiflow_testkit::proc_status::{children_cpu, peak_rss_mib};

/// Words in each mock answer (~1.3 KB).
const ANSWER_WORDS: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-mock") {
        serve_mock();
        return;
    }
    let benching = args.iter().any(|a| a == "--bench");
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let prompts: Vec<usize> = option("--prompts")
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if benching {
                vec![20_000, 200_000]
            } else {
                vec![1_000, 2_000]
            }
        });
    let journal: usize = option("--journal")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 10_000_000 } else { 20_000 });
    let sl: Option<usize> = option("--sl").and_then(|v| v.parse().ok());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("memory: caiflow {build} build");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut mock = MockProcess::start();
    std::fs::write(
        dir.path().join("caiflow.toml"),
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmax_concurrency = 64\n",
            mock.base_url
        ),
    )
    .expect("config");

    let plan = dir.path().join("respond.sql");
    std::fs::write(
        &plan,
        "CREATE TABLE responses AS SELECT prompt_id, response, error FROM \
         respond(red_team_prompts('${prompts}'), few_shot => 'none', max_tokens => 400);\n",
    )
    .expect("plan");
    for &n in &prompts {
        let prompts = write_prompts(dir.path(), n);
        let run = |extra: &[&str]| {
            let mut c = caiflow();
            c.arg("run")
                .arg(&plan)
                .arg("--store")
                .arg(dir.path().join("store"))
                .args(["--run", &format!("respond-{n}"), "--config"])
                .arg(dir.path().join("caiflow.toml"))
                .arg("--set")
                .arg(format!("prompts={}", prompts.display()))
                .args(extra);
            measure(c)
        };
        let first = run(&[]);
        let again = run(&["--from", "responses"]);
        for (what, m) in [("first run", first), ("re-run from the journal", again)] {
            println!("memory: respond over {n} prompts, {what}: {}", m.figures(n));
        }
    }

    synthetic_journal(dir.path(), journal);

    if let Some(n) = sl {
        let prompts = write_prompts(dir.path(), n);
        let mut c = caiflow();
        c.args(["run", "plans/sl_cai.sql", "--store"])
            .arg(dir.path().join("store"))
            .args(["--run", &format!("sl-{n}"), "--config"])
            .arg(dir.path().join("caiflow.toml"))
            .arg("--set")
            .arg(format!("prompts={}", prompts.display()))
            .args(["--set", "few_shot=none", "--set", "max_tokens=400"]);
        let m = measure(c);
        let requests = 3 * n;
        println!(
            "memory: SL-CAI over {n} prompts ({requests} requests): {}",
            m.figures(requests)
        );
    }
    mock.stop();
}

/// A journal of `entries` results (none of them asked for again), then a run that resumes
/// on it: time to its first new request and peak RSS until then.
fn synthetic_journal(dir: &Path, entries: usize) {
    let run = dir.join("store").join("big");
    let folder = run.join("journal");
    std::fs::create_dir_all(&folder).expect("journal folder");
    std::fs::write(
        folder.join("SCHEME"),
        format!("{}\n", caiflow_llm::REQUEST_HASH_SCHEME),
    )
    .expect("scheme");
    let started = Instant::now();
    let per_segment = 100_000;
    let text = "journalled answer ".repeat(55);
    let mut written = 0usize;
    let mut bytes = 0u64;
    for s in 0..entries.div_ceil(per_segment) {
        let mut segment = SegmentWriter::default();
        for i in written..(written + per_segment).min(entries) {
            let mixed = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let hash = RequestHash::from_hex(format!("{mixed:016x}{i:048x}"));
            let completion = Completion {
                text: format!("{text}{i}"),
                finish_reason: Some("stop".into()),
                prompt_tokens: Some(10),
                completion_tokens: Some(200),
                ..Default::default()
            };
            segment.push_ok(&hash, completion).expect("line");
        }
        written = (written + per_segment).min(entries);
        let (data, index) = segment.finish();
        bytes += data.len() as u64;
        std::fs::write(folder.join(format!("synthetic-{s:05}.jsonl")), data).expect("segment");
        std::fs::write(folder.join(format!("synthetic-{s:05}.idx")), index).expect("index");
    }
    println!(
        "memory: wrote a synthetic journal of {entries} entries ({:.1} GB of answers) in {:.1} s",
        bytes as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = MockServer::start().await.expect("mock");
        let config = dir.join("journal.toml");
        std::fs::write(
            &config,
            format!("[endpoints.policy]\nbase_url = '{}'\n", server.base_url()),
        )
        .expect("config");
        let prompts = write_prompts(dir, 10);
        let plan = dir.join("respond.sql");
        let started = Instant::now();
        let mut child = caiflow()
            .arg("run")
            .arg(&plan)
            .arg("--store")
            .arg(dir.join("store"))
            .args(["--run", "big", "--config"])
            .arg(&config)
            .arg("--set")
            .arg(format!("prompts={}", prompts.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut peak = 0.0f64;
        while server.first_request_at().is_none() {
            peak = peak.max(peak_rss_mib(child.id()));
            assert!(
                child.try_wait().expect("wait").is_none(),
                "caiflow ended before its first request"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = server
            .first_request_at()
            .expect("first request")
            .duration_since(started);
        peak = peak.max(peak_rss_mib(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "memory: resume on a journal of {entries} entries: first new request after {:.2} s, peak RSS {peak:.0} MiB until then",
            first.as_secs_f64()
        );
    });
}

fn caiflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caiflow"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

struct Measured {
    wall: Duration,
    peak_rss_mib: f64,
    cpu: Duration,
}

impl Measured {
    /// Peak RSS, wall time, requests/s and CPU per request for a run of `requests`.
    fn figures(&self, requests: usize) -> String {
        format!(
            "peak RSS {:.0} MiB, {:.1} s, {:.0} requests/s, CPU {:.3} ms per request",
            self.peak_rss_mib,
            self.wall.as_secs_f64(),
            requests as f64 / self.wall.as_secs_f64(),
            self.cpu.as_secs_f64() * 1000.0 / requests as f64
        )
    }
}

/// Run `cmd` to its end, sampling its peak RSS; its CPU time comes from this process's
/// children's times (only waited-for children count, and the mock is not waited for).
fn measure(mut cmd: Command) -> Measured {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut child: Child = cmd.spawn().expect("spawn caiflow");
    let stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            tail.push_back(line);
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });
    let mut peak = 0.0f64;
    let status = loop {
        peak = peak.max(peak_rss_mib(child.id()));
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed();
    let tail = errors.join().unwrap_or_default();
    assert!(status.success(), "caiflow failed:\n{tail}");
    Measured {
        wall,
        peak_rss_mib: peak,
        cpu: children_cpu().saturating_sub(cpu_before),
    }
}

fn write_prompts(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join(format!("prompts-{n}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("prompts"));
    for i in 0..n {
        writeln!(f, "{{\"prompt\": \"memory bench prompt number {i}\"}}").expect("write");
    }
    path
}

/// The mock in its own process: this program with `--serve-mock`.
struct MockProcess {
    child: Child,
    base_url: String,
}

impl MockProcess {
    fn start() -> MockProcess {
        let mut child = Command::new(std::env::current_exe().expect("this program"))
            .arg("--serve-mock")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the mock");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the mock's address");
        MockProcess {
            child,
            base_url: line.trim().to_string(),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_mock() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = MockServer::start().await.expect("mock");
        server.keep_bodies(false);
        server.set_answer_words(ANSWER_WORDS);
        println!("{}", server.base_url());
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
    });
}
