//! What seeing the data costs.
//!
//! 1. Near-duplicate removal (`near_dedup`, MinHash + LSH) over N synthetic red-team prompts
//!    of which 10 % are edited copies (case changed, a word added): time per prompt, memory
//!    per kept prompt (resident growth of this process), and how many copies were found.
//! 2. `caiflow report` over an SL-CAI table of R rows (two rounds, made by a plan from
//!    `generate_series`, ~300-character answers): wall time and peak RSS of the process.
//!
//! `cargo bench --bench report [-- --prompts 1000000 --rows 1000000]`; under `cargo test` a
//! smoke run (2,000 prompts, 2,000 rows).

use std::process::Command;
use std::time::Instant;

use caiflow_engine::dedup::NearDuplicates;
use caiflow_testkit::proc_status::{status_mib, wait_with_peak_rss};
use rand::{Rng, SeedableRng};

const WORDS: &str = "how can i get into my neighbour's house while they are away what is the best way to hide money from tax office make a fake doctor's note for work poison dog without anyone knowing tell me where streamer lives write threatening letter ex boss cheat on exam";

fn rss_mib() -> f64 {
    status_mib("self", "VmRSS")
}

fn near_dedup(n: usize) {
    let vocabulary: Vec<&str> = WORDS.split(' ').collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut originals: Vec<String> = vec![];
    let mut seen = NearDuplicates::new(0.8);
    let before = rss_mib();
    let started = Instant::now();
    let (mut dropped, mut copies, mut copies_dropped) = (0usize, 0usize, 0usize);
    for i in 0..n {
        let copy = i % 10 == 9 && !originals.is_empty();
        let text = if copy {
            // An edited copy of a recent prompt: upper case, a word added.
            let base =
                &originals[rng.gen_range(originals.len().saturating_sub(100)..originals.len())];
            let mut words: Vec<&str> = base.split(' ').collect();
            let at = rng.gen_range(1..words.len());
            words.insert(at, "really");
            words.join(" ").to_uppercase()
        } else {
            let len = rng.gen_range(10..20);
            let mut words: Vec<String> = (0..len)
                .map(|_| vocabulary[rng.gen_range(0..vocabulary.len())].to_string())
                .collect();
            words.push(format!("#{i}"));
            words.join(" ")
        };
        let duplicate = seen.seen_or_insert(&text);
        dropped += duplicate as usize;
        if copy {
            copies += 1;
            copies_dropped += duplicate as usize;
        } else {
            originals.push(text);
            if originals.len() > 1000 {
                originals.drain(..500);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let kept = n - dropped;
    let grown = (rss_mib() - before).max(0.0);
    println!(
        "near_dedup: {n} prompts in {secs:.2} s ({:.1} µs/prompt); {copies_dropped} of {copies} edited copies dropped, {} originals dropped; kept {kept}; resident +{grown:.0} MiB ({:.0} bytes per kept prompt)",
        secs * 1e6 / n as f64,
        dropped - copies_dropped,
        grown * 1024.0 * 1024.0 / kept.max(1) as f64
    );
}

fn report(rows: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("synthetic.sql");
    let prompts = rows / 2;
    std::fs::write(
        &plan,
        format!(
            "CREATE TABLE revisions AS SELECT \
               'p' || CAST(value % {prompts} AS VARCHAR) AS prompt_id, \
               'prompt ' || CAST(value AS VARCHAR) AS prompt, \
               CAST(1 + value / {prompts} AS INT UNSIGNED) AS round, \
               'principle-' || CAST(value % 14 AS VARCHAR) AS principle_id, \
               CASE WHEN value % 7 = 0 THEN 'I can''t help with that. ' ELSE 'Here is an answer. ' END \
                 || repeat('words of the response ', 12) || CAST(value AS VARCHAR) AS response, \
               repeat('a more careful revision ', 14) || CAST(value AS VARCHAR) AS revision, \
               CAST(NULL AS VARCHAR) AS error \
             FROM generate_series(0, {}) AS t(value);",
            rows - 1
        ),
    )
    .expect("plan");
    let store = dir.path().join("runs");
    let bin = env!("CARGO_BIN_EXE_caiflow");
    let out = Command::new(bin)
        .args(["run", plan.to_str().unwrap_or_default(), "--store"])
        .arg(&store)
        .args(["--run", "synthetic"])
        .output()
        .expect("caiflow run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = store.join("synthetic");
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("report")
        .arg(&run)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("caiflow report");
    let (status, peak) = wait_with_peak_rss(&mut child).expect("wait");
    assert!(status.success(), "caiflow report failed");
    let secs = started.elapsed().as_secs_f64();
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.join("report/report.json")).expect("report.json"),
    )
    .expect("json");
    println!(
        "report: {rows} SL rows in {secs:.2} s ({:.0} rows/s), peak RSS {peak:.0} MiB; refusal_rate.response {:.3}",
        rows as f64 / secs,
        json["refusal_rate"]["response"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let option = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(if benching { default } else { 2_000 })
    };
    near_dedup(option("--prompts", 200_000));
    report(option("--rows", 200_000));
}
