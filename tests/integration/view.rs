//! `caiflow view`: the viewer serves a mock run's rows to headless Chromium — SL rows as
//! conversations, RL rows side by side, filters, search, pages and permalinks narrow them,
//! and a model answer holding `<script>` and HTML is shown as text (no script runs).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::*;
use crate::report::screenshot;
use caiflow_testkit::MockServer;

/// A viewer process on a free port of 127.0.0.1; killed when dropped.
struct ViewerProcess {
    child: Child,
    base: String,
}

impl Drop for ViewerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `policy` (one request at a time, so answers come in order) and `judge` on `server`.
fn mock_config(dir: &Path, server: &MockServer) -> std::path::PathBuf {
    judged_config(dir, server, server)
}

/// `policy` on `server` (one request at a time) and `judge` on `judge`.
fn judged_config(dir: &Path, server: &MockServer, judge: &MockServer) -> std::path::PathBuf {
    write_config(
        dir,
        &[
            ("policy", &server.base_url(), "max_concurrency = 1"),
            ("judge", &judge.base_url(), ""),
        ],
    )
}

fn start_viewer(run: &Path) -> ViewerProcess {
    start_viewer_with(run.to_str().unwrap(), &[], &[])
}

/// A viewer of `run` (a path or a store URL) with more `args` and `env` (an S3 store's
/// endpoint and keys).
fn start_viewer_with(run: &str, args: &[&str], env: &[(&str, String)]) -> ViewerProcess {
    let port = free_port();
    let mut child = caiflow()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["view", run, "--port", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stderr);
    while reader.read_line(&mut line).unwrap() > 0 && !line.contains("viewing") {}
    assert!(
        line.contains(&format!("http://127.0.0.1:{port}/")),
        "{line}"
    );
    ViewerProcess {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The page's DOM after Chromium loaded it (and ran any script it has).
fn dom(url: &str, dir: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium-dom").display()
        ))
        .arg(url)
        .output()
        .expect("chromium (scripts/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A bar of the served report that leads to rows.
#[derive(Debug)]
struct Bar {
    chart: String,
    name: String,
    value: f64,
    href: String,
}

/// The bars of a served report (each an `<a class="bar" href>` over the bar, titled
/// "category: value" or "category · series: value").
fn bars(report: &str) -> Vec<Bar> {
    let mut out = vec![];
    for figure in report.split("<figure>").skip(1) {
        let chart = figure
            .split("<figcaption>")
            .nth(1)
            .and_then(|c| c.split('<').next())
            .unwrap_or_default()
            .to_string();
        for bar in figure.split("<a class=\"bar\" href=\"").skip(1) {
            let href = bar.split('"').next().unwrap().replace("&amp;", "&");
            let title = bar
                .split("<title>")
                .nth(1)
                .and_then(|t| t.split("</title>").next())
                .unwrap();
            let (name, value) = title.rsplit_once(": ").unwrap();
            let name = name.split(" · ").next().unwrap().to_string();
            out.push(Bar {
                chart: chart.clone(),
                name,
                value: value.parse().unwrap(),
                href,
            });
        }
    }
    out
}

/// A stage's bar: rows whose request of the stage went that way (`source`) or took at least
/// the bar's time. A row keeps its last request's lineage, so requests and rows differ (a
/// re-asked judge), but no rows stand behind an empty bar, and sent requests have rows.
fn stage_bar(bar: &Bar, behind: usize) {
    if bar.value == 0.0 && bar.chart == "Requests per stage" {
        assert_eq!(behind, 0, "{bar:?}");
    }
    if bar.href.contains("source=sent") && bar.value > 0.0 {
        assert!(behind > 0, "{bar:?}");
    }
}

/// How many rows the viewer shows behind `href` (all on one page).
async fn rows_behind(base: &str, href: &str, class: &str) -> usize {
    let reply = reqwest::get(format!("{base}{href}&limit=200"))
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{href}");
    rows(&reply.text().await.unwrap(), class)
}

/// The one value `sql` (a `concat('tag:', …)` select) prints after `tag:` for `run`.
fn sql_value(run: &Path, tag: &str, sql: &str) -> String {
    let (out, _) = caiflow_ok(&["sql", "--run", run.to_str().unwrap(), "-e", sql]);
    out.split(&format!("{tag}:"))
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.trim_end_matches('|').to_string())
        .unwrap_or_else(|| panic!("no {tag}: in {out}"))
}

/// Drive Chromium through the DevTools protocol (tests/browser/cdp.py, on the test venv's
/// Python): a real mouse click on an element, or a page watched as it changes.
fn cdp(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["tests/browser/cdp.py"];
    all.extend_from_slice(args);
    serde_json::from_str(&python_with(&all)).expect("cdp.py prints JSON")
}

fn rows(dom: &str, class: &str) -> usize {
    dom.matches(&format!("class=\"row {class}\"")).count()
}

fn run_plan(dir: &Path, server: &MockServer, plan: &str, sets: &[&str]) -> std::path::PathBuf {
    run_judged(dir, server, server, plan, sets)
}

fn run_judged(
    dir: &Path,
    server: &MockServer,
    judge: &MockServer,
    plan: &str,
    sets: &[&str],
) -> std::path::PathBuf {
    let config = judged_config(dir, server, judge);
    let store = dir.join("runs");
    let mut cmd = caiflow();
    cmd.args(["run", plan, "--config"])
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .args(["--run", "v"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    run_ok(&mut cmd);
    store.join("v")
}

const XSS: &str = "<script>document.title='pwned'</script><b>bold</b> & \"quoted\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sl_rows_render_filter_search_page_and_stay_text() {
    let server = MockServer::start().await.unwrap();
    // The first request (a response, one at a time) answers with markup.
    server.push_replies([XSS.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let run = run_plan(
        dir.path(),
        &server,
        "plans/sl_cai.sql",
        &["limit=5", "rounds=2"],
    );
    let viewer = start_viewer(&run);

    let all = dom(&format!("{}/sl", viewer.base), dir.path());
    assert_eq!(rows(&all, "sl"), 10, "5 prompts x 2 rounds:\n{all}");
    assert!(
        all.contains("<title>SL-CAI rows</title>"),
        "a script ran: {all}"
    );
    assert!(
        all.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;"),
        "{all}"
    );
    assert!(!all.contains("<b>bold</b>"));
    assert!(
        all.contains("<del>") || all.contains("<ins>"),
        "a word diff: {all}"
    );

    // A principle filter: exactly the rows of that principle.
    let top = sql_value(
        &run,
        "top",
        "SELECT concat('top:', principle_id, ':', count(*)) AS t FROM revisions GROUP BY principle_id ORDER BY count(*) DESC, principle_id LIMIT 1",
    );
    let (principle, n) = top.rsplit_once(':').unwrap();
    let n: usize = n.parse().unwrap();
    let filtered = dom(
        &format!("{}/sl?principle={principle}", viewer.base),
        dir.path(),
    );
    assert_eq!(rows(&filtered, "sl"), n, "{filtered}");
    assert_eq!(filtered.matches("class=\"principle\"").count(), n);
    assert_eq!(
        filtered
            .matches(&format!("<span class=\"principle\">{principle}</span>"))
            .count(),
        n
    );

    // A search: the rows whose texts hold the words (here: one prompt's two rounds).
    let searched = dom(&format!("{}/sl?q=pwned", viewer.base), dir.path());
    assert_eq!(rows(&searched, "sl"), 2, "{searched}");

    // Keyset pages: 4 + 4 + 2, no row twice; a row's permalink shows its rounds.
    let mut seen = std::collections::HashSet::new();
    let mut url = format!("{}/sl?limit=4", viewer.base);
    let mut pages = 0;
    loop {
        let page = dom(&url, dir.path());
        pages += 1;
        for block in page.split("class=\"row sl\"").skip(1) {
            let link = block
                .split("href=\"/sl/row?")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let round = block
                .split("round ")
                .nth(1)
                .unwrap()
                .chars()
                .next()
                .unwrap();
            assert!(
                seen.insert(format!("{link}#{round}")),
                "{link} round {round} twice"
            );
        }
        match page.split("class=\"next\" href=\"").nth(1) {
            Some(next) => {
                url = format!(
                    "{}{}",
                    viewer.base,
                    next.split('"').next().unwrap().replace("&amp;", "&")
                )
            }
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 10));
    let link = all
        .split("href=\"/sl/row?")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let one = dom(&format!("{}/sl/row?{link}", viewer.base), dir.path());
    assert_eq!(rows(&one, "sl"), 2, "{one}");

    // The report's judgements as filters: each splits the rows in two; lengths bound them.
    for filter in ["refusal", "unchanged", "error"] {
        let yes = rows(
            &dom(&format!("{}/sl?{filter}=yes", viewer.base), dir.path()),
            "sl",
        );
        let no = rows(
            &dom(&format!("{}/sl?{filter}=no", viewer.base), dir.path()),
            "sl",
        );
        assert_eq!(yes + no, 10, "{filter}: {yes} + {no}");
    }
    let none = dom(&format!("{}/sl?min_chars=1000000", viewer.base), dir.path());
    assert_eq!(rows(&none, "sl"), 0);
    let short = dom(
        &format!("{}/sl?max_chars=1000000&truncated=no", viewer.base),
        dir.path(),
    );
    assert_eq!(rows(&short, "sl"), 10);
    let cut = dom(&format!("{}/sl?truncated=yes", viewer.base), dir.path());
    assert_eq!(rows(&cut, "sl"), 0, "the mock cuts nothing off");

    // The report, served: every chart's bars lead to the rows behind them.
    caiflow_ok(&["report", run.to_str().unwrap()]);
    let file = std::fs::read_to_string(run.join("report/index.html")).unwrap();
    assert!(
        file.contains(" data-rows=\"/sl?"),
        "the file names each bar's rows"
    );
    assert!(
        !file.contains(" href=\"/sl?"),
        "but opened from disk has no links to a server"
    );
    let report = dom(&format!("{}/report", viewer.base), dir.path());
    assert!(report.contains("<svg"), "the report's charts");
    let bars = bars(&report);
    let mut principles = std::collections::HashMap::new();
    for bar in &bars {
        let behind = rows_behind(&viewer.base, &bar.href, "sl").await;
        match bar.chart.as_str() {
            "Answer lengths" | "Revisions per principle" => {
                assert_eq!(behind as f64, bar.value, "{bar:?}");
                if bar.chart == "Revisions per principle" {
                    principles.insert(bar.name.clone(), behind);
                }
            }
            // Shares of a round's 5 rows.
            "Refusals and unchanged revisions" => {
                assert!(
                    (behind as f64 / 5.0 - bar.value).abs() < 0.001,
                    "{bar:?}: {behind}"
                )
            }
            "Length ratio per principle" => {}
            "Latency per stage" | "Requests per stage" => stage_bar(bar, behind),
            other => panic!("a bar of an unknown chart {other}: {bar:?}"),
        }
    }
    for bar in bars
        .iter()
        .filter(|b| b.chart == "Length ratio per principle")
    {
        let behind = rows_behind(&viewer.base, &bar.href, "sl").await;
        assert_eq!(Some(&behind), principles.get(&bar.name), "{bar:?}");
    }
    assert_eq!(principles.values().sum::<usize>(), 10);
    // The refusal filter judges by the [report] phrases of --config, as `caiflow report`.
    let config = dir.path().join("phrases.toml");
    std::fs::write(&config, "[report]\nrefusal_phrases = ['pwned']\n").unwrap();
    let custom = start_viewer_with(
        run.to_str().unwrap(),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let refused = rows_behind(&custom.base, "/sl?refusal=yes&answer=response", "sl").await;
    assert_eq!(
        refused, 2,
        "the one response holding 'pwned', on both rounds' rows"
    );
    drop(custom);
    // A real click on the principle's bar in Chromium: the mouse lands on its link and the
    // browser goes to exactly its rows.
    let clicked = cdp(&[
        "click",
        &format!("{}/report", viewer.base),
        &format!("a.bar[href=\"/sl?principle={principle}\"] rect"),
    ]);
    let href = format!("/sl?principle={principle}");
    assert_eq!(clicked["hit"], href.as_str(), "{clicked}");
    assert_eq!(clicked["url"], href.as_str(), "{clicked}");
    assert_eq!(clicked["rows"], n, "{clicked}");
    let charts: std::collections::HashSet<&str> = bars.iter().map(|b| b.chart.as_str()).collect();
    assert_eq!(
        charts.len(),
        6,
        "every chart's bars lead to rows: {charts:?}"
    );
    assert_eq!(charts.len(), report.matches("<figure>").count());
    // A bar's page says which of the report's filters it carries, and keeps them on.
    let slow = bars
        .iter()
        .find(|b| b.href.contains("min_latency_ms"))
        .unwrap();
    let page = dom(&format!("{}{}", viewer.base, slow.href), dir.path());
    assert!(page.contains("from the report"), "{page}");
    assert!(page.contains("name=\"min_latency_ms\""), "{page}");
    // A filter that cannot apply is a one-line 400, not a crash.
    let bad = reqwest::get(format!("{}/sl?answer=bogus", viewer.base))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.unwrap();
    assert!(
        text.contains("answer=bogus: this table&#39;s answers are revision and response")
            || text.contains("answer=bogus: this table's answers are revision and response"),
        "{text}"
    );
    screenshot(&format!("{}/sl", viewer.base), dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rl_rows_show_chosen_and_rejected_side_by_side() {
    let server = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Three prompts get a verdict (first candidate over the second, then the reverse); the
    // fourth's judge answers nothing parseable, an error row.
    let judge = MockServer::start().await.unwrap();
    judge.push_replies(
        [
            r#"{"chosen": 1, "rejected": 2}"#,
            r#"{"chosen": 2, "rejected": 1}"#,
            r#"{"chosen": 1, "rejected": 2}"#,
        ]
        .map(String::from),
    );
    let run = run_judged(
        dir.path(),
        &server,
        &judge,
        "plans/rl_cai.sql",
        &["limit=4"],
    );
    let viewer = start_viewer(&run);
    let page = dom(&format!("{}/rl", viewer.base), dir.path());
    assert_eq!(rows(&page, "rl"), 4, "{page}");
    // Every candidate side by side, where the judge was shown it; the 3 verdicts marked.
    let candidates: usize = sql_value(
        &run,
        "candidates",
        "SELECT concat('candidates:', sum(array_length(candidates))) AS c FROM judgements",
    )
    .parse()
    .unwrap();
    assert!(candidates >= 8, "{candidates}");
    assert_eq!(
        page.matches("class=\"candidate").count(),
        candidates,
        "{page}"
    );
    assert_eq!(page.matches("class=\"candidate chosen\"").count(), 3);
    assert_eq!(page.matches("class=\"candidate rejected\"").count(), 3);
    assert!(page.contains(" · shown #1"), "{page}");
    let errors: usize = sql_value(
        &run,
        "labels",
        "SELECT concat('labels:', count(*) FILTER (WHERE label = 'error')) AS l FROM judgements",
    )
    .parse()
    .unwrap();
    let filtered = dom(&format!("{}/rl?label=error", viewer.base), dir.path());
    assert_eq!(rows(&filtered, "rl"), errors, "{filtered}");
    let failed = dom(&format!("{}/rl?error=yes", viewer.base), dir.path());
    let shown = rows(&failed, "rl");
    assert_eq!(shown, 1, "the prompt the judge failed on: {failed}");
    assert_eq!(failed.matches("caiflow repair").count(), shown, "{failed}");
    assert_eq!(
        failed.matches("attempts of the last request").count(),
        shown
    );
    let front = dom(&format!("{}/", viewer.base), dir.path());
    assert!(front.contains("judgements"), "{front}");

    // The report's RL charts: labels, positions and temperatures lead to their rows.
    caiflow_ok(&["report", run.to_str().unwrap()]);
    let report = dom(&format!("{}/report", viewer.base), dir.path());
    let bars = bars(&report);
    let ok = bars
        .iter()
        .find(|b| b.chart == "Judge labels" && b.name == "ok")
        .map_or(0.0, |b| b.value) as usize;
    let (mut chosen_at, mut by_temperature) = (0, 0);
    for bar in &bars {
        let behind = rows_behind(&viewer.base, &bar.href, "rl").await;
        match bar.chart.as_str() {
            "Judge labels" | "Position bias" | "chosen_prob" => {
                assert_eq!(behind as f64, bar.value, "{bar:?}");
                chosen_at += behind * usize::from(bar.href.contains("chosen_at="));
            }
            "Chosen rate by temperature" => by_temperature += behind,
            "Latency per stage" | "Requests per stage" => stage_bar(bar, behind),
            other => panic!("a bar of an unknown chart {other}: {bar:?}"),
        }
    }
    assert_eq!(ok, 3, "{report}");
    assert_eq!(
        chosen_at, ok,
        "each ok row's chosen answer was shown at one position"
    );
    assert_eq!(by_temperature, ok, "and sampled at one temperature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_advancing_counts_during_a_run() {
    let server = MockServer::start().await.unwrap();
    server.set_latency(std::time::Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(dir.path(), &server);
    let port = free_port();
    let mut child = caiflow()
        .args(["run", "plans/sl_cai.sql", "--config"])
        .arg(&config)
        .arg("--store")
        .arg(dir.path().join("runs"))
        .args([
            "--set",
            "limit=8",
            "--set",
            "rounds=1",
            "--ui",
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && !line.contains("live page at") {
        line.clear();
    }
    assert!(
        line.contains(&format!("http://127.0.0.1:{port}/live")),
        "{line}"
    );
    // Drain the rest of stderr so the run never blocks on it.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        rest
    });
    let base = format!("http://127.0.0.1:{port}");
    // In a real browser, loaded once: the server-sent events move the counts (its script
    // runs under the page's policy).
    let watched = cdp(&["watch", &format!("{base}/live"), "#requests", "2.5"]);
    let count =
        |v: &serde_json::Value| -> u64 { v.as_str().and_then(|t| t.parse().ok()).unwrap_or(0) };
    assert!(
        count(&watched["after"]) > count(&watched["before"]),
        "{watched}"
    );
    let sent = |dom: &str| -> u64 {
        dom.split("<span id=\"requests\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request count in {dom}"))
    };
    let first = sent(&dom(&format!("{base}/live"), dir.path()));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let page = dom(&format!("{base}/live"), dir.path());
    let later = sent(&page);
    assert!(later > first, "{first} then {later}");
    assert!(page.contains("respond"), "{page}");
    assert!(page.contains("overall: ") && page.contains("ETA"), "{page}");
    assert!(
        page.contains("Mock answer about:"),
        "the newest answers: {page}"
    );
    // The events: HTML fragments of the same figures, every second.
    let mut events = reqwest::get(format!("{base}/live/events")).await.unwrap();
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let chunk = events.chunk().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(
        text.starts_with("data:") && text.contains("<table>"),
        "{text}"
    );
    drop(events);
    let status = child.wait().unwrap();
    let rest = drain.join().unwrap();
    assert!(status.success(), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_s3_is_viewed_as_one_on_disk() {
    let moto = MotoServer::start();
    moto.create_bucket("views");
    let env = moto.env();
    let server = MockServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = mock_config(dir.path(), &server);
    let mut cmd = caiflow();
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["run", "plans/sl_cai.sql", "--config"])
        .arg(&config)
        .args(["--store", "s3://views/runs", "--run", "v", "--report"])
        .args(["--set", "limit=3", "--set", "rounds=2"]);
    run_ok(&mut cmd);
    assert!(!dir.path().join("runs").exists(), "nothing written locally");
    let viewer = start_viewer_with("s3://views/runs/v", &[], &env);
    let page = dom(&format!("{}/sl", viewer.base), dir.path());
    assert_eq!(rows(&page, "sl"), 6, "3 prompts x 2 rounds: {page}");
    assert!(page.contains("<del>") || page.contains("<ins>"), "{page}");
    let report = dom(&format!("{}/report", viewer.base), dir.path());
    let bars = bars(&report);
    let principles: Vec<&Bar> = bars
        .iter()
        .filter(|b| b.chart == "Revisions per principle")
        .collect();
    assert!(!principles.is_empty(), "{report}");
    let mut total = 0;
    for bar in principles {
        let behind = rows_behind(&viewer.base, &bar.href, "sl").await;
        assert_eq!(behind as f64, bar.value, "{bar:?}");
        total += behind;
    }
    assert_eq!(total, 6);
}
