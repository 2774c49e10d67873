//! `caiflow run --ui`: a live page of the run, served while it runs: per-stage figures, the
//! overall share done with its ETA, spend against the budget, errors by reason, and each
//! stage's newest answers. `/live` is rendered
//! with the current figures (readable without script) and then kept current by
//! server-sent events from `/live/events`: every second, the same figures as an HTML
//! fragment rendered (and escaped) on the server, swapped in by a three-line script.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use caiflow_engine::progress::{Progress, StageStats};
use caiflow_llm::{Budget, CancellationToken};

/// What the live page shows.
pub struct Live {
    pub run: String,
    pub progress: Arc<Progress>,
    /// The run's budget (`--max-cost`, `--max-tokens`, `--max-requests`).
    pub budget: Budget,
    pub started: Instant,
}

/// Serve the live page on `listener` until `stop` is cancelled.
pub async fn serve(
    live: Arc<Live>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> crate::Result<()> {
    let app = Router::new()
        .route("/", get(page))
        .route("/live", get(page))
        .route("/live/events", get(events))
        .route("/live/script.js", get(script))
        .layer(axum::middleware::map_response(own_script_only))
        .with_state(live);
    crate::server::serve_until(app, listener, stop).await
}

const SCRIPT: &str = "const s=new EventSource('/live/events');\
s.onmessage=e=>{document.getElementById('live').innerHTML=e.data;};";

/// The page's one script (served, not inline, so the policy can forbid inline scripts).
async fn script() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        SCRIPT,
    )
        .into_response()
}

/// No script but the page's own runs, nothing loads from elsewhere: the figures it shows
/// (answers included) are escaped HTML, and this policy would stop any that slipped by.
async fn own_script_only(response: Response) -> Response {
    crate::server::with_policy(
        response,
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'",
    )
}

async fn page(State(live): State<Arc<Live>>) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "caiflow run — live" }
                style { (PreEscaped("body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child,th:first-child{text-align:left}.meta{color:#555}")) }
            }
            body {
                h1 { "Run " (live.run) }
                div #live { (figures(&live)) }
                script src="/live/script.js" {}
            }
        }
    };
    Html(markup.into_string()).into_response()
}

async fn events(
    State(live): State<Arc<Live>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = tokio_stream_interval(Duration::from_secs(1));
    let stream = futures::StreamExt::map(ticks, move |_| {
        Ok(Event::default().data(figures(&live).into_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A tick now and every `period` after.
fn tokio_stream_interval(period: Duration) -> impl Stream<Item = ()> {
    futures::stream::unfold(None::<tokio::time::Interval>, move |state| async move {
        let mut interval = state.unwrap_or_else(|| tokio::time::interval(period));
        interval.tick().await;
        Some(((), Some(interval)))
    })
}

/// The figures: per stage rows, requests, errors by reason, tokens, cost and rate; the
/// run's spend against its budget.
fn figures(live: &Live) -> Markup {
    let stages: Vec<StageStats> = live.progress.stats();
    let elapsed = live.started.elapsed().as_secs_f64().max(0.001);
    let cost: f64 = stages
        .iter()
        .flat_map(|s| s.usage.values())
        .map(|u| u.cost)
        .sum();
    let tokens: u64 = stages
        .iter()
        .map(|s| s.prompt_tokens.saturating_add(s.completion_tokens))
        .sum();
    let requests: u64 = stages.iter().map(|s| s.sent).sum();
    let overall =
        caiflow_engine::progress::overall_line(&live.progress.snapshot(), live.started.elapsed());
    html! {
        p #overall { (overall) }
        p.meta { "running for " (format!("{elapsed:.0}")) " s · "
            span #requests { (requests) } " requests sent · " (tokens) " tokens · $" (format!("{cost:.4}"))
            @if let Some(max) = live.budget.max_cost { " of $" (format!("{max:.2}")) " (--max-cost)" }
            @if let Some(max) = live.budget.max_tokens { " · tokens budget " (max) }
            @if let Some(max) = live.budget.max_requests { " · requests budget " (max) }
        }
        table {
            tr { th { "stage" } th { "rows" } th { "rows/s" } th { "requests" } th { "from journal" } th { "retries" } th { "errors" } th { "tokens" } th { "cost $" } }
            @for s in &stages {
                tr.stage {
                    td { (s.name) }
                    td.rows { (s.rows) }
                    td { (format!("{:.1}", s.rows as f64 / elapsed)) }
                    td { (s.requests) }
                    td { (s.journal_hits) }
                    td { (s.retries) }
                    td { (s.errors) }
                    td { (s.prompt_tokens.saturating_add(s.completion_tokens)) }
                    td { (format!("{:.4}", s.usage.values().map(|u| u.cost).sum::<f64>())) }
                }
            }
        }
        h3 { "Newest answers" }
        @for s in live.progress.snapshot() {
            @for (asked, answer) in s.recent_answers() {
                div.answer style="border:1px solid #ddd;margin:.4em 0;padding:.3em .6em" {
                    div.meta { (s.name) }
                    pre style="white-space:pre-wrap;margin:0;color:#555" { (asked) }
                    pre style="white-space:pre-wrap;margin:0" { (answer) }
                }
            }
        }
        @let reasons: Vec<(&String, &String, &u64)> = stages.iter().flat_map(|s| s.errors_by_reason.iter().map(move |(r, n)| (&s.name, r, n))).collect();
        @if !reasons.is_empty() {
            h3 { "Errors by reason" }
            ul { @for (stage, reason, n) in reasons { li { (stage) ": " (reason) " — " (n) } } }
        }
    }
}
