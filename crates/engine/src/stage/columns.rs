//! Typed views of input columns: a string column of any string type ([`TextColumn`]) and a
//! conversation column, `List<Struct{role, content}>` ([`MessagesColumn`]), each decoded
//! once per batch.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, LargeStringArray, StringArray, StringViewArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;

use caiflow_llm::Message;

/// A string column of any string type.
#[derive(Debug)]
pub enum TextColumn {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
}

impl TextColumn {
    /// Borrow a column as strings: a downcast for string types, a cast for the rest
    /// (numbers, dictionaries); `None` for a type that has no text form.
    pub fn of(array: &dyn Array) -> Option<TextColumn> {
        Some(match array.data_type() {
            DataType::Utf8 => TextColumn::Utf8(array.as_string::<i32>().clone()),
            DataType::LargeUtf8 => TextColumn::Large(array.as_string::<i64>().clone()),
            DataType::Utf8View => TextColumn::View(array.as_string_view().clone()),
            _ => {
                let cast = cast(array, &DataType::Utf8).ok()?;
                TextColumn::Utf8(cast.as_string::<i32>().clone())
            }
        })
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        match self {
            TextColumn::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            TextColumn::Large(a) => a.is_valid(i).then(|| a.value(i)),
            TextColumn::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// A `List<Struct{role, content}>` column, its items decoded once.
#[derive(Debug)]
pub struct MessagesColumn {
    list: ArrayRef,
    offsets: OffsetBuffer<i64>,
    roles: TextColumn,
    contents: TextColumn,
}

impl MessagesColumn {
    pub fn of(array: &ArrayRef) -> Option<MessagesColumn> {
        let (offsets, values) = match array.data_type() {
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                let o: Vec<i64> = l.offsets().iter().map(|&x| x as i64).collect();
                (OffsetBuffer::new(o.into()), l.values().clone())
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                (l.offsets().clone(), l.values().clone())
            }
            _ => return None,
        };
        let items = values.as_struct_opt()?;
        Some(MessagesColumn {
            list: array.clone(),
            offsets,
            roles: TextColumn::of(items.column_by_name("role")?.as_ref())?,
            contents: TextColumn::of(items.column_by_name("content")?.as_ref())?,
        })
    }

    pub fn get(&self, i: usize) -> Option<Vec<Message>> {
        if self.list.is_null(i) {
            return None;
        }
        let (start, end) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        Some(
            (start..end)
                .map(|j| {
                    Message::new(
                        &self.roles.get(j).unwrap_or_default().to_ascii_lowercase(),
                        self.contents.get(j).unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }
}
