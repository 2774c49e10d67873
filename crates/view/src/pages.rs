//! The viewer's HTML. maud escapes every value it is given, so model answers, prompts and
//! error texts are shown as text whatever they hold; the page has no script and loads
//! nothing from the network (the style is inline).

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::diff::{Part, gap_before, words};
use crate::query::{Filters, Kind, Page, Row};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px;color:#222}\
a{color:#1558b0}nav a{margin-right:1em}form{margin:1em 0;padding:.6em;background:#f3f4f6}\
form label{margin-right:1em}.row{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.6em 1em}\
.meta{color:#555;font-size:.9em}.turn{margin:.4em 0}.turn b{display:inline-block;min-width:7em}\
pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0 .6em 0;font-family:inherit;background:#fafafa;padding:.4em}\
.side{display:flex;gap:1em}.side>div{flex:1;border:1px solid #ddd;padding:.4em}\
.candidates{overflow-x:auto}.candidates>div{min-width:14em}\
.chosen{border-color:#2e7d32!important;background:#f1f8f1}.rejected{border-color:#c62828!important;background:#fdf3f3}\
del{background:#fdd;text-decoration:line-through}ins{background:#dfd;text-decoration:none}\
.error{color:#b00020;font-weight:bold}";

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav { a href="/" { "run" } a href="/sl" { "SL-CAI rows" } a href="/rl" { "RL-CAI rows" } a href="/report" { "report" } }
                (body)
            }
        }
    }
}

/// The run's front page.
pub fn index(run: &str, sl: Option<&str>, rl: Option<&str>) -> Markup {
    layout(
        "caiflow view",
        html! {
            h1 { "Run " (run) }
            ul {
                li { "SL-CAI table: " @match sl { Some(t) => a href="/sl" { (t) }, None => "none" } }
                li { "RL-CAI table: " @match rl { Some(t) => a href="/rl" { (t) }, None => "none" } }
                li { a href="/report" { "the report" } " (written by " code { "caiflow report" } ")" }
            }
        },
    )
}

/// A query string of `pairs` (empty values left out).
pub fn query_string(pairs: &[(&str, String)]) -> String {
    let kept: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

fn filter_pairs(f: &Filters) -> Vec<(&'static str, String)> {
    vec![
        ("principle", f.principle.clone().unwrap_or_default()),
        ("round", f.round.map(|r| r.to_string()).unwrap_or_default()),
        ("label", f.label.clone().unwrap_or_default()),
        ("error", f.error.clone().unwrap_or_default()),
        ("q", f.q.clone().unwrap_or_default()),
        ("truncated", f.truncated.clone().unwrap_or_default()),
        ("refusal", f.refusal.clone().unwrap_or_default()),
        ("unchanged", f.unchanged.clone().unwrap_or_default()),
        (
            "min_chars",
            f.min_chars.map(|n| n.to_string()).unwrap_or_default(),
        ),
        (
            "max_chars",
            f.max_chars.map(|n| n.to_string()).unwrap_or_default(),
        ),
        ("limit", f.limit.map(|l| l.to_string()).unwrap_or_default()),
    ]
    .into_iter()
    .chain(drill_pairs(f))
    .collect()
}

/// The filters the report's bars add, which the form does not show as fields.
fn drill_pairs(f: &Filters) -> Vec<(&'static str, String)> {
    /// A filter's value as text, when set.
    fn shown<T: ToString>(v: &Option<T>) -> Option<String> {
        v.as_ref().map(T::to_string)
    }
    [
        ("answer", shown(&f.answer)),
        ("stage", shown(&f.stage)),
        ("source", shown(&f.source)),
        ("min_latency_ms", shown(&f.min_latency_ms)),
        ("chosen_at", shown(&f.chosen_at)),
        ("rejected_at", shown(&f.rejected_at)),
        ("chosen_temperature", shown(&f.chosen_temperature)),
        ("min_prob", shown(&f.min_prob)),
        ("below_prob", shown(&f.below_prob)),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v.filter(|v| !v.is_empty())?)))
    .collect()
}

fn select(name: &str, current: Option<&str>, choices: &[String]) -> Markup {
    html! {
        label { (name) " "
            select name=(name) {
                option value="" { "any" }
                @for c in choices {
                    option value=(c) selected[current == Some(c.as_str())] { (c) }
                }
            }
        }
    }
}

/// A page of rows with the filter form and the link to the next page.
#[allow(clippy::too_many_arguments)]
pub fn list(
    run: &str,
    kind: Kind,
    table: Option<&str>,
    f: &Filters,
    page: &Page,
    choices: &[(&str, Vec<String>)],
) -> Markup {
    let path = match kind {
        Kind::Sl => "/sl",
        Kind::Rl => "/rl",
    };
    let title = match kind {
        Kind::Sl => "SL-CAI rows",
        Kind::Rl => "RL-CAI rows",
    };
    let current = |name: &str| -> Option<String> {
        match name {
            "principle" => f.principle.clone(),
            "round" => f.round.map(|r| r.to_string()),
            "label" => f.label.clone(),
            _ => None,
        }
    };
    let drill = drill_pairs(f);
    let next = page.next.as_ref().map(|after| {
        let mut pairs = filter_pairs(f);
        pairs.push(("after", after.clone()));
        format!("{path}?{}", query_string(&pairs))
    });
    layout(
        title,
        html! {
            h1 { (title) @if let Some(t) = table { " — table " code { (t) } } }
            @if table.is_none() {
                p { "This run has no " (title) " table." }
            } @else {
                form method="get" action=(path) {
                    @for (name, values) in choices {
                        (select(name, current(name).as_deref(), values))
                    }
                    (select("error", f.error.as_deref(), &yes_no()))
                    (select("truncated", f.truncated.as_deref(), &["yes".to_string()]))
                    (select("refusal", f.refusal.as_deref(), &yes_no()))
                    @if kind == Kind::Sl { (select("unchanged", f.unchanged.as_deref(), &yes_no())) }
                    label { "chars ≥ " input type="number" name="min_chars" min="0" value=(f.min_chars.map(|n| n.to_string()).unwrap_or_default()); }
                    label { "chars ≤ " input type="number" name="max_chars" min="0" value=(f.max_chars.map(|n| n.to_string()).unwrap_or_default()); }
                    label { "search " input type="search" name="q" value=(f.q.clone().unwrap_or_default()); }
                    @for (name, value) in &drill {
                        input type="hidden" name=(name) value=(value);
                    }
                    button type="submit" { "show" }
                    @if !drill.is_empty() {
                        p.meta.drill { "from the report: "
                            @for (name, value) in &drill { code { (name) "=" (value) } " " }
                            a href=(path) { "clear" }
                        }
                    }
                }
                p.meta { (page.rows.len()) " rows on this page" }
                @for row in &page.rows {
                    @match kind { Kind::Sl => (sl_row(row, run)), Kind::Rl => (rl_row(row, run)) }
                }
                @if let Some(next) = next { p { a.next href=(next) { "next page →" } } }
            }
        },
    )
}

fn yes_no() -> [String; 2] {
    ["yes".to_string(), "no".to_string()]
}

fn value<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
    row.iter()
        .find(|(c, _)| c == column)
        .and_then(|(_, v)| v.as_deref())
}

/// An error row: its reason, the attempts of its last request, and how to retry it.
fn error(row: &Row, run: &str) -> Markup {
    html! {
        @if let Some(e) = value(row, "error") {
            div.error {
                p { "error: " (e) }
                p.meta { "attempts of the last request: " (value(row, "attempts").unwrap_or("–"))
                    " · to retry only the failed rows: " code { "caiflow repair " (run) } }
            }
        }
    }
}

fn turn(who: &str, text: Option<&str>) -> Markup {
    html! {
        @if let Some(t) = text {
            div.turn { b { (who) } pre { (t) } }
        }
    }
}

/// An SL-CAI row as its conversation, with the word diff of response and revision.
pub fn sl_row(row: &Row, run: &str) -> Markup {
    let id = value(row, "prompt_id").unwrap_or("");
    let sequence = value(row, "sequence").unwrap_or("1");
    let link = format!(
        "/sl/row?{}",
        query_string(&[
            ("prompt_id", id.to_string()),
            ("sequence", sequence.to_string())
        ])
    );
    let diff = match (value(row, "response"), value(row, "revision")) {
        (Some(a), Some(b)) => words(a, b),
        _ => vec![],
    };
    html! {
        div.row.sl {
            div.meta {
                a href=(link) { "prompt " (id) }
                " · sequence " (sequence) " · round " (value(row, "round").unwrap_or("?"))
                " · principle " span.principle { (value(row, "principle_id").unwrap_or("–")) }
            }
            (turn("Human", value(row, "prompt")))
            (turn("Response", value(row, "response")))
            (turn("Critique", value(row, "critique")))
            (turn("Revision", value(row, "revision")))
            @if !diff.is_empty() {
                div.turn { b { "Diff" }
                    pre.diff { @for (i, part) in diff.iter().enumerate() {
                        @if gap_before(&diff, i) { " " }
                        @match part {
                            Part::Same(s) => (s),
                            Part::Removed(s) => del { (s) },
                            Part::Added(s) => ins { (s) },
                        }
                    } }
                }
            }
            (error(row, run))
        }
    }
}

/// One candidate of an RL-CAI row, as the `candidates` cell lists it.
#[derive(Debug, Default, serde::Deserialize)]
struct Candidate {
    sample_idx: Option<String>,
    temperature: Option<String>,
    response: Option<String>,
    finish_reason: Option<String>,
    error: Option<String>,
}

/// The sample indexes in the order the judge was shown them (`[2, 0, 1]`).
fn shown_order(text: Option<&str>) -> Vec<String> {
    text.unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// An RL-CAI row: its candidates side by side — where the judge was shown each, the chosen
/// and the rejected marked — then the judge's view. A table without a readable
/// `candidates` column shows its chosen and rejected answers side by side.
pub fn rl_row(row: &Row, run: &str) -> Markup {
    let id = value(row, "prompt_id").unwrap_or("");
    let link = format!("/rl/row?{}", query_string(&[("prompt_id", id.to_string())]));
    let candidates: Vec<Candidate> = value(row, "candidates")
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    let order = shown_order(value(row, "candidate_order"));
    let (chosen, rejected) = (value(row, "chosen_idx"), value(row, "rejected_idx"));
    html! {
        div.row.rl {
            div.meta {
                a href=(link) { "prompt " (id) }
                " · label " span.label { (value(row, "label").unwrap_or("–")) }
                " · chosen_prob " (value(row, "chosen_prob").unwrap_or("–"))
                " · candidate order " (value(row, "candidate_order").unwrap_or("–"))
            }
            (turn("Human", value(row, "prompt")))
            @if candidates.is_empty() {
                div.side {
                    div.chosen { b { "chosen" } pre { (value(row, "chosen").unwrap_or("")) } }
                    div.rejected { b { "rejected" } pre { (value(row, "rejected").unwrap_or("")) } }
                }
            } @else {
                div.side.candidates {
                    @for c in &candidates {
                        @let idx = c.sample_idx.as_deref();
                        @let mark = if idx.is_some() && idx == chosen {
                            "candidate chosen"
                        } else if idx.is_some() && idx == rejected {
                            "candidate rejected"
                        } else {
                            "candidate"
                        };
                        @let shown = idx.and_then(|i| order.iter().position(|o| o == i));
                        div class=(mark) {
                            b { "sample " (idx.unwrap_or("?")) }
                            @if mark != "candidate" { " · " (mark.trim_start_matches("candidate ")) }
                            div.meta {
                                "temperature " (c.temperature.as_deref().unwrap_or("–"))
                                @if let Some(p) = shown { " · shown #" (p + 1) }
                                @if let Some(f) = c.finish_reason.as_deref().filter(|f| *f == "length") { " · cut off (" (f) ")" }
                            }
                            pre { (c.response.as_deref().unwrap_or("")) }
                            @if let Some(e) = &c.error { div.error { (e) } }
                        }
                    }
                }
            }
            (turn("Judge", value(row, "explanation")))
            (error(row, run))
        }
    }
}

/// A plain message page (no such table, no report yet).
pub fn message(title: &str, text: &str) -> Markup {
    layout(title, html! { h1 { (title) } p { (text) } })
}

/// The report page as the viewer serves it: its bars lead to their rows. The report file
/// names the rows behind each bar in `data-rows` attributes (of a transparent link over the
/// bar and of a hidden list under the chart); here those that are viewer queries
/// (`/sl?…`, `/rl?…`) become `href`s and the lists are shown. Anything else in the file is
/// served as it is (the viewer's Content-Security-Policy runs no script of it).
pub fn drill_down(report: &str) -> String {
    const ATTRIBUTE: &str = " data-rows=\"";
    let mut out = String::with_capacity(report.len() + report.len() / 16);
    let mut rest = report;
    while let Some(at) = rest.find(ATTRIBUTE) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let value = after.strip_prefix(ATTRIBUTE).unwrap_or(after);
        if value.starts_with("/sl?") || value.starts_with("/rl?") {
            out.push_str(" href=\"");
        } else {
            out.push_str(ATTRIBUTE);
        }
        rest = value;
    }
    out.push_str(rest);
    out.replace("<nav class=\"rows\" hidden>", "<nav class=\"rows\">")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_viewer_queries_become_links() {
        let report = "<nav class=\"rows\" hidden><a data-rows=\"/sl?principle=a&amp;round=1\">a</a>\
                      <a data-rows=\"javascript:alert(1)\">x</a><a data-rows=\"//evil.example/\">y</a></nav>";
        let served = drill_down(report);
        assert!(served.contains("<nav class=\"rows\">"), "{served}");
        assert!(
            served.contains("<a href=\"/sl?principle=a&amp;round=1\">"),
            "{served}"
        );
        assert!(
            served.contains("<a data-rows=\"javascript:alert(1)\">"),
            "{served}"
        );
        assert!(
            served.contains("<a data-rows=\"//evil.example/\">"),
            "{served}"
        );
        assert_eq!(served.matches("href=").count(), 1);
    }

    #[test]
    fn the_shown_order_reads_arrow_lists() {
        assert_eq!(shown_order(Some("[2, 0, 1]")), ["2", "0", "1"]);
        assert!(shown_order(Some("[]")).is_empty());
        assert!(shown_order(None).is_empty());
    }

    proptest! {
        /// Whatever a report file holds, serving it never panics, adds a link only where a
        /// `data-rows` names a viewer query, and changes nothing else.
        #[test]
        fn drill_down_adds_links_only_to_viewer_queries(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(" data-rows=\"/sl?a=1\"".to_string()),
                    Just(" data-rows=\"/rl?b=2\"".to_string()),
                    Just(" data-rows=\"http://x/\"".to_string()),
                    Just(" data-rows=\"".to_string()),
                    Just("<nav class=\"rows\" hidden>".to_string()),
                    ".{0,12}",
                ],
                0..24,
            )
        ) {
            let report: String = parts.concat();
            let served = drill_down(&report);
            let queries = report.matches(" data-rows=\"/sl?").count()
                + report.matches(" data-rows=\"/rl?").count();
            let added = served.matches(" href=\"").count() - report.matches(" href=\"").count();
            prop_assert_eq!(added, queries);
            if !report.contains(" href=\"") && !report.contains("<nav class=\"rows\">") {
                let back = served
                    .replace(" href=\"", " data-rows=\"")
                    .replace("<nav class=\"rows\">", "<nav class=\"rows\" hidden>");
                prop_assert_eq!(back, report);
            }
        }
    }
}
