//! The report as one HTML file: the figures as tables and bar charts drawn by plotters'
//! SVG backend, inlined. No script, no stylesheet or font from anywhere else.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::Report;
use crate::error::{ReportError, Result};
use crate::figures::Histogram;

const WIDTH: u32 = 520;
const HEIGHT: u32 = 320;

/// One series of a bar chart: its name and a value per category.
struct Series<'a> {
    name: &'a str,
    values: Vec<f64>,
}

fn chart_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// Bars of every series side by side per category, as an SVG document.
fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series],
) -> Result<String> {
    let n = categories.len().max(1);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut svg = String::new();
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
    Ok(svg)
}

fn histogram_chart(title: &str, histograms: &[(&str, &Histogram)]) -> Result<String> {
    let Some((_, first)) = histograms.first() else {
        return Ok(String::new());
    };
    let series: Vec<Series> = histograms
        .iter()
        .map(|(name, h)| Series {
            name,
            values: h.counts.iter().map(|c| *c as f64).collect(),
        })
        .collect();
    bar_chart(title, "rows", &first.labels, &series)
}

fn map_chart<V: Copy + Into<f64>>(title: &str, y: &str, m: &BTreeMap<String, V>) -> Result<String> {
    let categories: Vec<String> = m.keys().cloned().collect();
    bar_chart(
        title,
        y,
        &categories,
        &[Series {
            name: title,
            values: m.values().map(|v| (*v).into()).collect(),
        }],
    )
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
    let mut charts: Vec<(String, String)> = vec![];
    let llm: Vec<_> = report.stages.iter().filter(|s| s.llm).collect();
    if !llm.is_empty() {
        let names: Vec<String> = llm.iter().map(|s| s.name.clone()).collect();
        let ms = |f: fn(&caiflow_engine::progress::StageStats) -> Option<u64>| {
            llm.iter().map(|s| f(s).unwrap_or(0) as f64).collect()
        };
        charts.push((
            "Latency per stage".into(),
            bar_chart(
                "Latency per stage (requests sent)",
                "ms",
                &names,
                &[
                    Series {
                        name: "p50",
                        values: ms(|s| s.latency_p50_ms),
                    },
                    Series {
                        name: "p95",
                        values: ms(|s| s.latency_p95_ms),
                    },
                ],
            )?,
        ));
        charts.push((
            "Requests per stage".into(),
            bar_chart(
                "Requests per stage",
                "requests",
                &names,
                &[
                    Series {
                        name: "sent",
                        values: llm.iter().map(|s| s.sent as f64).collect(),
                    },
                    Series {
                        name: "journal",
                        values: llm.iter().map(|s| s.journal_hits as f64).collect(),
                    },
                    Series {
                        name: "errors",
                        values: llm.iter().map(|s| s.errors as f64).collect(),
                    },
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
                &[("response", &h.response), ("revision", &h.revision)],
            )?,
        ));
        charts.push((
            "Revisions per principle".into(),
            map_chart(
                "Revisions per principle",
                "rows",
                &sl.principles
                    .iter()
                    .map(|(k, v)| (k.clone(), *v as f64))
                    .collect(),
            )?,
        ));
        charts.push((
            "Length ratio per principle".into(),
            map_chart(
                "Revision / response length per principle",
                "ratio",
                &sl.principle_length_ratio,
            )?,
        ));
        let rounds: Vec<String> = sl.by_round.keys().map(|r| format!("round {r}")).collect();
        charts.push((
            "Refusals and unchanged revisions".into(),
            bar_chart(
                "Refusals and unchanged revisions by round",
                "share",
                &rounds,
                &[
                    Series {
                        name: "refused (response)",
                        values: sl
                            .by_round
                            .values()
                            .map(|r| r.refusal_rate.response.unwrap_or(0.0))
                            .collect(),
                    },
                    Series {
                        name: "refused (revision)",
                        values: sl
                            .by_round
                            .values()
                            .map(|r| r.refusal_rate.revision.unwrap_or(0.0))
                            .collect(),
                    },
                    Series {
                        name: "unchanged",
                        values: sl
                            .by_round
                            .values()
                            .map(|r| r.unchanged_revision_rate.unwrap_or(0.0))
                            .collect(),
                    },
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
                    Series {
                        name: "chosen",
                        values: positions
                            .iter()
                            .map(|p| rl.chosen_position.get(p).copied().unwrap_or(0) as f64)
                            .collect(),
                    },
                    Series {
                        name: "rejected",
                        values: positions
                            .iter()
                            .map(|p| rl.rejected_position.get(p).copied().unwrap_or(0) as f64)
                            .collect(),
                    },
                ],
            )?,
        ));
        charts.push((
            "Chosen rate by temperature".into(),
            map_chart(
                "Chosen rate by candidate temperature",
                "share",
                &rl.chosen_rate_by_temperature,
            )?,
        ));
        if let Some(h) = &rl.chosen_prob_histogram {
            charts.push((
                "chosen_prob".into(),
                histogram_chart("chosen_prob (principle mode)", &[("rows", h)])?,
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
    for (caption, svg) in &charts {
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
            "<figure>{body}<figcaption>{}</figcaption></figure>",
            escape(caption)
        );
    }
    let _ = write!(
        w,
        "</div>\n<p style=\"font-size:0.8em;color:#666\">The same figures are in report.json beside this file; \
         every key is described in caiflow's README (section \"Reports\").</p>\n</body></html>\n"
    );
    Ok(out)
}
