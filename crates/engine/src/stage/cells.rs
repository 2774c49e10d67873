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
        }
    }
}

fn append_candidates(b: &mut StructBuilder, items: Vec<CandidateCell>) -> Result<()> {
    fn field<T: datafusion::arrow::array::ArrayBuilder>(
        b: &mut StructBuilder,
        i: usize,
    ) -> Result<&mut T> {
        match b.field_builder::<T>(i) {
            Some(f) => Ok(f),
            None => internal_err!("candidates: field {i} has another builder type"),
        }
    }
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
