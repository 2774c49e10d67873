//! What hostile or careless input costs in memory: peak RSS reading a large JSON-array prompts
//! file against the same records as JSONL (the array is streamed), and peak RSS of `llm()`
//! calls against a server whose every answer is an endless body (read up to
//! `max_response_mib`, then failed).
//!
//! It also runs the parsers of outside data (server replies, judge verdicts, caiflow.toml,
//! plan variables) on random inputs: 20 s each under `cargo bench`, 1 s under `cargo test`
//! (the CI's short property runs are the proptests beside each parser).
//!
//! `cargo bench --bench trust [-- MIB]` (default 1,024 MiB of records). Under `cargo test` it
//! runs a 16 MiB smoke version.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use caiflow_testkit::proc_status::wait_with_peak_rss;
use caiflow_testkit::{Fault, MockServer};

/// Write `mib` MiB of red-team records as one JSON array and as JSONL; returns both paths
/// and the record count.
fn write_inputs(
    dir: &std::path::Path,
    mib: usize,
) -> (std::path::PathBuf, std::path::PathBuf, usize) {
    let array = dir.join("records.json");
    let lines = dir.join("records.jsonl");
    let mut a = std::io::BufWriter::new(std::fs::File::create(&array).expect("array"));
    let mut l = std::io::BufWriter::new(std::fs::File::create(&lines).expect("jsonl"));
    a.write_all(b"[").expect("write");
    let (mut written, mut n) = (0usize, 0usize);
    while written < mib << 20 {
        let record = serde_json::json!({
            "transcript": format!(
                "\n\nHuman: red-team attempt {n}: {}\n\nAssistant: I can't help with that.",
                "some words that make the attempt as long as real ones are ".repeat(6)
            ),
            "rating": n % 5,
        })
        .to_string();
        if n > 0 {
            a.write_all(b",\n").expect("write");
        }
        a.write_all(record.as_bytes()).expect("write");
        l.write_all(record.as_bytes()).expect("write");
        l.write_all(b"\n").expect("write");
        written += record.len() + 2;
        n += 1;
    }
    a.write_all(b"]").expect("write");
    a.flush().expect("flush");
    l.flush().expect("flush");
    (array, lines, n)
}

fn count(path: &std::path::Path) -> (f64, f64, String) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .args(["sql", "-e"])
        .arg(format!(
            "SELECT count(*) AS n FROM red_team_prompts('{}', dedup => false)",
            path.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("caiflow sql");
    let (status, peak) = wait_with_peak_rss(&mut child).expect("wait");
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
    }
    assert!(status.success(), "{out}");
    (peak, started.elapsed().as_secs_f64(), out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mib: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 1024 } else { 16 });
    fuzz_parsers(if benching { 20.0 } else { 1.0 });
    let dir = tempfile::tempdir().expect("tempdir");
    let (array, lines, n) = write_inputs(dir.path(), mib);
    for (what, path) in [("JSON array", &array), ("JSONL", &lines)] {
        let (peak, secs, out) = count(path);
        assert!(out.contains(&n.to_string()), "{out}");
        println!(
            "trust_inputs: {what} of {mib} MiB ({n} records): peak RSS {peak:.0} MiB, {secs:.1} s"
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = MockServer::start().await.expect("mock");
        let calls = if benching { 64 } else { 8 };
        // Every attempt of every call gets an endless body.
        server.push_faults((0..calls * 5).map(|_| Fault::Endless));
        let config = dir.path().join("caiflow.toml");
        std::fs::write(
            &config,
            format!(
                "[endpoints.policy]\nbase_url = '{}'\nmax_concurrency = 8\ntimeout_secs = 60\n",
                server.base_url()
            ),
        )
        .expect("config");
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_caiflow"))
            .args(["sql", "--config"])
            .arg(&config)
            .arg("-e")
            .arg(format!(
                "SELECT llm('policy', 'x' || CAST(v AS VARCHAR)) AS a FROM (SELECT unnest(range({calls})) AS v)"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("caiflow sql");
        let (_, peak) = tokio::task::spawn_blocking(move || wait_with_peak_rss(&mut child))
            .await
            .expect("join")
            .expect("wait");
        println!(
            "trust_endless: {calls} llm() calls, 8 at once, every body endless (16 MiB limit): peak RSS {peak:.0} MiB, {:.1} s, {} requests",
            started.elapsed().as_secs_f64(),
            server.requests()
        );
    });
}

/// The longer property run: random inputs through the parsers of outside data (server
/// replies, judge verdicts, caiflow.toml, plan variables) for a few seconds each, counting
/// cases; any panic fails the bench.
fn fuzz_parsers(seconds: f64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2212_08073);
    let pieces = [
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "choices",
        "message",
        "content",
        "usage",
        "prompt_tokens",
        "9223372036854775808",
        "-1",
        "1e308",
        "null",
        "true",
        "é",
        "\u{2028}",
        "chosen",
        "rejected",
        "'",
        "(A)",
        "(B)",
        "[endpoints.p]",
        "base_url",
        "=",
        "\n",
        "${",
        "}",
        ":-",
        "max_concurrency",
        "0",
        "inf",
        "nan",
        "\\",
        "<think>",
        "\u{7f}",
    ];
    let random_text = |rng: &mut rand_chacha::ChaCha8Rng| -> String {
        let n = rng.gen_range(0..40);
        (0..n)
            .map(|_| {
                if rng.gen_bool(0.8) {
                    pieces[rng.gen_range(0..pieces.len())].to_string()
                } else {
                    char::from_u32(rng.gen_range(0..0x3000))
                        .unwrap_or('?')
                        .to_string()
                }
            })
            .collect()
    };
    let mut vars = std::collections::BTreeMap::new();
    for (name, parse) in [
        ("server replies", 0),
        ("judge verdicts", 1),
        ("caiflow.toml", 2),
        ("plan variables", 3),
    ] {
        let started = Instant::now();
        let mut cases = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            let text = random_text(&mut rng);
            match parse {
                0 => {
                    let _ = caiflow_llm::openai::parse_chat_body(&text);
                }
                1 => {
                    let _ = caiflow_engine::parse::verdict::parse_verdict(&text, 4);
                }
                2 => {
                    let _ = caiflow_llm::config::Config::parse(&text);
                }
                _ => {
                    vars.insert("v".to_string(), text.clone());
                    let _ = caiflow_run::plan::substitute("SELECT '${v}', ${v}", &vars);
                    let _ = caiflow_run::plan::substitute(&text, &vars);
                }
            }
            cases += 1;
        }
        println!("trust_fuzz: {name}: {cases} random inputs in {seconds:.0} s, no panic");
    }
}
