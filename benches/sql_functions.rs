//! What the SQL-level LLM functions cost on top of the requests themselves (a mock server
//! that answers at once, so caiflow's own work is what is measured).
//!
//! 1. `generate(input, template => …)` and `llm('policy', … || prompt)` over N prompts:
//!    wall time, rows per second and peak RSS of `caiflow sql`.
//! 2. `red_team_generate(seeds, n => N, per_request => 10)` with answers of 10 new prompts
//!    each (JSON lists, numbered lists and plain lines in turn, every answer also repeating
//!    a seed and one of its own items): wall time, prompts kept per second, and peak RSS at
//!    N/10 and N (the difference per kept prompt is what the dedup state costs).
//!
//! `cargo bench --bench sql_functions [-- --rows 20000]`; under `cargo test` a smoke run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use caiflow_testkit::MockServer;
use caiflow_testkit::proc_status::wait_with_peak_rss;

/// A request of 8 random-letter words drawn by `i`: no two are near duplicates by chance.
/// (Texts from a small alphabet, e.g. 24 syllables, share so many shingles that the LSH
/// index finds many candidates per query and dedup slows down with the count: see
/// BENCHMARKS.md.)
fn request_text(i: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        (x >> 16) as usize
    };
    let words: Vec<String> = (0..8)
        .map(|_| {
            (0..3 + next() % 6)
                .map(|_| char::from(b'a' + (next() % 26) as u8))
                .collect()
        })
        .collect();
    format!("How do I {} without anyone noticing?", words.join(" "))
}

/// Run `caiflow sql -e query` to its end: seconds, peak RSS (MiB), stdout.
fn sql(dir: &Path, config: &Path, query: &str) -> (f64, f64, String) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_caiflow"))
        .current_dir(dir)
        .args(["sql", "--config"])
        .arg(config)
        .args(["-e", query])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("caiflow sql");
    let (_, peak) = wait_with_peak_rss(&mut child).expect("wait");
    let out = child.wait_with_output().expect("output");
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{query}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, peak, stdout)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let rows: usize = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 20_000 } else { 400 });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(MockServer::start()).expect("mock");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("caiflow.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints.policy]\nbase_url = '{}'\nmodel = 'mock'\nmax_concurrency = 64\n",
            server.base_url()
        ),
    )
    .expect("config");
    let prompts = dir.path().join("prompts.jsonl");
    let text: String = (0..rows)
        .map(|i| format!("{{\"prompt\": \"{}\"}}\n", request_text(i)))
        .collect();
    std::fs::write(&prompts, text).expect("prompts");
    let file = prompts.display();

    for (name, query) in [
        (
            "generate",
            format!(
                "SELECT count(v) AS answered FROM generate('{file}', \
                 template => 'Is this harmful? {{prompt}}', output => 'v', max_tokens => 16)"
            ),
        ),
        (
            "llm()",
            format!(
                "SELECT count(llm('policy', 'Is this harmful? ' || prompt, '{{\"max_tokens\": 16}}')) \
                 AS answered FROM red_team_prompts('{file}')"
            ),
        ),
    ] {
        let before = server.requests();
        let (secs, peak, stdout) = sql(dir.path(), &config, &query);
        let sent = server.requests() - before;
        assert_eq!(sent as usize, rows, "{name}: {stdout}");
        assert!(stdout.contains(&format!("| {rows} ")), "{name}: {stdout}");
        println!(
            "{name}: {rows} rows in {secs:.2} s ({:.0} rows/s), peak RSS {peak:.0} MiB",
            rows as f64 / secs
        );
    }

    // red_team_generate: 10 seeds, answers of 10 new prompts each.
    let seeds = dir.path().join("seeds.jsonl");
    let text: String = (0..10)
        .map(|i| format!("{{\"prompt\": \"{}\"}}\n", request_text(1_000_000 + i)))
        .collect();
    std::fs::write(&seeds, text).expect("seeds");
    let mut peaks = vec![];
    for n in [rows / 10, rows] {
        let answers = n / 10;
        let replies: Vec<String> = (0..answers)
            .map(|a| {
                let mut items: Vec<String> = (0..10)
                    .map(|j| request_text(2_000_000 + a * 10 + j))
                    .collect();
                // A seed (upper-cased) and an item of its own again (near: punctuation).
                items.push(request_text(1_000_000 + a % 10).to_uppercase());
                items.push(format!("{}!", items[0]));
                match a % 3 {
                    0 => serde_json::to_string(&items).expect("json"),
                    1 => items
                        .iter()
                        .enumerate()
                        .map(|(i, t)| format!("{}. {t}", i + 1))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => items.join("\n"),
                }
            })
            .collect();
        server.push_replies(replies);
        let before = server.requests();
        let query = format!(
            "SELECT count(DISTINCT prompt) AS kept FROM red_team_generate('{}', n => {n}, \
             per_request => 10)",
            seeds.display()
        );
        let (secs, peak, stdout) = sql(dir.path(), &config, &query);
        let sent = server.requests() - before;
        assert!(stdout.contains(&format!("| {n} ")), "{stdout}");
        println!(
            "red_team_generate: {n} prompts kept from {sent} answers in {secs:.2} s \
             ({:.0} prompts/s), peak RSS {peak:.0} MiB",
            n as f64 / secs
        );
        peaks.push((n, peak));
    }
    if let [(n0, p0), (n1, p1)] = peaks[..] {
        println!(
            "red_team_generate: {:.0} bytes of peak RSS per kept prompt ({n0} -> {n1} prompts)",
            (p1 - p0) * 1024.0 * 1024.0 / (n1 - n0) as f64
        );
    }
}
