//! The run's tables as pages: filters become DataFusion predicates (values are literals,
//! never SQL text), pages are keyset-paginated on the table's key and read with `LIMIT`, so
//! a page of a million-row table reads what the filter and the top-k need, not the table.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{DataFrame, Expr, col, lit};
use serde::Deserialize;

use caiflow_engine::CaiSession;
use caiflow_llm::Endpoints;
use caiflow_run::materialize::register_run_tables;
use caiflow_run::store::RunStore;

use datafusion::common::Column;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_nested::expr_fn::array_element;

use crate::{Result, ViewError};

/// Rows per page unless the request says (at most [`MAX_LIMIT`]).
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 200;

/// What a page shows: the filters of its query string.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filters {
    /// SL: rows critiqued under this principle.
    pub principle: Option<String>,
    /// SL: this round only.
    pub round: Option<i64>,
    /// RL: this label (`ok`, `tie`, `error`, …).
    pub label: Option<String>,
    /// `yes`: error rows only; `no`: rows without an error.
    pub error: Option<String>,
    /// Words searched in the row's texts (case-insensitive).
    pub q: Option<String>,
    /// `yes`: an answer was cut off by `max_tokens` (a lineage's finish_reason `length`).
    pub truncated: Option<String>,
    /// `yes` / `no`: the answer (SL: the revision; RL: the chosen) is a refusal, by the
    /// report's phrases.
    pub refusal: Option<String>,
    /// `yes` / `no`: the revision is (nearly) the response, as the report counts it.
    pub unchanged: Option<String>,
    /// The answer's length in characters, at least / at most.
    pub min_chars: Option<i64>,
    pub max_chars: Option<i64>,
    /// The answer the refusal and length filters look at: SL `revision` (default) or
    /// `response`; RL `chosen` (default) or `rejected`.
    pub answer: Option<String>,
    /// Rows with a request of this LLM stage (its `{stage}_lineage`).
    pub stage: Option<String>,
    /// With `stage`: how its request went — `sent` (answered by the endpoint), `journal`
    /// (served from the journal) or `failed` (the row's error came from it).
    pub source: Option<String>,
    /// With `stage`: its request took at least this long.
    pub min_latency_ms: Option<u64>,
    /// RL: the chosen (rejected) answer was shown to the judge at this position (1-based).
    pub chosen_at: Option<i64>,
    pub rejected_at: Option<i64>,
    /// RL: the chosen answer was sampled at this temperature.
    pub chosen_temperature: Option<f64>,
    /// RL: `chosen_prob` at least / below.
    pub min_prob: Option<f64>,
    pub below_prob: Option<f64>,
    /// The key of the last row of the previous page (a JSON array).
    pub after: Option<String>,
    pub limit: Option<usize>,
}

impl Filters {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// One row: its columns' values as text (None: null).
pub type Row = Vec<(String, Option<String>)>;

/// A page of rows and the key the next one starts after.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub rows: Vec<Row>,
    pub next: Option<String>,
}

/// Which kind of CAI table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sl,
    Rl,
}

impl Kind {
    /// The columns a page shows, when the table has them.
    fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Sl => &[
                "prompt_id",
                "sequence",
                "round",
                "prompt",
                "response",
                "principle_id",
                "critique",
                "revision",
                "error",
            ],
            Kind::Rl => &[
                "prompt_id",
                "prompt",
                "candidates",
                "candidate_order",
                "chosen_idx",
                "rejected_idx",
                "chosen",
                "rejected",
                "label",
                "chosen_prob",
                "explanation",
                "error",
            ],
        }
    }

    /// The table's key, in page order.
    fn key(self) -> &'static [&'static str] {
        match self {
            Kind::Sl => &["prompt_id", "sequence", "round"],
            Kind::Rl => &["prompt_id"],
        }
    }

    /// The answers a row can be judged by (refusal, length); the first by default.
    fn answers(self) -> &'static [&'static str] {
        match self {
            Kind::Sl => &["revision", "response"],
            Kind::Rl => &["chosen", "rejected"],
        }
    }

    /// The lineages whose finish_reason says the row was cut off.
    fn lineages(self) -> &'static [&'static str] {
        match self {
            Kind::Sl => &["respond_lineage", "critique_lineage", "revise_lineage"],
            Kind::Rl => &["judge_lineage"],
        }
    }

    /// The texts a search looks in.
    fn searched(self) -> &'static [&'static str] {
        match self {
            Kind::Sl => &["prompt", "response", "critique", "revision"],
            Kind::Rl => &["prompt", "chosen", "rejected", "explanation"],
        }
    }
}

/// A run opened for viewing: its committed tables registered in a session.
pub struct Viewer {
    pub run: String,
    pub session: CaiSession,
    /// The SL-CAI table (with `response`, `revision`, `principle_id`, `round`).
    pub sl: Option<String>,
    /// The RL-CAI table (with `candidates`, `chosen`, `rejected`, `label`).
    pub rl: Option<String>,
    pub store: RunStore,
    /// Filter choices, computed once: committed tables do not change while viewed.
    choices: tokio::sync::Mutex<std::collections::HashMap<(String, String), Vec<String>>>,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("run", &self.run)
            .field("sl", &self.sl)
            .field("rl", &self.rl)
            .finish()
    }
}

impl Viewer {
    /// Open `store`'s run; `config` is the `[report]` whose judgements (refusal phrases,
    /// unchanged similarity) the filters apply, as the report counted them.
    pub async fn open(
        store: RunStore,
        config: &caiflow_report::config::ReportConfig,
    ) -> Result<Arc<Viewer>> {
        let session = CaiSession::new(Endpoints::default());
        session.ctx.register_udf(crate::udf::refusal(config));
        session
            .ctx
            .register_udf(crate::udf::unchanged_revision(config));
        session
            .ctx
            .register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
                crate::udf::CandidateTemperature::default(),
            ));
        let mut sl = None;
        let mut rl = None;
        for name in register_run_tables(&session, &store).await? {
            let df = session.ctx.table(name.as_str()).await?;
            let has = |cols: &[&str]| {
                cols.iter()
                    .all(|c| df.schema().has_column_with_unqualified_name(c))
            };
            if sl.is_none() && has(&["response", "revision", "principle_id", "round"]) {
                sl = Some(name.clone());
            }
            if rl.is_none() && has(&["candidates", "chosen", "rejected", "label"]) {
                rl = Some(name.clone());
            }
        }
        Ok(Arc::new(Viewer {
            run: store.display.clone(),
            session,
            sl,
            rl,
            store,
            choices: Default::default(),
        }))
    }

    pub fn table(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Sl => self.sl.as_deref(),
            Kind::Rl => self.rl.as_deref(),
        }
    }

    async fn frame(&self, kind: Kind) -> Result<Option<DataFrame>> {
        match self.table(kind) {
            Some(t) => Ok(Some(self.session.ctx.table(t).await?)),
            None => Ok(None),
        }
    }

    /// A page of `kind`'s table under `filters`.
    pub async fn page(&self, kind: Kind, filters: &Filters) -> Result<Page> {
        self.page_with(kind, filters, vec![]).await
    }

    /// The rows of one prompt (of one sequence, for SL), in key order: a row's permalink.
    pub async fn rows_of_prompt(
        &self,
        kind: Kind,
        prompt_id: &str,
        sequence: Option<i64>,
        filters: &Filters,
    ) -> Result<Page> {
        let mut extra = vec![col("prompt_id").eq(lit(prompt_id.to_string()))];
        if let (Some(s), Kind::Sl) = (sequence, kind) {
            extra.push(col("sequence").eq(lit(s)));
        }
        self.page_with(kind, filters, extra).await
    }

    async fn page_with(&self, kind: Kind, filters: &Filters, extra: Vec<Expr>) -> Result<Page> {
        let Some(df) = self.frame(kind).await? else {
            return Ok(Page::default());
        };
        let columns: std::collections::HashSet<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let has = |c: &str| columns.contains(c);
        // A permalink into a table without the key it names: no rows.
        if (!extra.is_empty() && !has("prompt_id"))
            || (kind == Kind::Sl && extra.len() > 1 && !has("sequence"))
        {
            return Ok(Page::default());
        }
        let key: Vec<&str> = kind.key().iter().copied().filter(|c| has(c)).collect();
        let shown: Vec<&str> = kind.columns().iter().copied().filter(|c| has(c)).collect();
        let mut predicates: Vec<Expr> = extra;
        if let (Some(p), true) = (&filters.principle, has("principle_id")) {
            predicates.push(col("principle_id").eq(lit(p.clone())));
        }
        if let (Some(r), true) = (filters.round, has("round")) {
            predicates.push(col("round").eq(lit(r)));
        }
        if let (Some(l), true) = (&filters.label, has("label")) {
            predicates.push(col("label").eq(lit(l.clone())));
        }
        // A table without an `error` column has no error rows.
        match (filters.error.as_deref(), has("error")) {
            (Some("yes"), true) => predicates.push(col("error").is_not_null()),
            (Some("yes"), false) => predicates.push(lit(false)),
            (Some("no"), true) => predicates.push(col("error").is_null()),
            _ => {}
        }
        let yes_no = |v: &Option<String>| match v.as_deref() {
            Some("yes") => Some(true),
            Some("no") => Some(false),
            _ => None,
        };
        let answer = match filters.answer.as_deref() {
            None | Some("") => kind.answers()[0],
            Some(a) => match kind.answers().iter().find(|k| **k == a) {
                Some(k) => *k,
                None => {
                    return Err(ViewError::BadFilter(format!(
                        "answer={a}: this table's answers are {}",
                        kind.answers().join(" and ")
                    )));
                }
            },
        };
        predicates.extend(stage_predicates(kind, filters, &has)?);
        predicates.extend(judge_predicates(self, filters, &has)?);
        if let (Some(want), true) = (yes_no(&filters.refusal), has(answer)) {
            let is = self.session.ctx.udf("cai_refusal")?.call(vec![col(answer)]);
            predicates.push(if want { is } else { !is });
        }
        if let (Some(want), true) = (
            yes_no(&filters.unchanged),
            has("response") && has("revision"),
        ) {
            let is = self
                .session
                .ctx
                .udf("cai_unchanged")?
                .call(vec![col("response"), col("revision")]);
            predicates.push(if want { is } else { !is });
        }
        if yes_no(&filters.truncated) == Some(true) {
            let cut = kind
                .lineages()
                .iter()
                .filter(|l| has(l))
                .map(|l| get_field(col(*l), "finish_reason").eq(lit("length")))
                .reduce(Expr::or);
            predicates.push(cut.unwrap_or(lit(false)));
        }
        let length = || datafusion::functions::unicode::expr_fn::character_length(col(answer));
        if let (Some(n), true) = (filters.min_chars, has(answer)) {
            predicates.push(length().gt_eq(lit(n)));
        }
        if let (Some(n), true) = (filters.max_chars, has(answer)) {
            predicates.push(length().lt_eq(lit(n)));
        }
        if let Some(q) = filters
            .q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
        {
            let pattern = format!("%{}%", like_escaped(q));
            let any = kind
                .searched()
                .iter()
                .filter(|c| has(c))
                .map(|c| col(*c).ilike(lit(pattern.clone())))
                .reduce(Expr::or);
            if let Some(any) = any {
                predicates.push(any);
            }
        }
        if let Some(after) = filters.after.as_deref().and_then(|a| after_key(&key, a)) {
            predicates.push(after);
        }
        let table = df.clone();
        let mut df = df;
        if let Some(all) = predicates.into_iter().reduce(Expr::and) {
            df = df.filter(all)?;
        }
        let limit = filters.limit();
        let sort = || {
            key.iter()
                .map(|c| col(*c).sort(true, true))
                .collect::<Vec<_>>()
        };
        // Two steps: the page's keys first — a top-k over the key columns alone — then its
        // rows by key. A top-k keeps the batches its best rows came from, so one over the
        // long texts held hundreds of MiB on a rare filter (error rows: 700 MiB of a
        // 1,000,000-row table, 160 MiB this way).
        let keys = rows_of(
            df.clone()
                .sort(sort())?
                .limit(0, Some(limit + 1))?
                .select(key.iter().map(|c| col(*c)).collect::<Vec<_>>())?,
        )
        .await?;
        if keys.is_empty() {
            return Ok(Page::default());
        }
        let by_key = keys
            .iter()
            .map(|r| {
                key.iter()
                    .map(|k| {
                        let v = r.iter().find(|(c, _)| c == k)?.1.as_deref()?;
                        Some(col(*k).eq(key_literal(k, v)?))
                    })
                    .collect::<Option<Vec<Expr>>>()
                    .and_then(|parts| parts.into_iter().reduce(Expr::and))
            })
            .collect::<Option<Vec<Expr>>>()
            .and_then(|rows| rows.into_iter().reduce(Expr::or));
        // The ids first (a hash lookup, and row groups pruned by their statistics), then
        // the exact keys of the rows of those ids.
        let ids: Vec<Expr> = keys
            .iter()
            .filter_map(|r| r.iter().find(|(c, _)| c == "prompt_id")?.1.clone())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .map(lit)
            .collect();
        let df = match by_key {
            Some(by_key) if has("prompt_id") => {
                table.filter(col("prompt_id").in_list(ids, false).and(by_key))?
            }
            Some(by_key) => table.filter(by_key)?,
            // A key with a null (a hand-made table): the rows in one step.
            None => df,
        };
        let df = df.sort(sort())?.limit(0, Some(limit + 1))?.select(
            shown
                .iter()
                .map(|c| col(*c))
                .chain(
                    // The attempts of the row's last request: an error row's history.
                    kind.lineages()
                        .last()
                        .filter(|l| has(l))
                        .map(|l| get_field(col(*l), "attempts").alias("attempts")),
                )
                .collect::<Vec<_>>(),
        )?;
        let mut rows = rows_of(df).await?;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| key_of(&key, r))
        } else {
            None
        };
        Ok(Page { rows, next })
    }

    /// The distinct values of a column (for a filter's choices), at most 200; computed once
    /// per table and column.
    pub async fn choices(&self, kind: Kind, column: &str) -> Result<Vec<String>> {
        let key = (
            self.table(kind).unwrap_or("").to_string(),
            column.to_string(),
        );
        let mut cache = self.choices.lock().await;
        if let Some(values) = cache.get(&key) {
            return Ok(values.clone());
        }
        let values = self.distinct(kind, column).await?;
        cache.insert(key, values.clone());
        Ok(values)
    }

    async fn distinct(&self, kind: Kind, column: &str) -> Result<Vec<String>> {
        let Some(df) = self.frame(kind).await? else {
            return Ok(vec![]);
        };
        if !df.schema().has_column_with_unqualified_name(column) {
            return Ok(vec![]);
        }
        let df = df
            .select(vec![col(column)])?
            .distinct()?
            .sort(vec![col(column).sort(true, false)])?
            .limit(0, Some(200))?;
        Ok(rows_of(df)
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().and_then(|(_, v)| v))
            .collect())
    }
}

/// The `stage`, `source` and `min_latency_ms` filters: rows with a request of a stage, by
/// how it went (its lineage's attempts: 0 when the journal served it) and how long it took.
fn stage_predicates(kind: Kind, f: &Filters, has: &dyn Fn(&str) -> bool) -> Result<Vec<Expr>> {
    let Some(stage) = f.stage.as_deref().filter(|s| !s.is_empty()) else {
        if f.source.is_some() || f.min_latency_ms.is_some() {
            return Err(ViewError::BadFilter(
                "source and min_latency_ms need a stage (stage=critique, …)".into(),
            ));
        }
        return Ok(vec![]);
    };
    let lineage = format!("{stage}_lineage");
    if !has(&lineage) {
        // A stage this table keeps no requests of: no rows.
        return Ok(vec![lit(false)]);
    }
    let column = || Expr::Column(Column::new_unqualified(lineage.as_str()));
    let field = |name: &str| get_field(column(), name);
    let mut out = vec![column().is_not_null()];
    if let Some(ms) = f.min_latency_ms {
        out.push(field("latency_ms").gt_eq(lit(ms)));
    }
    match f.source.as_deref() {
        None | Some("") => {}
        Some("sent") => out.push(field("attempts").gt_eq(lit(1u32))),
        Some("journal") => {
            out.push(field("attempts").eq(lit(0u32)));
            if has("error") {
                out.push(col("error").is_null());
            }
        }
        Some("failed") => {
            if has("error") {
                out.push(col("error").is_not_null());
            }
            // The stage was the row's last request: no later stage's lineage.
            let later = kind
                .lineages()
                .iter()
                .skip_while(|l| **l != lineage)
                .skip(1)
                .filter(|l| has(l));
            out.extend(later.map(|l| col(*l).is_null()));
        }
        Some(other) => {
            return Err(ViewError::BadFilter(format!(
                "source={other}: use sent, journal or failed"
            )));
        }
    }
    Ok(out)
}

/// The RL filters on how the judge saw the candidates: the position the chosen (rejected)
/// answer was shown at, the temperature it was sampled at, and `chosen_prob` ranges.
fn judge_predicates(v: &Viewer, f: &Filters, has: &dyn Fn(&str) -> bool) -> Result<Vec<Expr>> {
    let mut out = vec![];
    for (position, idx) in [(f.chosen_at, "chosen_idx"), (f.rejected_at, "rejected_idx")] {
        let Some(p) = position else { continue };
        out.push(if has("candidate_order") && has(idx) && p >= 1 {
            array_element(col("candidate_order"), lit(p)).eq(col(idx))
        } else {
            lit(false)
        });
    }
    if let Some(t) = f.chosen_temperature {
        out.push(if has("candidates") && has("chosen_idx") {
            v.session
                .ctx
                .udf("cai_candidate_temperature")?
                .call(vec![col("candidates"), col("chosen_idx")])
                .eq(lit(t))
        } else {
            lit(false)
        });
    }
    for (bound, at_least) in [(f.min_prob, true), (f.below_prob, false)] {
        let Some(b) = bound else { continue };
        out.push(match (has("chosen_prob"), at_least) {
            (true, true) => col("chosen_prob").gt_eq(lit(b)),
            (true, false) => col("chosen_prob").lt(lit(b)),
            (false, _) => lit(false),
        });
    }
    Ok(out)
}

/// `%`, `_` and `\` taken literally in an ILIKE pattern.
fn like_escaped(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The key of a row, as the `after` of the next page.
fn key_of(key: &[&str], row: &Row) -> String {
    let values: Vec<String> = key
        .iter()
        .map(|k| {
            row.iter()
                .find(|(c, _)| c == k)
                .and_then(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    values.join("\u{1f}")
}

/// Rows after `after` in key order: (k1 > a1) or (k1 = a1 and k2 > a2) or …; None when the
/// cursor does not fit the key (a hand-edited URL starts from the top).
fn after_key(key: &[&str], after: &str) -> Option<Expr> {
    let values: Vec<&str> = after.split('\u{1f}').collect();
    if values.len() != key.len() {
        return None;
    }
    let typed = key_literal;
    let mut any: Option<Expr> = None;
    for i in 0..key.len() {
        let mut clause = col(key[i]).gt(typed(key[i], values[i])?);
        for j in 0..i {
            clause = col(key[j]).eq(typed(key[j], values[j])?).and(clause);
        }
        any = Some(match any {
            Some(a) => a.or(clause),
            None => clause,
        });
    }
    any
}

/// A key column's value as a literal: `prompt_id` is text, `sequence` and `round` integers.
fn key_literal(k: &str, v: &str) -> Option<Expr> {
    if k == "prompt_id" {
        Some(lit(v.to_string()))
    } else {
        v.parse::<i64>().ok().map(lit)
    }
}

/// A cell as text: a list of structs (`candidates`) as a JSON array of objects of its
/// fields' texts, so a page can lay its items out; anything else as Arrow displays it.
fn cell(a: &ArrayRef, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    let items = a
        .as_list_opt::<i32>()
        .and_then(|list| Some((list, list.values().as_struct_opt()?)));
    let Some((list, items)) = items else {
        return array_value_to_string(a, i).ok();
    };
    let offsets = list.value_offsets();
    let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
    let objects: Vec<serde_json::Value> = (start..end)
        .map(|k| {
            items
                .fields()
                .iter()
                .zip(items.columns())
                .map(|(f, c)| {
                    let v = if c.is_null(k) {
                        serde_json::Value::Null
                    } else {
                        array_value_to_string(c, k)
                            .map(serde_json::Value::String)
                            .unwrap_or(serde_json::Value::Null)
                    };
                    (f.name().clone(), v)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    Some(serde_json::Value::Array(objects).to_string())
}

async fn rows_of(df: DataFrame) -> Result<Vec<Row>> {
    let names: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut rows = vec![];
    for batch in df.collect().await? {
        for i in 0..batch.num_rows() {
            let row = batch
                .columns()
                .iter()
                .zip(&names)
                .map(|(a, n)| (n.clone(), cell(a, i)))
                .collect();
            rows.push(row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_cursor_round_trips_and_rejects_nonsense() {
        let key = ["prompt_id", "sequence", "round"];
        let row: Row = vec![
            ("prompt_id".into(), Some("ab12".into())),
            ("sequence".into(), Some("1".into())),
            ("round".into(), Some("2".into())),
        ];
        let cursor = key_of(&key, &row);
        assert!(after_key(&key, &cursor).is_some());
        assert!(after_key(&key, "x").is_none());
        assert!(after_key(&key, "a\u{1f}b\u{1f}c").is_none(), "ints only");
        assert_eq!(like_escaped("50%_a\\b"), "50\\%\\_a\\\\b");
    }
}
