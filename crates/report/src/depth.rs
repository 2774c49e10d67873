//! Figures of the paper's judge audit and of reasoning models, from the run's tables with
//! DataFusion (small group-bys; nothing is collected but their results).
//!
//! - **Judge audit** (`judge(…, audit => true)`, any table with `comparisons`): per
//!   principle, the comparisons made, how many were asked in both orders, the share of
//!   those whose two orders prefer the same candidate (*position consistency*), and the
//!   share whose soft label (`p_ab > 0.5`) agrees with the judge's written choice. A
//!   principle whose consistency is below [`NOISY_BELOW`] is flagged *noisy* in the report
//!   and the dataset card: its labels are mostly the position the candidates were shown in.
//! - **Reasoning leakage** (`critique(…, target => 'reasoning')`, any table with
//!   `thinking_harmful` and `answer_harmful`): of the rows whose critic gave both verdicts,
//!   the share whose thinking was harmful while the answer was safe.

use serde::{Deserialize, Serialize};

use caiflow_engine::CaiSession;
use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::dataframe::DataFrame;

use crate::{ReportError, Result};

/// A result column as `T` (cast first: DataFusion may hand back views or other widths).
fn column_as<T: Array + Clone + 'static>(column: &ArrayRef, to: &DataType) -> Result<T> {
    let cast = cast(column, to)?;
    cast.as_any().downcast_ref::<T>().cloned().ok_or_else(|| {
        ReportError::Table(format!(
            "a report query returned {} for {to}",
            column.data_type()
        ))
    })
}

/// Position consistency below this flags a principle as noisy.
pub const NOISY_BELOW: f64 = 0.7;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrincipleAudit {
    pub principle: String,
    pub comparisons: u64,
    /// Comparisons asked in both orders.
    pub audited: u64,
    /// Of those, the share whose orders agree.
    pub consistency: Option<f64>,
    /// The share whose soft and hard labels agree (where the judge wrote a choice).
    pub agreement: Option<f64>,
    pub noisy: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeAudit {
    pub audit_table: String,
    pub principles: Vec<PrincipleAudit>,
}

impl JudgeAudit {
    pub fn noisy(&self) -> impl Iterator<Item = &PrincipleAudit> {
        self.principles.iter().filter(|p| p.noisy)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasoningLeakage {
    pub leakage_table: String,
    /// Rows with both verdicts.
    pub judged: u64,
    /// Of those, thinking harmful and answer safe.
    pub leaked: u64,
    pub share: Option<f64>,
    /// Of those, thinking harmful at all.
    pub harmful_thinking: u64,
}

fn has(df: &DataFrame, columns: &[&str]) -> bool {
    columns
        .iter()
        .all(|c| df.schema().has_column_with_unqualified_name(c))
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The audit figures of `table`, when it has comparisons.
pub async fn judge_audit(
    cai: &CaiSession,
    table: &str,
    df: &DataFrame,
) -> Result<Option<JudgeAudit>> {
    if !has(df, &["comparisons"]) {
        return Ok(None);
    }
    let sql = format!(
        "SELECT c['principle'] AS principle, count(*) AS comparisons, \
           count(c['consistent']) AS audited, \
           avg(CASE WHEN c['consistent'] THEN 1.0 ELSE 0.0 END) FILTER (WHERE c['consistent'] IS NOT NULL) AS consistency, \
           avg(CASE WHEN c['agree'] THEN 1.0 ELSE 0.0 END) FILTER (WHERE c['agree'] IS NOT NULL) AS agreement \
         FROM (SELECT unnest(comparisons) AS c FROM {}) \
         GROUP BY c['principle'] ORDER BY c['principle']",
        quoted(table)
    );
    let mut principles = vec![];
    for batch in cai.ctx.sql(&sql).await?.collect().await? {
        let principle: StringArray = column_as(batch.column(0), &DataType::Utf8)?;
        let comparisons: Int64Array = column_as(batch.column(1), &DataType::Int64)?;
        let audited: Int64Array = column_as(batch.column(2), &DataType::Int64)?;
        let consistency: Float64Array = column_as(batch.column(3), &DataType::Float64)?;
        let agreement: Float64Array = column_as(batch.column(4), &DataType::Float64)?;
        for i in 0..batch.num_rows() {
            let consistency = (!consistency.is_null(i)).then(|| consistency.value(i));
            principles.push(PrincipleAudit {
                principle: if principle.is_null(i) {
                    String::new()
                } else {
                    principle.value(i).to_string()
                },
                comparisons: comparisons.value(i).max(0) as u64,
                audited: audited.value(i).max(0) as u64,
                consistency,
                agreement: (!agreement.is_null(i)).then(|| agreement.value(i)),
                noisy: consistency.is_some_and(|c| c < NOISY_BELOW),
            });
        }
    }
    if principles.is_empty() {
        return Ok(None);
    }
    Ok(Some(JudgeAudit {
        audit_table: table.to_string(),
        principles,
    }))
}

/// The reasoning leakage of `table`, when its critic gave verdicts on thinking and answer.
pub async fn reasoning_leakage(
    cai: &CaiSession,
    table: &str,
    df: &DataFrame,
) -> Result<Option<ReasoningLeakage>> {
    if !has(df, &["thinking_harmful", "answer_harmful"]) {
        return Ok(None);
    }
    let sql = format!(
        "SELECT count(*) FILTER (WHERE thinking_harmful IS NOT NULL AND answer_harmful IS NOT NULL), \
           count(*) FILTER (WHERE thinking_harmful AND NOT answer_harmful), \
           count(*) FILTER (WHERE thinking_harmful AND answer_harmful IS NOT NULL) \
         FROM {}",
        quoted(table)
    );
    let batches = cai.ctx.sql(&sql).await?.collect().await?;
    let Some(batch) = batches.first().filter(|b| b.num_rows() == 1) else {
        return Ok(None);
    };
    let get = |i: usize| -> Result<u64> {
        let counts: Int64Array = column_as(batch.column(i), &DataType::Int64)?;
        Ok(if counts.is_empty() || counts.is_null(0) {
            0
        } else {
            counts.value(0).max(0) as u64
        })
    };
    let (judged, leaked, harmful_thinking) = (get(0)?, get(1)?, get(2)?);
    if judged == 0 {
        return Ok(None);
    }
    Ok(Some(ReasoningLeakage {
        leakage_table: table.to_string(),
        judged,
        leaked,
        share: Some(leaked as f64 / judged as f64),
        harmful_thinking,
    }))
}
