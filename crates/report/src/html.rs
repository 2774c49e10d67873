//! The report as one HTML file: the figures as tables and bar charts drawn by plotters'
//! SVG backend, inlined. No script, no stylesheet or font from anywhere else.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::Report;
use crate::error::{ReportError, Result};
use crate::figures::{Histogram, LENGTH_EDGES};

const WIDTH: u32 = 520;
const HEIGHT: u32 = 320;

/// One series of a bar chart: its name, a value per category and, per category, the rows
/// behind the bar as a query of `caiflow view` (none when no rows stand behind it).
struct Series<'a> {
    name: &'a str,
    values: Vec<f64>,
    rows: Vec<Option<String>>,
}

impl<'a> Series<'a> {
    fn new(name: &'a str, values: Vec<f64>) -> Self {
        Series {
            name,
            values,
            rows: vec![],
        }
    }

    fn rows(mut self, rows: Vec<Option<String>>) -> Self {
        self.rows = rows;
        self
    }
}

/// The viewer's query of some rows: `/sl?principle=harmful` (values URL-encoded).
///
/// The report file holds these as `data-rows` attributes of an invisible link over each
/// bar (and of a hidden list under each chart): opened from disk the report has no links,
/// served by `caiflow view` the attributes become `href`s, so a bar leads to its rows.
pub fn rows_query(path: &str, pairs: &[(&str, &str)]) -> String {
    format!(
        "{path}?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

/// A bar's clickable area in the chart's pixels, with its rows and a name.
struct Target {
    x: i32,
    y: i32,
    width: i32,
    height: i32,
    rows: String,
    name: String,
}

/// The bar targets as SVG: transparent rectangles in `<a data-rows>`, drawn over the bars.
fn targets_svg(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        let _ = write!(
            out,
            "<a class=\"bar\" data-rows=\"{}\"><title>{}</title><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"transparent\" pointer-events=\"all\"/></a>",
            escape(&t.rows),
            escape(&t.name),
            t.x,
            t.y,
            t.width.max(1),
            t.height.max(1)
        );
    }
    out
}

/// The bar targets as a list of text links under the chart (hidden until served).
fn targets_nav(targets: &[Target]) -> String {
    if targets.is_empty() {
        return String::new();
    }
    let mut out = String::from("<nav class=\"rows\" hidden>rows: ");
    for t in targets {
        let _ = write!(
            out,
            "<a data-rows=\"{}\">{}</a> ",
            escape(&t.rows),
            escape(&t.name)
        );
    }
    out.push_str("</nav>");
    out
}

fn chart_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// A chart: its SVG document (bar targets included) and the targets' text links.
#[derive(Default)]
struct Chart {
    svg: String,
    nav: String,
}

/// Bars of every series side by side per category, as an SVG document, with a target over
/// each bar that has rows.
fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series],
) -> Result<Chart> {
    let n = categories.len().max(1);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut svg = String::new();
    let mut targets: Vec<Target> = vec![];
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(if categories.len() > 5 { 48 } else { 34 })
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(y_label)
            .y_labels(6)
            .max_light_lines(1)
            .y_label_formatter(&|v| {
                if top >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            })
            .draw()
            .map_err(chart_err)?;
        let k = series.len().max(1) as f64;
        let width = 0.8 / k;
        for (j, s) in series.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            let x0 = -0.4 + j as f64 * width;
            chart
                .draw_series(s.values.iter().enumerate().map(|(i, v)| {
                    let left = i as f64 + x0;
                    Rectangle::new(
                        [(left, 0.0), (left + width * 0.92, v.max(0.0))],
                        color.filled(),
                    )
                }))
                .map_err(chart_err)?
                .label(s.name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            for (i, (v, rows)) in s.values.iter().zip(&s.rows).enumerate() {
                let Some(rows) = rows else { continue };
                let left = i as f64 + x0;
                // The whole column above the bar's base, so a short (or empty) bar is
                // as easy to click as a tall one.
                let (x1, y1) = chart.backend_coord(&(left, top));
                let (x2, y2) = chart.backend_coord(&(left + width * 0.92, 0.0));
                let v = if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.3}")
                };
                let name = match (series.len(), categories.get(i)) {
                    (1, Some(c)) => format!("{c}: {v}"),
                    (_, Some(c)) => format!("{c} · {}: {v}", s.name),
                    (_, None) => s.name.to_string(),
                };
                targets.push(Target {
                    x: x1.min(x2),
                    y: y1.min(y2),
                    width: (x2 - x1).abs(),
                    height: (y2 - y1).abs(),
                    rows: rows.clone(),
                    name,
                });
            }
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(chart_err)?;
        }
        // Category names under the bars (drawn in pixels: the x axis is numeric); many
        // categories are staggered on two lines so long names do not run into each other.
        let staggered = categories.len() > 5;
        let style = TextStyle::from(("sans-serif", 12).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ),
        );
        for (i, c) in categories.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64, 0.0));
            let label: String = c.chars().take(if staggered { 16 } else { 14 }).collect();
            let dy = if staggered && i % 2 == 1 { 20 } else { 6 };
            root.draw(&Text::new(label, (x, y + dy), style.clone()))
                .map_err(chart_err)?;
        }
        root.present().map_err(chart_err)?;
    }
    if let Some(end) = svg.rfind("</svg>") {
        svg.insert_str(end, &targets_svg(&targets));
    }
    Ok(Chart {
        svg,
        nav: targets_nav(&targets),
    })
}

/// Histograms of one set of bins (the first's labels), a series each, with the rows behind
/// each bin.
fn histogram_chart(
    title: &str,
    histograms: &[(&str, &Histogram, Vec<Option<String>>)],
) -> Result<Chart> {
    let Some((_, first, _)) = histograms.first() else {
        return Ok(Chart::default());
    };
    let series: Vec<Series> = histograms
        .iter()
        .map(|(name, h, rows)| {
            Series::new(name, h.counts.iter().map(|c| *c as f64).collect()).rows(rows.clone())
        })
        .collect();
    bar_chart(title, "rows", &first.labels, &series)
}

/// One bar per key of `m`; `rows` names the rows behind a key's bar.
fn map_chart<V: Copy + Into<f64>>(
    title: &str,
    y: &str,
    m: &BTreeMap<String, V>,
    rows: impl Fn(&str) -> Option<String>,
) -> Result<Chart> {
    let categories: Vec<String> = m.keys().cloned().collect();
    bar_chart(
        title,
        y,
        &categories,
        &[
            Series::new(title, m.values().map(|v| (*v).into()).collect())
                .rows(categories.iter().map(|c| rows(c)).collect()),
        ],
    )
}

/// The rows behind each bin of a length histogram: `answer` of `lo..=hi` characters.
fn length_bins(path: &str, answer: &str, extra: &[(&str, &str)]) -> Vec<Option<String>> {
    let mut lo = 0u64;
    let mut out = vec![];
    for i in 0..=LENGTH_EDGES.len() {
        let min = lo.to_string();
        let max = LENGTH_EDGES.get(i).map(|hi| (hi - 1).to_string());
        let mut pairs: Vec<(&str, &str)> = extra.to_vec();
        pairs.push(("answer", answer));
        pairs.push(("min_chars", &min));
        if let Some(max) = &max {
            pairs.push(("max_chars", max));
        }
        out.push(Some(rows_query(path, &pairs)));
        lo = LENGTH_EDGES.get(i).copied().unwrap_or(lo);
    }
    out
}

/// The rows behind each tenth of [0, 1] of `chosen_prob` (the last bin holds 1).
fn prob_bins() -> Vec<Option<String>> {
    (0..10)
        .map(|i| {
            let min = format!("{:.1}", i as f64 / 10.0);
            let below = format!("{:.1}", (i + 1) as f64 / 10.0);
            let mut pairs = vec![("min_prob", min.as_str())];
            if i < 9 {
                pairs.push(("below_prob", below.as_str()));
            }
            Some(rows_query("/rl", &pairs))
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A share with three decimals, or a dash.
pub(crate) fn rate(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
}

/// The HTML document of `report`.
pub fn render(report: &Report) -> Result<String> {
    let mut charts: Vec<(String, Chart)> = vec![];
    let llm: Vec<_> = report.stages.iter().filter(|s| s.llm).collect();
    if !llm.is_empty() {
        let names: Vec<String> = llm.iter().map(|s| s.name.clone()).collect();
        let ms = |f: fn(&caiflow_engine::progress::StageStats) -> Option<u64>| {
            llm.iter().map(|s| f(s).unwrap_or(0) as f64).collect()
        };
        // A stage's rows are in the table that keeps its lineage: the SL-CAI table for
        // respond, critique and revise, the RL-CAI table for judge.
        let table_of = |stage: &str| match stage {
            "respond" | "critique" | "revise" if report.sl.is_some() => Some("/sl"),
            "judge" if report.rl.is_some() => Some("/rl"),
            _ => None,
        };
        let stage_rows = |extra: &dyn Fn(
            &caiflow_engine::progress::StageStats,
        ) -> Vec<(&'static str, String)>| {
            llm.iter()
                .map(|s| {
                    let path = table_of(&s.name)?;
                    let extra = extra(s);
                    let mut pairs = vec![("stage", s.name.as_str())];
                    pairs.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
                    Some(rows_query(path, &pairs))
                })
                .collect::<Vec<_>>()
        };
        let slower = |p: fn(&caiflow_engine::progress::StageStats) -> Option<u64>| {
            stage_rows(&move |s| vec![("min_latency_ms", p(s).unwrap_or(0).to_string())])
        };
        charts.push((
            "Latency per stage".into(),
            bar_chart(
                "Latency per stage (requests sent)",
                "ms",
                &names,
                &[
                    Series::new("p50", ms(|s| s.latency_p50_ms)).rows(slower(|s| s.latency_p50_ms)),
                    Series::new("p95", ms(|s| s.latency_p95_ms)).rows(slower(|s| s.latency_p95_ms)),
                ],
            )?,
        ));
        let source = |how: &'static str| stage_rows(&move |_| vec![("source", how.to_string())]);
        charts.push((
            "Requests per stage".into(),
            bar_chart(
                "Requests per stage",
                "requests",
                &names,
                &[
                    Series::new("sent", llm.iter().map(|s| s.sent as f64).collect())
                        .rows(source("sent")),
                    Series::new(
                        "journal",
                        llm.iter().map(|s| s.journal_hits as f64).collect(),
                    )
                    .rows(source("journal")),
                    Series::new("errors", llm.iter().map(|s| s.errors as f64).collect())
                        .rows(source("failed")),
                ],
            )?,
        ));
    }
    if let Some(sl) = &report.sl {
        let h = &sl.length_histograms;
        charts.push((
            "Answer lengths".into(),
            histogram_chart(
                "Answer length (characters)",
                &[
                    // Initial responses are counted once, on their first round's row.
                    (
                        "response",
                        &h.response,
                        length_bins("/sl", "response", &[("round", "1")]),
                    ),
                    ("revision", &h.revision, length_bins("/sl", "revision", &[])),
                ],
            )?,
        ));
        let principle = |p: &str| Some(rows_query("/sl", &[("principle", p)]));
        charts.push((
            "Revisions per principle".into(),
            map_chart(
                "Revisions per principle",
                "rows",
                &sl.principles
                    .iter()
                    .map(|(k, v)| (k.clone(), *v as f64))
                    .collect(),
                principle,
            )?,
        ));
        charts.push((
            "Length ratio per principle".into(),
            map_chart(
                "Revision / response length per principle",
                "ratio",
                &sl.principle_length_ratio,
                principle,
            )?,
        ));
        let rounds: Vec<String> = sl.by_round.keys().map(|r| format!("round {r}")).collect();
        let round_rows = |response: bool, pairs: &[(&str, &str)]| -> Vec<Option<String>> {
            sl.by_round
                .iter()
                .map(|(r, f)| {
                    if response && f.refusal_rate.response.is_none() {
                        return None;
                    }
                    let r = r.to_string();
                    let mut all = vec![("round", r.as_str())];
                    all.extend_from_slice(pairs);
                    Some(rows_query("/sl", &all))
                })
                .collect()
        };
        charts.push((
            "Refusals and unchanged revisions".into(),
            bar_chart(
                "Refusals and unchanged revisions by round",
                "share",
                &rounds,
                &[
                    Series::new(
                        "refused (response)",
                        sl.by_round
                            .values()
                            .map(|r| r.refusal_rate.response.unwrap_or(0.0))
                            .collect(),
                    )
                    .rows(round_rows(
                        true,
                        &[("refusal", "yes"), ("answer", "response")],
                    )),
                    Series::new(
                        "refused (revision)",
                        sl.by_round
                            .values()
                            .map(|r| r.refusal_rate.revision.unwrap_or(0.0))
                            .collect(),
                    )
                    .rows(round_rows(
                        false,
                        &[("refusal", "yes"), ("answer", "revision")],
                    )),
                    Series::new(
                        "unchanged",
                        sl.by_round
                            .values()
                            .map(|r| r.unchanged_revision_rate.unwrap_or(0.0))
                            .collect(),
                    )
                    .rows(round_rows(false, &[("unchanged", "yes")])),
                ],
            )?,
        ));
    }
    if let Some(rl) = &report.rl {
        charts.push((
            "Judge labels".into(),
            map_chart(
                "Judge labels",
                "prompts",
                &rl.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), *v as f64))
                    .collect(),
                |l| Some(rows_query("/rl", &[("label", l)])),
            )?,
        ));
        let positions: Vec<u32> = rl
            .chosen_position
            .keys()
            .chain(rl.rejected_position.keys())
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let at = |which: &str| -> Vec<Option<String>> {
            positions
                .iter()
                .map(|p| {
                    let p = p.to_string();
                    Some(rows_query("/rl", &[("label", "ok"), (which, p.as_str())]))
                })
                .collect()
        };
        charts.push((
            "Position bias".into(),
            bar_chart(
                "Position shown (ok rows): position bias",
                "rows",
                &positions
                    .iter()
                    .map(|p| format!("#{p}"))
                    .collect::<Vec<_>>(),
                &[
                    Series::new(
                        "chosen",
                        positions
                            .iter()
                            .map(|p| rl.chosen_position.get(p).copied().unwrap_or(0) as f64)
                            .collect(),
                    )
                    .rows(at("chosen_at")),
                    Series::new(
                        "rejected",
                        positions
                            .iter()
                            .map(|p| rl.rejected_position.get(p).copied().unwrap_or(0) as f64)
                            .collect(),
                    )
                    .rows(at("rejected_at")),
                ],
            )?,
        ));
        charts.push((
            "Chosen rate by temperature".into(),
            map_chart(
                "Chosen rate by candidate temperature",
                "share",
                &rl.chosen_rate_by_temperature,
                |t| {
                    Some(rows_query(
                        "/rl",
                        &[("label", "ok"), ("chosen_temperature", t)],
                    ))
                },
            )?,
        ));
        if let Some(h) = &rl.chosen_prob_histogram {
            charts.push((
                "chosen_prob".into(),
                histogram_chart("chosen_prob (principle mode)", &[("rows", h, prob_bins())])?,
            ));
        }
    }

    let mut out = String::new();
    let w = &mut out;
    let _ = write!(
        w,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>caiflow report: {run}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;color:#222;max-width:1200px}}\
         table{{border-collapse:collapse;margin:0.5em 0 1.5em}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f3f3f3}} td:first-child,th:first-child{{text-align:left}}\
         .charts{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0;border:1px solid #ddd}}\
         figcaption{{font-size:0.8em;color:#555;padding:2px 6px}}\
         </style></head><body>\n<h1>caiflow report</h1>\n<p>Run <code>{run}</code> · {sessions} session(s) · caiflow {version}</p>\n",
        run = escape(&report.run),
        sessions = report.sessions,
        version = escape(&report.caiflow_version)
    );
    let _ = write!(
        w,
        "<h2>Tables</h2>\n<table><tr><th>table</th><th>rows</th></tr>"
    );
    for (t, n) in &report.tables {
        let _ = write!(w, "<tr><td>{}</td><td>{n}</td></tr>", escape(t));
    }
    let _ = write!(w, "</table>\n<h2>Stages</h2>\n");
    if report.stages.is_empty() {
        let _ = writeln!(w, "<p>No session figures were recorded for this run.</p>");
    } else {
        let _ = write!(
            w,
            "<table><tr><th>stage</th><th>rows</th><th>requests</th><th>sent</th><th>journal</th>\
             <th>retries</th><th>errors</th><th>prompt tokens</th><th>completion tokens</th>\
             <th>p50 ms</th><th>p95 ms</th><th>cut off</th><th>dropped</th></tr>"
        );
        for s in &report.stages {
            let _ = write!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&s.name),
                s.rows,
                s.requests,
                s.sent,
                s.journal_hits,
                s.retries,
                s.errors,
                s.prompt_tokens,
                s.completion_tokens,
                opt(s.latency_p50_ms),
                opt(s.latency_p95_ms),
                s.truncated,
                s.dropped
            );
        }
        let _ = writeln!(w, "</table>");
        let _ = write!(
            w,
            "<h3>Usage over all sessions</h3>\n<table><tr><th>stage</th><th>endpoint</th>\
             <th>requests sent</th><th>prompt tokens</th><th>completion tokens</th><th>cost $</th></tr>"
        );
        for (stage, by_endpoint) in &report.usage {
            for (endpoint, u) in by_endpoint {
                let _ = write!(
                    w,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>",
                    escape(stage),
                    escape(endpoint),
                    u.requests,
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.cost
                );
            }
        }
        let t = &report.usage_total;
        let _ = writeln!(
            w,
            "<tr><td>total</td><td></td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr></table>",
            t.requests, t.prompt_tokens, t.completion_tokens, t.cost
        );
        if t.cached_tokens > 0 || t.batched_requests > 0 {
            let _ = writeln!(
                w,
                "<p>{} prompt tokens read from the providers' prompt caches; {} requests sent through batch APIs, saving ${:.4} against online prices.</p>",
                t.cached_tokens, t.batched_requests, t.batch_saved
            );
        }
        let reasons: Vec<_> = report
            .stages
            .iter()
            .flat_map(|s| s.errors_by_reason.iter().map(move |(r, n)| (&s.name, r, n)))
            .collect();
        if !reasons.is_empty() {
            let _ = write!(
                w,
                "<h3>Errors by reason</h3>\n<table><tr><th>stage</th><th>reason</th><th>rows</th></tr>"
            );
            for (stage, reason, n) in reasons {
                let _ = write!(
                    w,
                    "<tr><td>{}</td><td style=\"text-align:left\">{}</td><td>{n}</td></tr>",
                    escape(stage),
                    escape(reason)
                );
            }
            let _ = writeln!(w, "</table>");
        }
    }
    if let Some(sl) = &report.sl {
        let _ = write!(
            w,
            "<h2>SL-CAI: {}</h2>\n<table><tr><th>round</th><th>rows</th><th>error rows</th>\
             <th>refusal rate (response)</th><th>refusal rate (revision)</th><th>unchanged revisions</th></tr>\
             <tr><td>all</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&sl.sl_table),
            sl.sl_rows,
            sl.sl_error_rows,
            rate(sl.refusal_rate.response),
            rate(sl.refusal_rate.revision),
            rate(sl.unchanged_revision_rate)
        );
        for (r, f) in &sl.by_round {
            let _ = write!(
                w,
                "<tr><td>{r}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f.rows,
                f.error_rows,
                rate(f.refusal_rate.response),
                rate(f.refusal_rate.revision),
                rate(f.unchanged_revision_rate)
            );
        }
        let _ = writeln!(w, "</table>");
    }
    if let Some(rl) = &report.rl {
        let _ = write!(
            w,
            "<h2>RL-CAI: {}</h2>\n<p>{} prompts judged; length ratio (mean chosen / mean rejected length): {}</p>\n",
            escape(&rl.rl_table),
            rl.judged_prompts,
            rl.length_ratio
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "–".into())
        );
    }
    if report.reasoning_tokens > 0 || report.reasoning_leakage.is_some() {
        let _ = write!(
            w,
            "<h2>Reasoning</h2>\n<p>{} completion tokens were thinking.</p>\n",
            report.reasoning_tokens
        );
        if let Some(l) = &report.reasoning_leakage {
            let _ = writeln!(
                w,
                "<p>Reasoning leakage ({}): {} of {} critiqued rows had harmful thinking behind a safe answer ({}); {} had harmful thinking.</p>",
                escape(&l.leakage_table),
                l.leaked,
                l.judged,
                rate(l.share),
                l.harmful_thinking
            );
        }
    }
    if let Some(a) = &report.judge_audit {
        let _ = write!(
            w,
            "<h2>Judge audit: {}</h2>\n<table><tr><th>principle</th><th>comparisons</th><th>asked in both orders</th>\
             <th>position consistency</th><th>soft/hard agreement</th><th></th></tr>",
            escape(&a.audit_table)
        );
        for p in &a.principles {
            let _ = write!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&p.principle),
                p.comparisons,
                p.audited,
                rate(p.consistency),
                rate(p.agreement),
                if p.noisy { "noisy" } else { "" }
            );
        }
        let _ = writeln!(w, "</table>");
    }
    let _ = write!(w, "<h2>Charts</h2>\n<div class=\"charts\">\n");
    for (caption, chart) in &charts {
        let svg = &chart.svg;
        if svg.is_empty() {
            continue;
        }
        // The SVG document without its XML declaration, inline.
        let body = svg.trim_start_matches(|c| c != '<');
        let body = match body.strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").map(|(_, b)| b).unwrap_or(rest),
            None => body,
        };
        let _ = writeln!(
            w,
            "<figure>{body}<figcaption>{}</figcaption>{}</figure>",
            escape(caption),
            chart.nav
        );
    }
    let _ = write!(
        w,
        "</div>\n<p style=\"font-size:0.8em;color:#666\">The same figures are in report.json beside this file; \
         every key is described in caiflow's README (section \"Reports\").</p>\n</body></html>\n"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers of an SVG element's attribute.
    fn attribute(element: &str, name: &str) -> f64 {
        element
            .split(&format!(" {name}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn each_bar_lies_under_its_own_link_only() {
        let categories: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let chart = bar_chart(
            "t",
            "rows",
            &categories,
            &[Series::new("rows", vec![1.0, 0.0, 3.0]).rows(vec![
                Some(rows_query("/sl", &[("principle", "a")])),
                Some(rows_query("/sl", &[("principle", "b & <c>")])),
                None,
            ])],
        )
        .unwrap();
        let (plot, links) = chart.svg.split_once("<a class=\"bar\"").unwrap();
        let links: Vec<&str> = links.split("<a class=\"bar\"").collect();
        assert_eq!(links.len(), 2, "a link per bar with rows");
        assert!(links[1].contains("data-rows=\"/sl?principle=b+%26+%3Cc%3E\""));
        assert!(links[1].contains("<title>b: 0</title>"), "{}", links[1]);
        // The bars plotters drew: filled rectangles above the axis, left to right.
        let bars: Vec<(f64, f64)> = plot
            .split("<rect")
            .skip(1)
            .filter(|r| !r.contains("fill=\"#FFFFFF\"") && attribute(r, "height") > 0.0)
            .map(|r| (attribute(r, "x"), attribute(r, "width")))
            .filter(|(_, w)| *w < 200.0)
            .collect();
        assert_eq!(bars.len(), 2, "{plot}");
        let spans: Vec<(f64, f64)> = links
            .iter()
            .map(|l| {
                let x = attribute(l, "x");
                (x, x + attribute(l, "width"))
            })
            .collect();
        let inside = |x: f64, (lo, hi): (f64, f64)| lo <= x && x <= hi;
        let centre = bars[0].0 + bars[0].1 / 2.0;
        assert!(inside(centre, spans[0]) && !inside(centre, spans[1]));
        // The empty bar's link still covers its column, above the axis.
        assert!(attribute(links[1], "height") > 100.0, "{}", links[1]);
        assert!(chart.nav.starts_with("<nav class=\"rows\" hidden>"));
        assert_eq!(chart.nav.matches("<a data-rows=").count(), 2);
    }
}
