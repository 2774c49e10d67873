//! Typed access to one input row.
//!
//! Stages read cells by column name, but a column is downcast (or cast, for types that are
//! not plain strings or unsigned integers) once per batch, on first use, and kept beside
//! the batch: reading a cell is an index into an already typed array, and strings are
//! borrowed from the batch, never copied to be looked at.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, AsArray, Float64Array, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt64Type};
use datafusion::arrow::record_batch::RecordBatch;

use super::columns::{MessagesColumn, TextColumn};
use super::lineage::{Lineage, LineageColumns};
use caiflow_llm::Message;

/// One input batch and the typed views of its columns, made on first use.
#[derive(Debug)]
pub struct InputBatch {
    batch: RecordBatch,
    text: Vec<OnceLock<Option<TextColumn>>>,
    uint: Vec<OnceLock<Option<UInt64Array>>>,
    float: Vec<OnceLock<Option<Float64Array>>>,
    messages: Vec<OnceLock<Option<MessagesColumn>>>,
    lineage: Vec<OnceLock<Option<LineageColumns>>>,
}

impl InputBatch {
    pub fn new(batch: RecordBatch) -> Arc<Self> {
        let n = batch.num_columns();
        Arc::new(InputBatch {
            batch,
            text: slots(n),
            uint: slots(n),
            float: slots(n),
            messages: slots(n),
            lineage: slots(n),
        })
    }

    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Every row of the batch.
    pub fn rows(self: &Arc<Self>) -> impl Iterator<Item = InputRow> + use<> {
        let batch = self.clone();
        (0..self.batch.num_rows()).map(move |index| InputRow {
            batch: batch.clone(),
            index,
        })
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.batch.schema_ref().index_of(name).ok()
    }

    fn text(&self, name: &str) -> Option<&TextColumn> {
        let i = self.index_of(name)?;
        self.text[i]
            .get_or_init(|| TextColumn::of(self.batch.column(i).as_ref()))
            .as_ref()
    }

    fn uint(&self, name: &str) -> Option<&UInt64Array> {
        let i = self.index_of(name)?;
        self.uint[i]
            .get_or_init(|| {
                let c = self.batch.column(i);
                let c = match c.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                        cast(c, &DataType::Utf8).ok()?
                    }
                    _ => c.clone(),
                };
                // A safe cast: negative numbers and unparsable text become null.
                let c = cast(&c, &DataType::UInt64).ok()?;
                Some(c.as_primitive::<UInt64Type>().clone())
            })
            .as_ref()
    }

    fn float(&self, name: &str) -> Option<&Float64Array> {
        let i = self.index_of(name)?;
        self.float[i]
            .get_or_init(|| {
                let c = cast(self.batch.column(i), &DataType::Float64).ok()?;
                Some(c.as_primitive::<Float64Type>().clone())
            })
            .as_ref()
    }

    fn messages(&self, name: &str) -> Option<&MessagesColumn> {
        let i = self.index_of(name)?;
        self.messages[i]
            .get_or_init(|| MessagesColumn::of(self.batch.column(i)))
            .as_ref()
    }

    pub(super) fn lineage(&self, name: &str) -> Option<&LineageColumns> {
        let i = self.index_of(name)?;
        self.lineage[i]
            .get_or_init(|| LineageColumns::of(self.batch.column(i).as_ref()))
            .as_ref()
    }
}

fn slots<T>(n: usize) -> Vec<OnceLock<T>> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// One row of an input batch. Cheap: the batch is shared.
#[derive(Clone, Debug)]
pub struct InputRow {
    pub batch: Arc<InputBatch>,
    pub index: usize,
}

impl InputRow {
    /// A string cell (any string type; other types in their text form); `None` when the
    /// column is absent or the cell null.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.batch.text(name)?.get(self.index)
    }

    /// An unsigned integer cell of any integer type (or text holding one).
    pub fn u64(&self, name: &str) -> Option<u64> {
        let c = self.batch.uint(name)?;
        c.is_valid(self.index).then(|| c.value(self.index))
    }

    /// A floating-point cell of any numeric type (or text holding one).
    pub fn f64(&self, name: &str) -> Option<f64> {
        let c = self.batch.float(name)?;
        c.is_valid(self.index).then(|| c.value(self.index))
    }

    /// A lineage struct cell (`{stage}_lineage`).
    pub fn lineage(&self, name: &str) -> Option<Lineage> {
        self.batch.lineage(name)?.get(self.index)
    }

    /// A `List<Struct{role, content}>` cell as chat messages (the `conversation` column).
    pub fn messages(&self, name: &str) -> Option<Vec<Message>> {
        self.batch.messages(name)?.get(self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        ArrayRef, DictionaryArray, Int64Array, LargeStringArray, ListArray, StringArray,
        StructArray,
    };
    use datafusion::arrow::buffer::OffsetBuffer;
    use datafusion::arrow::datatypes::{Field, Fields, Int32Type};

    #[test]
    fn cells_of_every_type_read_as_text_numbers_and_messages() {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(42), Some(-1), None]));
        let sources: ArrayRef = Arc::new(
            vec![Some("hh"), None, Some("hh")]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec!["a", "b", "17"]));
        let fields = Fields::from(vec![
            Field::new("role", DataType::Utf8, true),
            Field::new("content", DataType::Utf8, true),
        ]);
        let items = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(StringArray::from(vec!["USER", "assistant", "user"])) as ArrayRef,
                Arc::new(StringArray::from(vec!["hi", "hello", "again"])),
            ],
            None,
        );
        let conversation: ArrayRef = Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Struct(fields), true)),
            OffsetBuffer::new(vec![0, 2, 2, 3].into()),
            Arc::new(items),
            Some(vec![true, false, true].into()),
        ));
        let batch = RecordBatch::try_from_iter(vec![
            ("id", ids),
            ("source", sources),
            ("large", large),
            ("conversation", conversation),
        ])
        .expect("batch");
        let rows: Vec<InputRow> = InputBatch::new(batch).rows().collect();
        assert_eq!(rows[0].str("id"), Some("42"));
        assert_eq!(rows[0].u64("id"), Some(42));
        assert_eq!(rows[1].u64("id"), None, "negative is not an unsigned value");
        assert_eq!(rows[2].str("id"), None);
        assert_eq!(rows[0].str("source"), Some("hh"));
        assert_eq!(rows[1].str("source"), None);
        assert_eq!(rows[2].str("large"), Some("17"));
        assert_eq!(rows[2].u64("large"), Some(17));
        assert_eq!(rows[0].u64("large"), None);
        assert_eq!(rows[2].f64("large"), Some(17.0));
        assert_eq!(rows[1].f64("id"), Some(-1.0));
        assert_eq!(rows[0].str("missing"), None);
        let turns = rows[0].messages("conversation").expect("two turns");
        assert_eq!(turns.len(), 2);
        assert_eq!(
            (turns[0].role.as_str(), turns[0].content.as_str()),
            ("user", "hi")
        );
        assert_eq!(rows[1].messages("conversation"), None);
        assert_eq!(rows[2].messages("conversation").map(|t| t.len()), Some(1));
    }
}
