//! What a stage emits: one [`Cell`] per added column, typed, and the builders that append
//! a batch's cells to Arrow arrays column by column (no `ScalarValue` per cell).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder, StructBuilder,
    UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{Result, internal_err};

use super::lineage::{Lineage, LineageBuilder, lineage_fields};

/// One output value.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Str(Option<String>),
    U32(Option<u32>),
    U64(Option<u64>),
    F64(Option<f64>),
    Bool(Option<bool>),
    /// A `List<UInt32>` value (never null).
    U32List(Vec<u32>),
    Lineage(Option<Box<Lineage>>),
    /// A `List<candidate>` value (never null), see [`candidate_fields`].
    Candidates(Vec<CandidateCell>),
    /// A `List<comparison>` value (never null), see [`comparison_fields`].
    Comparisons(Vec<ComparisonCell>),
}

/// One pairwise comparison a judge made (an item of the `comparisons` column): candidates
/// `a` and `b` (their `sample_idx`) under `principle`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ComparisonCell {
    pub principle: Option<String>,
    pub a: Option<u32>,
    pub b: Option<u32>,
    /// The soft label used: P(a preferred over b), clamped, averaged over the orders asked.
    pub p_ab: Option<f64>,
    /// P(a over b) when a was shown first (as (A)), and when b was.
    pub p_a_first: Option<f64>,
    pub p_b_first: Option<f64>,
    /// The hard label: a won by the judge's written answer (its letter, or the letter its
    /// reasoning ends with).
    pub hard_a: Option<bool>,
    /// `audit => true`: both orders prefer the same candidate.
    pub consistent: Option<bool>,
    /// The soft label (p_ab > 0.5) and the hard label agree.
    pub agree: Option<bool>,
}

/// The fields of a `comparisons` item.
pub fn comparison_fields() -> Fields {
    Fields::from(vec![
        Field::new("principle", DataType::Utf8, true),
        Field::new("a", DataType::UInt32, true),
        Field::new("b", DataType::UInt32, true),
        Field::new("p_ab", DataType::Float64, true),
        Field::new("p_a_first", DataType::Float64, true),
        Field::new("p_b_first", DataType::Float64, true),
        Field::new("hard_a", DataType::Boolean, true),
        Field::new("consistent", DataType::Boolean, true),
        Field::new("agree", DataType::Boolean, true),
    ])
}

/// The type of a `comparisons` column.
pub fn comparisons_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(comparison_fields()),
        true,
    )))
}

/// One candidate a judge saw (an item of the `candidates` column).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CandidateCell {
    pub sample_idx: Option<u32>,
    pub temperature: Option<f64>,
    pub response: Option<String>,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
}

/// The fields of a `candidates` item.
pub fn candidate_fields() -> Fields {
    Fields::from(vec![
        Field::new("sample_idx", DataType::UInt32, true),
        Field::new("temperature", DataType::Float64, true),
        Field::new("response", DataType::Utf8, true),
        Field::new("finish_reason", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ])
}

/// A `List<Struct>` column of [`CandidateCell`]s named `name`.
pub fn candidates_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(std::sync::Arc::new(Field::new(
            "item",
            DataType::Struct(candidate_fields()),
            true,
        ))),
        true,
    )
}

/// The cells of one output row, in `output_fields` order.
pub type OutRow = Vec<Cell>;

impl From<Option<Lineage>> for Cell {
    fn from(v: Option<Lineage>) -> Self {
        Cell::Lineage(v.map(Box::new))
    }
}

/// Appends the cells of one column, typed by the column's Arrow type.
#[derive(Debug)]
pub enum ColumnBuilder {
    Str(StringBuilder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    U32List(ListBuilder<UInt32Builder>),
    Lineage(Box<LineageBuilder>),
    Candidates(ListBuilder<StructBuilder>),
    Comparisons(ListBuilder<StructBuilder>),
}

impl ColumnBuilder {
    /// A builder for a column of `data_type`; the types stages emit are the only ones
    /// accepted (a stage declaring another is a bug, reported as an internal error).
    pub fn new(name: &str, data_type: &DataType) -> Result<Self> {
        Ok(match data_type {
            DataType::Utf8 => ColumnBuilder::Str(StringBuilder::new()),
            DataType::UInt32 => ColumnBuilder::U32(UInt32Builder::new()),
            DataType::UInt64 => ColumnBuilder::U64(UInt64Builder::new()),
            DataType::Float64 => ColumnBuilder::F64(Float64Builder::new()),
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::new()),
            DataType::List(item) if item.data_type() == &DataType::UInt32 => {
                ColumnBuilder::U32List(ListBuilder::new(UInt32Builder::new()))
            }
            DataType::Struct(fields) if fields == &lineage_fields() => {
                ColumnBuilder::Lineage(Box::default())
            }
            DataType::List(item) if item.data_type() == &DataType::Struct(candidate_fields()) => {
                ColumnBuilder::Candidates(
                    ListBuilder::new(StructBuilder::from_fields(candidate_fields(), 0))
                        .with_field(item.clone()),
                )
            }
            DataType::List(item) if item.data_type() == &DataType::Struct(comparison_fields()) => {
                ColumnBuilder::Comparisons(
                    ListBuilder::new(StructBuilder::from_fields(comparison_fields(), 0))
                        .with_field(item.clone()),
                )
            }
            other => return internal_err!("stage column '{name}' has unsupported type {other}"),
        })
    }

    pub fn append(&mut self, cell: Cell) -> Result<()> {
        match (self, cell) {
            (ColumnBuilder::Str(b), Cell::Str(v)) => b.append_option(v),
            (ColumnBuilder::U32(b), Cell::U32(v)) => b.append_option(v),
            (ColumnBuilder::U64(b), Cell::U64(v)) => b.append_option(v),
            (ColumnBuilder::F64(b), Cell::F64(v)) => b.append_option(v),
            (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_option(v),
            (ColumnBuilder::U32List(b), Cell::U32List(v)) => {
                b.values().append_slice(&v);
                b.append(true);
            }
            (ColumnBuilder::Lineage(b), Cell::Lineage(v)) => b.append(v.as_deref()),
            (ColumnBuilder::Candidates(b), Cell::Candidates(items)) => {
                append_candidates(b.values(), items)?;
                b.append(true);
            }
            (ColumnBuilder::Comparisons(b), Cell::Comparisons(items)) => {
                append_comparisons(b.values(), items)?;
                b.append(true);
            }
            (b, cell) => {
                return internal_err!("stage emitted {cell:?} for a {} column", b.kind());
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        match self {
            ColumnBuilder::Str(_) => "Utf8",
            ColumnBuilder::U32(_) => "UInt32",
            ColumnBuilder::U64(_) => "UInt64",
            ColumnBuilder::F64(_) => "Float64",
            ColumnBuilder::Bool(_) => "Boolean",
            ColumnBuilder::U32List(_) => "List<UInt32>",
            ColumnBuilder::Lineage(_) => "lineage",
            ColumnBuilder::Candidates(_) => "candidates",
            ColumnBuilder::Comparisons(_) => "comparisons",
        }
    }

    pub fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Str(mut b) => Arc::new(b.finish()),
            ColumnBuilder::U32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::U64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::F64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::U32List(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Lineage(b) => b.finish(),
            ColumnBuilder::Candidates(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Comparisons(mut b) => Arc::new(b.finish()),
        }
    }
}

fn field<T: datafusion::arrow::array::ArrayBuilder>(
    b: &mut StructBuilder,
    i: usize,
) -> Result<&mut T> {
    match b.field_builder::<T>(i) {
        Some(f) => Ok(f),
        None => internal_err!("struct column: field {i} has another builder type"),
    }
}

fn append_comparisons(b: &mut StructBuilder, items: Vec<ComparisonCell>) -> Result<()> {
    for c in items {
        field::<StringBuilder>(b, 0)?.append_option(c.principle);
        field::<UInt32Builder>(b, 1)?.append_option(c.a);
        field::<UInt32Builder>(b, 2)?.append_option(c.b);
        field::<Float64Builder>(b, 3)?.append_option(c.p_ab);
        field::<Float64Builder>(b, 4)?.append_option(c.p_a_first);
        field::<Float64Builder>(b, 5)?.append_option(c.p_b_first);
        field::<BooleanBuilder>(b, 6)?.append_option(c.hard_a);
        field::<BooleanBuilder>(b, 7)?.append_option(c.consistent);
        field::<BooleanBuilder>(b, 8)?.append_option(c.agree);
        b.append(true);
    }
    Ok(())
}

fn append_candidates(b: &mut StructBuilder, items: Vec<CandidateCell>) -> Result<()> {
    for c in items {
        field::<UInt32Builder>(b, 0)?.append_option(c.sample_idx);
        field::<Float64Builder>(b, 1)?.append_option(c.temperature);
        field::<StringBuilder>(b, 2)?.append_option(c.response);
        field::<StringBuilder>(b, 3)?.append_option(c.finish_reason);
        field::<StringBuilder>(b, 4)?.append_option(c.error);
        b.append(true);
    }
    Ok(())
}
