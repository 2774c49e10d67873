//! Typed access to one input row and the cells a stage emits for it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type, UInt32Type, UInt64Type};
use datafusion::common::ScalarValue;

use caiflow_llm::Message;

/// One row of an input batch. Cheap: the batch is shared.
#[derive(Clone, Debug)]
pub struct InputRow {
    pub batch: Arc<RecordBatch>,
    pub index: usize,
}

impl InputRow {
    fn column(&self, name: &str) -> Option<&dyn Array> {
        let i = self.batch.schema().index_of(name).ok()?;
        Some(self.batch.column(i).as_ref())
    }

    /// A string cell (Utf8, LargeUtf8 or Utf8View); `None` when absent or null.
    pub fn str(&self, name: &str) -> Option<String> {
        let col = self.column(name)?;
        if col.is_null(self.index) {
            return None;
        }
        match col.data_type() {
            DataType::Utf8 => Some(col.as_string::<i32>().value(self.index).to_string()),
            DataType::LargeUtf8 => Some(col.as_string::<i64>().value(self.index).to_string()),
            DataType::Utf8View => Some(col.as_string_view().value(self.index).to_string()),
            DataType::Dictionary(_, _) => {
                let cast =
                    datafusion::arrow::compute::cast(&col.slice(self.index, 1), &DataType::Utf8)
                        .ok()?;
                Some(cast.as_string::<i32>().value(0).to_string())
            }
            _ => ScalarValue::try_from_array(col, self.index)
                .ok()
                .map(|v| v.to_string()),
        }
    }

    /// An unsigned integer cell of any integer type.
    pub fn u64(&self, name: &str) -> Option<u64> {
        let col = self.column(name)?;
        if col.is_null(self.index) {
            return None;
        }
        match col.data_type() {
            DataType::UInt32 => Some(col.as_primitive::<UInt32Type>().value(self.index) as u64),
            DataType::UInt64 => Some(col.as_primitive::<UInt64Type>().value(self.index)),
            DataType::Int64 => {
                u64::try_from(col.as_primitive::<Int64Type>().value(self.index)).ok()
            }
            DataType::Int32 => {
                u64::try_from(col.as_primitive::<Int32Type>().value(self.index)).ok()
            }
            _ => self.str(name)?.parse().ok(),
        }
    }

    /// A `List<Struct{role, content}>` cell as chat messages (the `conversation` column).
    pub fn messages(&self, name: &str) -> Option<Vec<Message>> {
        let col = self.column(name)?;
        if col.is_null(self.index) {
            return None;
        }
        let list = match col.data_type() {
            DataType::List(_) => col.as_list::<i32>().value(self.index),
            DataType::LargeList(_) => col.as_list::<i64>().value(self.index),
            _ => return None,
        };
        let items = list.as_struct_opt()?;
        let roles = items.column_by_name("role")?;
        let contents = items.column_by_name("content")?;
        let text = |a: &dyn Array, i: usize| -> String {
            let cast = datafusion::arrow::compute::cast(&a.slice(i, 1), &DataType::Utf8);
            cast.ok()
                .filter(|c| !c.is_null(0))
                .map(|c| c.as_string::<i32>().value(0).to_string())
                .unwrap_or_default()
        };
        Some(
            (0..items.len())
                .map(|i| {
                    Message::new(
                        &text(roles.as_ref(), i).to_ascii_lowercase(),
                        text(contents.as_ref(), i),
                    )
                })
                .collect(),
        )
    }
}
