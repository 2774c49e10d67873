//! Grouping a row stream into the units of a grouping stage (a prompt's candidates, for a
//! judge), with bounded memory.

use datafusion::error::Result;
use futures::StreamExt;

use super::contract::{Grouping, MAX_OPEN_GROUPS};
use super::row::InputRow;

/// Turn a row stream into a stream of groups (see [`Grouping`]). Memory holds only groups
/// that are still open, at most [`MAX_OPEN_GROUPS`].
pub(super) fn group_rows(
    rows: impl futures::Stream<Item = Result<InputRow>> + Send + Unpin + 'static,
    grouping: Grouping,
) -> impl futures::Stream<Item = Result<Vec<InputRow>>> + Send {
    struct State<S> {
        rows: S,
        open: std::collections::HashMap<String, Vec<InputRow>>,
        /// Keys in the order their groups opened (some already closed).
        order: std::collections::VecDeque<String>,
        ready: std::collections::VecDeque<Vec<InputRow>>,
        done: bool,
        grouping: Grouping,
    }
    let state = State {
        rows,
        open: Default::default(),
        order: Default::default(),
        ready: Default::default(),
        done: false,
        grouping,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(group) = st.ready.pop_front() {
                return Some((Ok(group), st));
            }
            if st.done {
                if st.open.is_empty() {
                    return None;
                }
                let mut keys: Vec<String> = st.open.keys().cloned().collect();
                keys.sort();
                for k in keys {
                    if let Some(g) = st.open.remove(&k) {
                        st.ready.push_back(g);
                    }
                }
                continue;
            }
            match st.rows.next().await {
                None => st.done = true,
                Some(Err(e)) => return Some((Err(e), st)),
                Some(Ok(row)) => {
                    let Some(key) = row.str(st.grouping.key).map(str::to_string) else {
                        st.ready.push_back(vec![row]);
                        continue;
                    };
                    let expected = st.grouping.size_column.and_then(|c| row.u64(c));
                    if !st.open.contains_key(&key) {
                        st.order.push_back(key.clone());
                    }
                    let group = st.open.entry(key.clone()).or_default();
                    group.push(row);
                    if expected.is_some_and(|n| group.len() as u64 >= n)
                        && let Some(g) = st.open.remove(&key)
                    {
                        st.ready.push_back(g);
                    }
                    while st.open.len() > MAX_OPEN_GROUPS {
                        let Some(oldest) = st.order.pop_front() else {
                            break;
                        };
                        if let Some(g) = st.open.remove(&oldest) {
                            st.ready.push_back(g);
                        }
                    }
                    if st.order.len() > 2 * MAX_OPEN_GROUPS {
                        let open = &st.open;
                        st.order.retain(|k| open.contains_key(k));
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::row::InputBatch;
    use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// Groups that never complete (a filter dropped some of their rows) do not pile up:
    /// the oldest is processed as it is once more than `MAX_OPEN_GROUPS` are open.
    #[tokio::test]
    async fn incomplete_groups_are_bounded() {
        let groups = 3 * MAX_OPEN_GROUPS;
        let schema = Arc::new(Schema::new(vec![
            Field::new("prompt_id", DataType::Utf8, false),
            Field::new("num_samples", DataType::UInt64, false),
        ]));
        // One row of each group arrives; each says the group has two.
        let ids: Vec<String> = (0..groups).map(|i| format!("p{i}")).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(UInt64Array::from(vec![2u64; groups])),
            ],
        )
        .expect("batch");
        let rows: Vec<Result<InputRow>> = InputBatch::new(batch).rows().map(Ok).collect();
        let grouping = Grouping {
            key: "prompt_id",
            size_column: Some("num_samples"),
        };
        // The input never ends: only bounded eviction can release groups.
        let endless = futures::stream::iter(rows).chain(futures::stream::pending());
        let out = group_rows(Box::pin(endless), grouping);
        let released: Vec<_> = out.take(groups - MAX_OPEN_GROUPS).collect().await;
        assert_eq!(released.len(), groups - MAX_OPEN_GROUPS);
        assert_eq!(
            released[0].as_ref().expect("group")[0].str("prompt_id"),
            Some("p0"),
            "the oldest first"
        );
    }
}
