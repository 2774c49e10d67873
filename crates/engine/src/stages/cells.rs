//! What a stage emits: one [`Cell`] per added column, typed, and the builders that append
//! a batch's cells to Arrow arrays column by column (no `ScalarValue` per cell).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, ListBuilder, StringBuilder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, internal_err};

use super::lineage::{Lineage, LineageBuilder, lineage_fields};

/// One output value.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Str(Option<String>),
    U32(Option<u32>),
    U64(Option<u64>),
    F64(Option<f64>),
    /// A `List<UInt32>` value (never null).
    U32List(Vec<u32>),
    Lineage(Option<Box<Lineage>>),
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
    U32List(ListBuilder<UInt32Builder>),
    Lineage(Box<LineageBuilder>),
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
            DataType::List(item) if item.data_type() == &DataType::UInt32 => {
                ColumnBuilder::U32List(ListBuilder::new(UInt32Builder::new()))
            }
            DataType::Struct(fields) if fields == &lineage_fields() => {
                ColumnBuilder::Lineage(Box::default())
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
            (ColumnBuilder::U32List(b), Cell::U32List(v)) => {
                b.values().append_slice(&v);
                b.append(true);
            }
            (ColumnBuilder::Lineage(b), Cell::Lineage(v)) => b.append(v.as_deref()),
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
            ColumnBuilder::U32List(_) => "List<UInt32>",
            ColumnBuilder::Lineage(_) => "lineage",
        }
    }

    pub fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Str(mut b) => Arc::new(b.finish()),
            ColumnBuilder::U32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::U64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::F64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::U32List(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Lineage(b) => b.finish(),
        }
    }
}
