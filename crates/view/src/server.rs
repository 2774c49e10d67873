//! The HTTP server: one route per page, read-only, bound where the CLI says (127.0.0.1 by
//! default). A failed query is a 500 page with its one-line reason, never a crash.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use caiflow_llm::CancellationToken;

use crate::pages;
use crate::query::{Filters, Kind, Viewer};

/// Serve `viewer` on `listener` until `stop` is cancelled.
pub async fn serve(
    viewer: Arc<Viewer>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> crate::Result<()> {
    let app = Router::new()
        .route("/", get(index))
        .route("/sl", get(sl))
        .route("/rl", get(rl))
        .route("/sl/row", get(sl_row))
        .route("/rl/row", get(rl_row))
        .route("/report", get(report))
        .layer(axum::middleware::map_response(no_script))
        .with_state(viewer);
    serve_until(app, listener, stop).await
}

/// Serve `app` on `listener` until `stop` is cancelled (requests in flight finish).
pub(crate) async fn serve_until(
    app: Router,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> crate::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}

/// Every page: no script runs, nothing loads from elsewhere (styles and images inline).
async fn no_script(response: Response) -> Response {
    with_policy(
        response,
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
    )
}

/// `response` with `policy` as its Content-Security-Policy.
pub(crate) fn with_policy(mut response: Response, policy: &'static str) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(policy),
    );
    response
}

fn failed(e: crate::ViewError) -> Response {
    let status = match e {
        crate::ViewError::BadFilter(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        Html(pages::message("error", &e.to_string()).into_string()),
    )
        .into_response()
}

async fn index(State(v): State<Arc<Viewer>>) -> Response {
    Html(pages::index(&v.run, v.sl.as_deref(), v.rl.as_deref()).into_string()).into_response()
}

async fn list(v: &Viewer, kind: Kind, f: Filters) -> Response {
    let page = match v.page(kind, &f).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let names: &[&str] = match kind {
        Kind::Sl => &["principle", "round"],
        Kind::Rl => &["label"],
    };
    let mut choices = vec![];
    for name in names {
        let column = if *name == "principle" {
            "principle_id"
        } else {
            name
        };
        match v.choices(kind, column).await {
            Ok(values) => choices.push((*name, values)),
            Err(e) => return failed(e),
        }
    }
    Html(pages::list(&v.run, kind, v.table(kind), &f, &page, &choices).into_string())
        .into_response()
}

async fn sl(State(v): State<Arc<Viewer>>, Query(f): Query<Filters>) -> Response {
    list(&v, Kind::Sl, f).await
}

async fn rl(State(v): State<Arc<Viewer>>, Query(f): Query<Filters>) -> Response {
    list(&v, Kind::Rl, f).await
}

#[derive(serde::Deserialize)]
struct RowKey {
    prompt_id: String,
    sequence: Option<i64>,
}

/// Every round of one prompt's sequence (SL), or its one row (RL): a row's permalink.
async fn one(v: &Viewer, kind: Kind, key: RowKey) -> Response {
    let f = Filters {
        q: None,
        limit: Some(crate::query::MAX_LIMIT),
        ..Default::default()
    };
    let page = match v
        .rows_of_prompt(kind, &key.prompt_id, key.sequence, &f)
        .await
    {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    Html(pages::list(&v.run, kind, v.table(kind), &f, &page, &[]).into_string()).into_response()
}

async fn sl_row(State(v): State<Arc<Viewer>>, Query(k): Query<RowKey>) -> Response {
    one(&v, Kind::Sl, k).await
}

async fn rl_row(State(v): State<Arc<Viewer>>, Query(k): Query<RowKey>) -> Response {
    one(&v, Kind::Rl, k).await
}

/// The run's report page, as `caiflow report` wrote it.
async fn report(State(v): State<Arc<Viewer>>) -> Response {
    match v.store.get("report/index.html").await {
        Ok(Some(bytes)) => {
            let html = String::from_utf8_lossy(&bytes);
            Html(pages::drill_down(&html)).into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Html(
                pages::message(
                    "no report yet",
                    "This run has no report: run `caiflow report RUN` (or `caiflow run … --report`), then reload.",
                )
                .into_string(),
            ),
        )
            .into_response(),
        Err(e) => failed(e.into()),
    }
}
