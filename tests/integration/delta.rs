//! A run's tables are Delta Lake tables: other tools (Python `deltalake`, `polars`) read
//! them, a re-materialization is a new version, earlier versions can be read back, and
//! `caiflow vacuum` removes old versions' files.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use caiflow_testkit::MockServer;

fn ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("run caiflow");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "caiflow failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

struct Setup {
    dir: tempfile::TempDir,
    policy: MockServer,
    _judge: MockServer,
}

impl Setup {
    async fn new(prompts: usize) -> Setup {
        let policy = MockServer::start().await.expect("mock");
        let judge = MockServer::start().await.expect("mock");
        judge.push_replies((0..prompts * 4).map(|_| r#"{"chosen": 1, "rejected": 2}"#.to_string()));
        let dir = tempfile::tempdir().expect("tempdir");
        write_config(
            dir.path(),
            &[
                ("policy", &policy.base_url(), ""),
                ("judge", &judge.base_url(), ""),
            ],
        );
        let text: String = (0..prompts)
            .map(|i| format!("{{\"prompt\": \"delta prompt {i}\"}}\n"))
            .collect();
        std::fs::write(dir.path().join("prompts.jsonl"), text).expect("prompts");
        Setup {
            dir,
            policy,
            _judge: judge,
        }
    }

    fn run(&self, plan: &str, extra: &[&str]) -> String {
        let mut c = caiflow();
        c.args(["run", plan, "--config"])
            .arg(self.dir.path().join("caiflow.toml"))
            .arg("--store")
            .arg(self.dir.path().join("store"))
            .args(["--run", "r", "--set"])
            .arg(format!(
                "prompts={}",
                self.dir.path().join("prompts.jsonl").display()
            ))
            .args(["--set", "max_tokens=16"])
            .args(extra);
        ok(&mut c).1
    }

    fn run_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("store").join("r")
    }

    fn sql(&self, query: &str) -> String {
        let run = self.run_dir();
        ok(caiflow().args(["sql", "--run", run.to_str().expect("path"), "-e", query])).0
    }
}

fn count(out: &str) -> usize {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix('|'))
        .filter_map(|l| l.split('|').next())
        .filter_map(|c| c.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no count in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_of_both_plans_is_a_delta_table_other_tools_read() {
    let s = Setup::new(12).await;
    s.run("plans/sl_cai.sql", &[]);
    s.run("plans/rl_cai.sql", &[]);
    let run = s.run_dir();
    let mut expected = vec![];
    for table in ["revisions", "sft", "judgements", "preferences"] {
        assert!(committed(&run, table), "{table}");
        let n = count(&s.sql(&format!("SELECT count(*) FROM {table}")));
        assert!(n > 0, "{table}");
        expected.push(format!("{table}={n}"));
    }
    let script = format!(
        r#"
from deltalake import DeltaTable
import polars as pl
out = []
for t in ["revisions", "sft", "judgements", "preferences"]:
    dt = DeltaTable("{run}/" + t)
    n = dt.to_pyarrow_table().num_rows
    assert pl.read_delta("{run}/" + t).height == n, t
    parts = dt.metadata().partition_columns
    if t in ("sft", "preferences"):
        assert parts == ["split"], (t, parts)
    else:
        assert parts == [], (t, parts)
    out.append(f"{{t}}={{n}}")
print(" ".join(out))
"#,
        run = run.display()
    );
    assert_eq!(python(&script).trim(), expected.join(" "));
    assert_eq!(count(&s.sql("SELECT count(*) FROM revisions")), 12);
    // Few, large files: one per table, or one per split of a partitioned table.
    assert_eq!(parquet_files(&run.join("revisions")), 1);
    assert!(parquet_files(&run.join("sft")) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recomputed_table_is_a_new_version_and_the_old_one_stays_readable() {
    let s = Setup::new(6).await;
    s.run("plans/sl_cai.sql", &[]);
    s.run("plans/sl_cai.sql", &["--set", "revise_max_tokens=8"]);
    let run = s.run_dir();

    let current = s.sql("SELECT DISTINCT revise_lineage['max_tokens'] AS m FROM revisions");
    assert!(current.contains("| 8 "), "{current}");
    let old = s.sql("SELECT DISTINCT revise_lineage['max_tokens'] AS m FROM \"revisions@v0\"");
    assert!(old.contains("| 16 "), "the previous version's rows: {old}");
    assert_eq!(count(&s.sql("SELECT count(*) FROM \"revisions@v0\"")), 6);

    // inspect lists both versions with what produced them.
    let (text, _) = ok(caiflow().args(["inspect", run.to_str().expect("path")]));
    assert!(text.contains("version 1"), "{text}");
    assert!(text.contains("v1 ") && text.contains("v0 "), "{text}");
    let history = python(&format!(
        "from deltalake import DeltaTable\nprint(len(DeltaTable('{}/revisions').history()))",
        run.display()
    ));
    assert_eq!(history.trim(), "2");

    // vacuum with no retention window keeps the newest version only: its rows stay, the old
    // version's files go.
    let (out, _) =
        ok(caiflow().args(["vacuum", run.to_str().expect("path"), "--retain-hours", "0"]));
    let deleted: usize = out
        .lines()
        .find(|l| l.starts_with("table revisions:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(deleted > 0, "{out}");
    assert_eq!(count(&s.sql("SELECT count(*) FROM revisions")), 6);
    assert!(parquet_files(&run.join("revisions")) > 0);
}

fn parquet_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            n += parquet_files(&p);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_table_written_by_python_deltalake_is_a_plan_input() {
    let s = Setup::new(1).await;
    let input = s.dir.path().join("prompts_delta");
    let write = |rows: std::ops::Range<u32>, mode: &str| {
        python(&format!(
            r#"
import pyarrow as pa
from deltalake import write_deltalake
ids = [f"p{{i}}" for i in range({start}, {end})]
write_deltalake("{path}", pa.table({{"prompt_id": ids, "prompt": [f"python prompt {{i}}" for i in range({start}, {end})]}}), mode="{mode}")
"#,
            start = rows.start,
            end = rows.end,
            path = input.display(),
        ))
    };
    write(0..5, "error");
    let plan = s.dir.path().join("delta_input.sql");
    std::fs::write(
        &plan,
        "CREATE EXTERNAL TABLE prompts STORED AS DELTA LOCATION '${input}';\n\
         CREATE TABLE responses AS SELECT * FROM respond(prompts, max_tokens => 8);\n",
    )
    .expect("plan");
    let run = |s: &Setup| {
        let mut c = caiflow();
        c.args(["run", plan.to_str().expect("path"), "--config"])
            .arg(s.dir.path().join("caiflow.toml"))
            .arg("--store")
            .arg(s.dir.path().join("store"))
            .args(["--run", "r", "--set"])
            .arg(format!("input={}", input.display()));
        ok(&mut c).1
    };
    run(&s);
    assert_eq!(count(&s.sql("SELECT count(*) FROM responses")), 5);
    assert_eq!(s.policy.requests(), 5);

    // A new version of the input (five more rows): the table recomputes, only the new rows
    // are sent.
    write(5..10, "append");
    let stderr = run(&s);
    assert!(stderr.contains("table responses: 10 rows"), "{stderr}");
    assert_eq!(count(&s.sql("SELECT count(*) FROM responses")), 10);
    assert_eq!(s.policy.requests(), 10);
    // Unchanged input: reused.
    let stderr = run(&s);
    assert!(stderr.contains("table responses: reused"), "{stderr}");
}

/// A Delta table written by Python `deltalake` is accepted wherever a stored input is: by
/// `red_team_prompts` (HH red-team transcripts), `helpful_sft` (TRL messages),
/// `helpful_pairs` (HH chosen/rejected), as a stage's input path, and at an older version
/// through `CREATE EXTERNAL TABLE … OPTIONS ('version' 'N')`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_tables_are_accepted_wherever_a_stored_input_is() {
    let s = Setup::new(1).await;
    let d = s.dir.path();
    python(&format!(
        r#"
import pyarrow as pa
from deltalake import write_deltalake
t = lambda h, a: f"\n\nHuman: {{h}}\n\nAssistant: {{a}}"
write_deltalake("{d}/red", pa.table({{"transcript": [t(f"red team question {{i}}", "no") for i in range(7)]}}))
write_deltalake("{d}/sft", pa.table({{"messages": [[{{"role": "user", "content": f"q{{i}}"}}, {{"role": "assistant", "content": f"a{{i}}"}}] for i in range(4)]}}))
write_deltalake("{d}/pairs", pa.table({{"chosen": [t(f"h{{i}}", "good") for i in range(3)], "rejected": [t(f"h{{i}}", "bad") for i in range(3)]}}))
write_deltalake("{d}/stored", pa.table({{"prompt_id": ["a", "b"], "prompt": ["stored one", "stored two"]}}))
write_deltalake("{d}/stored", pa.table({{"prompt_id": ["c"], "prompt": ["stored three"]}}), mode="append")
"#,
        d = d.display()
    ));
    let sql = |query: &str| {
        let out = caiflow()
            .args(["sql", "--config"])
            .arg(d.join("caiflow.toml"))
            .args(["-e", query])
            .output()
            .expect("caiflow");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{query}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let at = |name: &str| d.join(name).display().to_string();

    let red = sql(&format!(
        "SELECT count(*), min(source), min(prompt) FROM red_team_prompts('{}')",
        at("red")
    ));
    assert_eq!(count(&red), 7, "{red}");
    assert!(
        red.contains("hh-red-team") && red.contains("red team question 0"),
        "{red}"
    );

    let sft = sql(&format!(
        "SELECT count(*), min(messages[2]['content']) FROM helpful_sft('{}')",
        at("sft")
    ));
    assert_eq!(count(&sft), 4, "{sft}");
    assert!(sft.contains("a0"), "the messages were read: {sft}");

    let pairs = sql(&format!(
        "SELECT count(*), min(chosen), min(rejected) FROM helpful_pairs('{}')",
        at("pairs")
    ));
    assert_eq!(count(&pairs), 3, "{pairs}");
    assert!(pairs.contains("good") && pairs.contains("bad"), "{pairs}");

    let responded = sql(&format!(
        "SELECT count(*) FROM respond('{}', max_tokens => 4)",
        at("stored")
    ));
    assert_eq!(count(&responded), 3, "{responded}");
    assert_eq!(s.policy.requests(), 3);

    let v0 = sql(&format!(
        "CREATE EXTERNAL TABLE old STORED AS DELTA LOCATION '{}' OPTIONS ('version' '0'); \
         SELECT count(*) FROM old",
        at("stored")
    ));
    assert_eq!(count(&v0), 2, "version 0 has the first two rows: {v0}");

    // A folder that is no Delta table, or a bad option, is one clear line.
    let out = caiflow()
        .args(["sql", "-e"])
        .arg(format!(
            "CREATE EXTERNAL TABLE x STORED AS DELTA LOCATION '{}' OPTIONS ('versoin' '1')",
            at("stored")
        ))
        .output()
        .expect("caiflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown option 'versoin'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_files_and_row_groups_follow_the_tables_section() {
    let s = Setup::new(1).await;
    let config = s.dir.path().join("caiflow.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("[tables]\nrow_group_rows = 100\n");
    std::fs::write(&config, text).expect("config");
    let plan = s.dir.path().join("rows.sql");
    std::fs::write(
        &plan,
        "CREATE TABLE t AS SELECT value AS id, \
         split_of(CAST(value AS VARCHAR), 1, 'train=0.5,test=0.5') AS split \
         FROM generate_series(1, 1000);\n",
    )
    .expect("plan");
    s.run(plan.to_str().expect("path"), &[]);
    let out = python(&format!(
        r#"
import glob, pyarrow.parquet as pq
files = glob.glob("{}/t/**/*.parquet", recursive=True)
meta = [pq.ParquetFile(f).metadata for f in files]
print(len(files), sum(m.num_row_groups for m in meta), sum(m.num_rows for m in meta), max(m.row_group(i).num_rows for m in meta for i in range(m.num_row_groups)))
"#,
        s.run_dir().display()
    ));
    let n: Vec<usize> = out
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    // One file per split (one stream), row groups of at most 100 rows.
    assert_eq!((n[0], n[2], n[3]), (2, 1000, 100), "{out}");
    assert!((10..=12).contains(&n[1]), "row groups: {out}");
}
