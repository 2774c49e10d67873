//! `blend(cai, helpful, ratio => 0.5, seed => 42)`: SL-CAI pairs mixed with helpfulness data.
//!
//! `ratio` is the share of the blended dataset that comes from `helpful` (0.5: as many
//! helpful conversations as usable CAI rows; 0: none). Helpful rows are chosen by a seeded
//! hash of their `sample_id` (deterministic, streaming, no sort), so the helpful count is the
//! target in expectation. Both inputs are read twice (once to count them), so give blend
//! stored tables, not a view over LLM stages.
//!
//! Output: `sample_id`, `source`, `system`, `messages`, `error`. CAI rows with `error` set are
//! kept (exports skip and count them); their `messages` are null.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::functions::core::expr_fn::named_struct;
use datafusion::functions::string::expr_fn::concat;
use datafusion::functions_nested::expr_fn::make_array;
use datafusion::logical_expr::{Expr, LogicalPlan, cast, col, lit, when};
use datafusion::physical_plan::ExecutionPlan;

use super::args::StageArgs;
use super::helpful::sft_schema;
use super::input::{resolve_input, session_state};
use super::prompts::message_list_type;
use crate::udf::{lit_i64, unit_hash_udf};

#[derive(Debug)]
pub struct BlendFunction;

pub fn blend_schema() -> SchemaRef {
    let mut fields: Vec<_> = sft_schema().fields().iter().cloned().collect();
    fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
        "error",
        DataType::Utf8,
        true,
    )));
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

impl TableFunctionImpl for BlendFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let a = StageArgs::parse("blend", args.exprs())?;
        let state = session_state(args.session(), "blend")?;
        let (cai, helpful) = match a.positional.as_slice() {
            [c, h] => (
                resolve_input(state, c, "blend")?,
                resolve_input(state, h, "blend")?,
            ),
            _ => {
                return Err(DataFusionError::Plan(
                    "blend: expected blend(cai_table, helpful_table, ratio => r, seed => s)".into(),
                ));
            }
        };
        let ratio: f64 = a.parsed_or("ratio", 0.5)?;
        if !(0.0..1.0).contains(&ratio) {
            return Err(DataFusionError::Plan(format!(
                "blend: ratio => {ratio} must be in [0, 1)"
            )));
        }
        let seed: i64 = a.parsed_or("seed", 42)?;
        a.finish(&[])?;
        for (plan, needed, what) in [
            (
                &cai,
                &["prompt_id", "prompt", "revision", "error"][..],
                "cai",
            ),
            (
                &helpful,
                &["sample_id", "source", "system", "messages"][..],
                "helpful",
            ),
        ] {
            for c in needed {
                if plan.schema().as_arrow().index_of(c).is_err() {
                    return Err(DataFusionError::Plan(format!(
                        "blend: the {what} input has no column '{c}'"
                    )));
                }
            }
        }
        Ok(Arc::new(BlendTable {
            cai,
            helpful,
            ratio,
            seed,
        }))
    }
}

#[derive(Debug)]
struct BlendTable {
    cai: LogicalPlan,
    helpful: LogicalPlan,
    ratio: f64,
    seed: i64,
}

impl BlendTable {
    fn cai_rows(&self, df: DataFrame) -> Result<DataFrame> {
        let has_round = self.cai.schema().as_arrow().index_of("round").is_ok();
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
                lit("-r"),
                round,
            ])
            .alias("sample_id"),
            lit("sl_cai").alias("source"),
            lit("").alias("system"),
            cast(messages, message_list_type()).alias("messages"),
            cast(col("error"), DataType::Utf8).alias("error"),
        ])
    }

    fn helpful_rows(&self, df: DataFrame, keep: f64) -> Result<DataFrame> {
        let sampled = unit_hash_udf()
            .call(vec![col("sample_id"), lit_i64(self.seed)])
            .lt(lit(keep));
        df.filter(sampled)?.select(vec![
            cast(col("sample_id"), DataType::Utf8).alias("sample_id"),
            cast(col("source"), DataType::Utf8).alias("source"),
            cast(col("system"), DataType::Utf8).alias("system"),
            cast(col("messages"), message_list_type()).alias("messages"),
            lit(ScalarValue::Utf8(None)).alias("error"),
        ])
    }
}

#[async_trait]
impl TableProvider for BlendTable {
    fn schema(&self) -> SchemaRef {
        blend_schema()
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
        let state = session_state(state, "blend")?.clone();
        let cai = DataFrame::new(state.clone(), self.cai.clone());
        let helpful = DataFrame::new(state.clone(), self.helpful.clone());
        let usable = cai.clone().filter(col("error").is_null())?.count().await?;
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
                "blend: wanted {wanted} helpful rows for ratio {}, only {available} available",
                self.ratio
            );
        }
        tracing::info!(
            "blend: {usable} usable CAI rows, about {:.0} of {available} helpful rows",
            keep * available as f64
        );
        let blended = self
            .cai_rows(cai)?
            .union(self.helpful_rows(helpful, keep)?)?;
        let blended = match projection {
            Some(p) => {
                let schema = blend_schema();
                let names: Vec<&str> = p.iter().map(|i| schema.field(*i).name().as_str()).collect();
                blended.select_columns(&names)?
            }
            None => blended,
        };
        blended.create_physical_plan().await
    }
}
