//! The report's judgements as SQL functions of the viewer's session, so its filters
//! ("refusal", "unchanged revision") are predicates of the page's query — pushed into the
//! scan and paginated like any other — and say exactly what the report counts.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{Array, ArrayRef, BooleanBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

use caiflow_report::config::ReportConfig;
use caiflow_report::figures::{RefusalPhrases, unchanged};

/// Texts as Utf8, whatever string type the table stored.
fn utf8(v: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    Ok(cast(&v.to_array(rows)?, &DataType::Utf8)?)
}

fn rows_of(args: &[ColumnarValue]) -> usize {
    args.iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1)
}

/// `cai_refusal(text)`: the text holds one of `[report] refusal_phrases`.
pub fn refusal(config: &ReportConfig) -> ScalarUDF {
    let phrases = Arc::new(RefusalPhrases::new(config));
    create_udf(
        "cai_refusal",
        vec![DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let [text] = args else {
                return exec_err!("cai_refusal takes one text");
            };
            let texts = utf8(text, rows_of(args))?;
            let texts = texts.as_string::<i32>();
            let mut out = BooleanBuilder::with_capacity(texts.len());
            for t in texts.iter() {
                out.append_value(t.is_some_and(|t| phrases.is_refusal(t)));
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// `cai_unchanged(response, revision)`: the revision is (nearly) the response, by
/// `[report] unchanged_similarity`.
pub fn unchanged_revision(config: &ReportConfig) -> ScalarUDF {
    let similarity = config.unchanged_similarity;
    create_udf(
        "cai_unchanged",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let [a, b] = args else {
                return exec_err!("cai_unchanged takes a response and a revision");
            };
            let rows = rows_of(args);
            let (a, b) = (utf8(a, rows)?, utf8(b, rows)?);
            let (a, b) = (a.as_string::<i32>(), b.as_string::<i32>());
            let mut out = BooleanBuilder::with_capacity(rows);
            for (a, b) in a.iter().zip(b.iter()) {
                out.append_value(match (a, b) {
                    (Some(a), Some(b)) => unchanged(a, b, similarity),
                    _ => false,
                });
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}
