//! Deterministic scalar functions for splitting and sampling.
//!
//! - `split_of(key, seed, 'train=0.9,test=0.1')`: the split a row falls in, from a hash of
//!   (seed, key). Ratios are normalized by their sum, so `0.7/0.2/0.1` (which does not sum
//!   to exactly 1.0 in floating point) works, and so does `8,1,1`.
//! - `unit_hash(key, seed)`: a uniform number in [0, 1) from (seed, key), for sampling.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::common::{exec_err, plan_datafusion_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::keys::unit_interval;

/// Parse `name=ratio,…` into names and cumulative upper bounds in (0, 1].
pub fn parse_splits(spec: &str) -> std::result::Result<Vec<(String, f64)>, String> {
    let mut parts = vec![];
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, ratio) = item
            .split_once('=')
            .ok_or_else(|| format!("split '{item}' is not name=ratio"))?;
        let ratio: f64 = ratio
            .trim()
            .parse()
            .map_err(|_| format!("split '{item}': ratio is not a number"))?;
        if !(ratio.is_finite() && ratio >= 0.0) {
            return Err(format!("split '{item}': ratio must be >= 0"));
        }
        let name = name.trim();
        if !crate::export::is_split_name(name) {
            return Err(format!(
                "split name '{name}' is not usable as a file name: use letters, digits, '-', '_' and '.' (not first), at most 64"
            ));
        }
        parts.push((name.to_string(), ratio));
    }
    let total: f64 = parts.iter().map(|p| p.1).sum();
    if parts.is_empty() || total <= 0.0 {
        return Err(format!("splits '{spec}' hold no positive ratio"));
    }
    let mut acc = 0.0;
    let n = parts.len();
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, (name, r))| {
            acc += r / total;
            // The last bound is exactly 1.0, whatever rounding did.
            (name, if i + 1 == n { 1.0 } else { acc })
        })
        .collect())
}

pub fn split_for<'a>(bounds: &'a [(String, f64)], seed: i64, key: &str) -> &'a str {
    let x = unit_interval(&[b"split", &seed.to_le_bytes(), key.as_bytes()]);
    bounds
        .iter()
        .find(|(_, upper)| x < *upper)
        .or(bounds.last())
        .map(|(n, _)| n.as_str())
        .unwrap_or("")
}

pub fn unit_hash(seed: i64, key: &str) -> f64 {
    unit_interval(&[b"sample", &seed.to_le_bytes(), key.as_bytes()])
}

fn arrays(args: &ScalarFunctionArgs, function: &str, arity: usize) -> Result<Vec<ArrayRef>> {
    if args.args.len() != arity {
        return plan_err!("{function} takes {arity} arguments");
    }
    ColumnarValue::values_to_arrays(&args.args)
}

fn strings(a: &ArrayRef) -> Result<ArrayRef> {
    Ok(datafusion::arrow::compute::cast(a, &DataType::Utf8)?)
}

fn int_scalar(a: &ArrayRef, function: &str) -> Result<i64> {
    let cast = datafusion::arrow::compute::cast(a, &DataType::Int64)?;
    let ints = cast.as_primitive::<Int64Type>();
    if ints.is_empty() || ints.is_null(0) {
        return exec_err!("{function}: seed must be a non-null integer");
    }
    Ok(ints.value(0))
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SplitOf {
    signature: Signature,
}

impl Default for SplitOf {
    fn default() -> Self {
        SplitOf {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SplitOf {
    fn name(&self) -> &str {
        "split_of"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let spec = match &args.args[2] {
            ColumnarValue::Scalar(s) => s.to_string(),
            _ => {
                return plan_err!("split_of: the splits must be a literal string");
            }
        };
        let bounds = parse_splits(spec.trim_matches('"'))
            .map_err(|e| plan_datafusion_err!("split_of: {e}"))?;
        let a = arrays(&args, "split_of", 3)?;
        let keys = strings(&a[0])?;
        let keys = keys.as_string::<i32>();
        let seed = int_scalar(&a[1], "split_of")?;
        let mut out = StringBuilder::new();
        for i in 0..keys.len() {
            if keys.is_null(i) {
                out.append_null();
            } else {
                out.append_value(split_for(&bounds, seed, keys.value(i)));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UnitHash {
    signature: Signature,
}

impl Default for UnitHash {
    fn default() -> Self {
        UnitHash {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for UnitHash {
    fn name(&self) -> &str {
        "unit_hash"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = arrays(&args, "unit_hash", 2)?;
        let keys = strings(&a[0])?;
        let keys = keys.as_string::<i32>();
        let seed = int_scalar(&a[1], "unit_hash")?;
        let mut out = Float64Builder::with_capacity(keys.len());
        for i in 0..keys.len() {
            if keys.is_null(i) {
                out.append_null();
            } else {
                out.append_value(unit_hash(seed, keys.value(i)));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

pub fn split_of_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(SplitOf::default())
}

pub fn unit_hash_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(UnitHash::default())
}

/// A literal for building expressions in code.
pub fn lit_i64(v: i64) -> datafusion::logical_expr::Expr {
    datafusion::logical_expr::lit(ScalarValue::Int64(Some(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_that_do_not_sum_to_one_work() {
        let b = parse_splits("train=0.7,val=0.2,test=0.1").unwrap();
        assert_eq!(b.last().unwrap().1, 1.0);
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..10_000 {
            *counts
                .entry(split_for(&b, 1, &i.to_string()).to_string())
                .or_insert(0) += 1;
        }
        assert!((6700..7300).contains(&counts["train"]), "{counts:?}");
        assert!((1700..2300).contains(&counts["val"]), "{counts:?}");
        assert!((800..1200).contains(&counts["test"]), "{counts:?}");
        assert_eq!(parse_splits("a=8,b=2").unwrap()[0].1, 0.8);
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(parse_splits("train").is_err());
        for bad in ["/abs/x=1", "../x=1", ".hidden=1", "a b=1", "x/y=1"] {
            assert!(parse_splits(bad).is_err(), "{bad}");
        }
        assert!(parse_splits("train=0").is_err());
        assert!(parse_splits("train=-1,test=2").is_err());
    }

    #[test]
    fn same_key_same_split() {
        let b = parse_splits("train=0.5,test=0.5").unwrap();
        assert_eq!(split_for(&b, 3, "k"), split_for(&b, 3, "k"));
    }
}
