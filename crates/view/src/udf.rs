//! The report's judgements as SQL functions of the viewer's session, so its filters
//! ("refusal", "unchanged revision", "chosen at temperature t") are predicates of the page's query — pushed into the
//! scan and paginated like any other — and say exactly what the report counts.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{Array, ArrayRef, BooleanBuilder, Float64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt64Type};
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};

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

/// `cai_candidate_temperature(candidates, sample_idx)`: the temperature of the candidate of
/// `candidates` whose `sample_idx` is the given one (null when none is), so "rows whose
/// chosen answer was sampled at t" is `cai_candidate_temperature(candidates, chosen_idx) = t`
/// — what the report's "chosen rate by temperature" counts.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CandidateTemperature {
    signature: Signature,
}

impl Default for CandidateTemperature {
    fn default() -> Self {
        CandidateTemperature {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for CandidateTemperature {
    fn name(&self) -> &str {
        "cai_candidate_temperature"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [candidates, wanted] = args.args.as_slice() else {
            return exec_err!("cai_candidate_temperature takes candidates and a sample_idx");
        };
        let candidates = candidates.to_array(rows)?;
        let Some(list) = candidates.as_list_opt::<i32>() else {
            return exec_err!("cai_candidate_temperature: candidates is not a list");
        };
        let Some(items) = list.values().as_struct_opt() else {
            return exec_err!("cai_candidate_temperature: candidates' items are not structs");
        };
        let field = |name: &str, to: &DataType| -> Result<ArrayRef> {
            match items.column_by_name(name) {
                Some(c) => Ok(cast(c, to)?),
                None => exec_err!("cai_candidate_temperature: candidates have no {name}"),
            }
        };
        let idx = field("sample_idx", &DataType::UInt64)?;
        let idx = idx.as_primitive::<UInt64Type>();
        let temperature = field("temperature", &DataType::Float64)?;
        let temperature = temperature.as_primitive::<Float64Type>();
        let wanted = cast(&wanted.to_array(rows)?, &DataType::UInt64)?;
        let wanted = wanted.as_primitive::<UInt64Type>();
        let offsets = list.value_offsets();
        let mut out = Float64Builder::with_capacity(rows);
        for i in 0..rows {
            let found = (list.is_valid(i) && wanted.is_valid(i))
                .then(|| {
                    let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                    (start..end).find(|k| idx.is_valid(*k) && idx.value(*k) == wanted.value(i))
                })
                .flatten()
                .filter(|k| temperature.is_valid(*k))
                .map(|k| temperature.value(k));
            out.append_option(found);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
