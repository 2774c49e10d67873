//! Blending CAI data with helpfulness data, with a ratio knob.
//!
//! - `blend(cai, helpful, ratio => 0.25, seed => 42)`: SL-CAI revisions (`prompt_id`,
//!   `prompt`, `revision`, `error`, optional `round` and `sequence`) with `helpful_sft`
//!   conversations. Output `sample_id` (`{prompt_id}-r{round}`, `{prompt_id}-s{sequence}-r{round}`
//!   for sequences after the first), `source`, `system`, `messages`, `error`.
//! - `blend_pairs(preferences, helpful, ratio => 0.25, seed => 42)`: `judge` output with
//!   `helpful_pairs` (HH chosen/rejected). Output `pair_id`, `source`, `prompt`, `chosen`,
//!   `rejected`, `label`, `chosen_prob`, `error`.
//!
//! `ratio` is the share of the blend that comes from helpful data (0.5: as many helpful rows
//! as usable CAI rows; 0: none). Helpful rows are chosen by a seeded hash of their id
//! (deterministic, streaming, no sort), so their count is the target in expectation. Both
//! inputs are read twice (once to count them), so give blend stored tables, not a view over
//! LLM stages. CAI rows that are not usable (an `error`, or a judge label other than `ok`)
//! are kept so exports can count them.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::plan_err;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::functions::core::expr_fn::{coalesce, get_field, named_struct};
use datafusion::functions::string::expr_fn::concat;
use datafusion::functions_nested::expr_fn::make_array;
use datafusion::logical_expr::{Expr, LogicalPlan, cast, col, lit, when};
use datafusion::physical_plan::ExecutionPlan;

use super::helpful::sft_schema;
use super::red_team_prompts::message_list_type;
use crate::stage::args::StageArgs;
use crate::stage::input::{resolve_input, session_state};
use crate::udf::{lit_i64, unit_hash_udf};

/// What is being blended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BlendKind {
    /// SL-CAI revisions with helpful SFT conversations.
    Sft,
    /// RL-CAI preference pairs with helpful preference pairs.
    Pairs,
}

#[derive(Debug)]
pub struct BlendFunction(pub BlendKind);

/// `truncated`: the row's final answer (the revision; the chosen or rejected answer) was
/// cut off by `max_tokens`. Exports skip such rows unless told to keep them.
fn truncated_field() -> Field {
    Field::new("truncated", DataType::Boolean, true)
}

/// The `truncated` value of CAI rows: from the input's `truncated` column (judgements) or
/// its revision's lineage, else false.
fn truncated_expr(df: &DataFrame) -> Expr {
    let schema = df.schema().as_arrow();
    if schema.index_of("truncated").is_ok() {
        coalesce(vec![col("truncated"), lit(false)])
    } else if schema.index_of("revise_lineage").is_ok() {
        coalesce(vec![
            get_field(col("revise_lineage"), "finish_reason").eq(lit("length")),
            lit(false),
        ])
    } else {
        lit(false)
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

impl BlendKind {
    fn name(self) -> &'static str {
        match self {
            BlendKind::Sft => "blend",
            BlendKind::Pairs => "blend_pairs",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            BlendKind::Sft => {
                let mut fields: Vec<_> = sft_schema().fields().iter().cloned().collect();
                fields.push(Arc::new(truncated_field()));
                fields.push(Arc::new(utf8("error")));
                Arc::new(Schema::new(fields))
            }
            BlendKind::Pairs => Arc::new(Schema::new(vec![
                utf8("pair_id"),
                utf8("source"),
                utf8("prompt"),
                utf8("chosen"),
                utf8("rejected"),
                utf8("label"),
                Field::new("chosen_prob", DataType::Float64, true),
                truncated_field(),
                utf8("error"),
            ])),
        }
    }

    fn needed(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            BlendKind::Sft => (
                &["prompt_id", "prompt", "revision", "error"],
                &["sample_id", "source", "system", "messages"],
            ),
            BlendKind::Pairs => (
                &[
                    "prompt_id",
                    "prompt",
                    "chosen",
                    "rejected",
                    "label",
                    "error",
                ],
                &["prompt_id", "source", "prompt", "chosen", "rejected"],
            ),
        }
    }

    /// Which CAI rows count towards the ratio.
    fn usable(self) -> Expr {
        match self {
            BlendKind::Sft => col("error").is_null(),
            BlendKind::Pairs => col("label").eq(lit("ok")).and(col("error").is_null()),
        }
    }

    /// The id helpful rows are sampled by.
    fn helpful_key(self) -> &'static str {
        match self {
            BlendKind::Sft => "sample_id",
            BlendKind::Pairs => "prompt_id",
        }
    }

    fn cai_rows(self, df: DataFrame, has_round: bool) -> Result<DataFrame> {
        let truncated = truncated_expr(&df);
        // Critique-revision sequences after the first (`sequences => N`) name themselves in
        // the id; the first keeps the id a single sequence always had.
        let sequence = if df.schema().has_column_with_unqualified_name("sequence") {
            when(
                col("sequence").gt(lit(1u32)),
                concat(vec![lit("-s"), cast(col("sequence"), DataType::Utf8)]),
            )
            .otherwise(lit(""))?
        } else {
            lit("")
        };
        match self {
            BlendKind::Sft => {
                let round = if has_round {
                    cast(col("round"), DataType::Utf8)
                } else {
                    lit("1")
                };
                let turn = |role: &str, content: Expr| {
                    named_struct(vec![
                        lit("role"),
                        lit(role),
                        lit("content"),
                        cast(content, DataType::Utf8),
                    ])
                };
                let messages = when(
                    col("error").is_null(),
                    make_array(vec![
                        turn("user", col("prompt")),
                        turn("assistant", col("revision")),
                    ]),
                )
                .otherwise(lit(ScalarValue::try_from(message_list_type())?))?;
                df.select(vec![
                    concat(vec![
                        cast(col("prompt_id"), DataType::Utf8),
                        sequence,
                        lit("-r"),
                        round,
                    ])
                    .alias("sample_id"),
                    lit("sl_cai").alias("source"),
                    lit("").alias("system"),
                    cast(messages, message_list_type()).alias("messages"),
                    truncated.alias("truncated"),
                    cast(col("error"), DataType::Utf8).alias("error"),
                ])
            }
            BlendKind::Pairs => df.select(vec![
                cast(col("prompt_id"), DataType::Utf8).alias("pair_id"),
                lit("rl_cai").alias("source"),
                cast(col("prompt"), DataType::Utf8).alias("prompt"),
                cast(col("chosen"), DataType::Utf8).alias("chosen"),
                cast(col("rejected"), DataType::Utf8).alias("rejected"),
                cast(col("label"), DataType::Utf8).alias("label"),
                if has_round {
                    cast(col("chosen_prob"), DataType::Float64)
                } else {
                    lit(ScalarValue::Float64(None))
                }
                .alias("chosen_prob"),
                truncated.alias("truncated"),
                cast(col("error"), DataType::Utf8).alias("error"),
            ]),
        }
    }

    fn helpful_rows(self, df: DataFrame) -> Result<DataFrame> {
        match self {
            BlendKind::Sft => df.select(vec![
                cast(col("sample_id"), DataType::Utf8).alias("sample_id"),
                cast(col("source"), DataType::Utf8).alias("source"),
                cast(col("system"), DataType::Utf8).alias("system"),
                cast(col("messages"), message_list_type()).alias("messages"),
                lit(false).alias("truncated"),
                lit(ScalarValue::Utf8(None)).alias("error"),
            ]),
            BlendKind::Pairs => df.select(vec![
                cast(col("prompt_id"), DataType::Utf8).alias("pair_id"),
                cast(col("source"), DataType::Utf8).alias("source"),
                cast(col("prompt"), DataType::Utf8).alias("prompt"),
                cast(col("chosen"), DataType::Utf8).alias("chosen"),
                cast(col("rejected"), DataType::Utf8).alias("rejected"),
                lit("ok").alias("label"),
                lit(ScalarValue::Float64(None)).alias("chosen_prob"),
                lit(false).alias("truncated"),
                lit(ScalarValue::Utf8(None)).alias("error"),
            ]),
        }
    }
}

impl TableFunctionImpl for BlendFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let kind = self.0;
        let name = kind.name();
        let a = StageArgs::parse(name, args.exprs())?;
        let state = session_state(args.session(), name)?;
        let (cai, helpful) = match a.positional.as_slice() {
            [c, h] => (
                resolve_input(state, c, name)?,
                resolve_input(state, h, name)?,
            ),
            _ => {
                return plan_err!(
                    "{name}: expected {name}(cai_table, helpful_table, ratio => r, seed => s)"
                );
            }
        };
        let ratio: f64 = a.parsed_or("ratio", 0.5)?;
        a.check("ratio", ratio, (0.0..1.0).contains(&ratio), "[0, 1)")?;
        let seed: i64 = a.parsed_or("seed", 42)?;
        a.finish(&[])?;
        let (needed_cai, needed_helpful) = kind.needed();
        for (plan, needed, what) in [
            (&cai, needed_cai, "cai"),
            (&helpful, needed_helpful, "helpful"),
        ] {
            for c in needed {
                if plan.schema().as_arrow().index_of(c).is_err() {
                    return plan_err!("{name}: the {what} input has no column '{c}'");
                }
            }
        }
        Ok(Arc::new(BlendTable {
            kind,
            cai,
            helpful,
            ratio,
            seed,
        }))
    }
}

/// The provider of a blend: its options and its two input plans (plain data, so a plan
/// holding it can be shipped to another process).
#[derive(Debug)]
pub struct BlendTable {
    pub kind: BlendKind,
    pub cai: LogicalPlan,
    pub helpful: LogicalPlan,
    pub ratio: f64,
    pub seed: i64,
}

#[async_trait]
impl TableProvider for BlendTable {
    fn schema(&self) -> SchemaRef {
        self.kind.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let name = self.kind.name();
        let state = session_state(state, name)?.clone();
        let cai = DataFrame::new(state.clone(), self.cai.clone());
        let helpful = DataFrame::new(state.clone(), self.helpful.clone());
        let usable = cai.clone().filter(self.kind.usable())?.count().await?;
        let available = if self.ratio > 0.0 {
            helpful.clone().count().await?
        } else {
            0
        };
        let wanted = (usable as f64 * self.ratio / (1.0 - self.ratio)).round();
        let keep = if available == 0 {
            0.0
        } else {
            (wanted / available as f64).min(1.0)
        };
        if wanted > available as f64 {
            tracing::warn!(
                "{name}: wanted {wanted} helpful rows for ratio {}, only {available} available",
                self.ratio
            );
        }
        tracing::info!(
            "{name}: {usable} usable CAI rows, about {:.0} of {available} helpful rows",
            keep * available as f64
        );
        let cai_schema = self.cai.schema().as_arrow().clone();
        let optional = match self.kind {
            BlendKind::Sft => "round",
            BlendKind::Pairs => "chosen_prob",
        };
        let cai_rows = self
            .kind
            .cai_rows(cai, cai_schema.index_of(optional).is_ok())?;
        let sampled = unit_hash_udf()
            .call(vec![col(self.kind.helpful_key()), lit_i64(self.seed)])
            .lt(lit(keep));
        let helpful_rows = self.kind.helpful_rows(helpful.filter(sampled)?)?;
        let blended = cai_rows.union(helpful_rows)?;
        let blended = match projection {
            Some(p) => {
                let schema = self.kind.schema();
                let names: Vec<&str> = p.iter().map(|i| schema.field(*i).name().as_str()).collect();
                blended.select_columns(&names)?
            }
            None => blended,
        };
        blended.create_physical_plan().await
    }
}
