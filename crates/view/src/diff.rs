//! The word diff of a response and its revision: what the revision removed and added.

use similar::{ChangeTag, TextDiff};

/// One run of words: kept, removed from the response, or added by the revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Same(String),
    Removed(String),
    Added(String),
}

/// The word-level diff of `before` and `after` (whitespace kept with its words).
pub fn words(before: &str, after: &str) -> Vec<Part> {
    let diff = TextDiff::from_words(before, after);
    let mut parts: Vec<Part> = vec![];
    for change in diff.iter_all_changes() {
        let text = change.value();
        match (change.tag(), parts.last_mut()) {
            (ChangeTag::Equal, Some(Part::Same(s)))
            | (ChangeTag::Delete, Some(Part::Removed(s)))
            | (ChangeTag::Insert, Some(Part::Added(s))) => s.push_str(text),
            (ChangeTag::Equal, _) => parts.push(Part::Same(text.to_string())),
            (ChangeTag::Delete, _) => parts.push(Part::Removed(text.to_string())),
            (ChangeTag::Insert, _) => parts.push(Part::Added(text.to_string())),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_and_added_words() {
        let parts = words("I can help you hack it", "I can help you secure it");
        assert!(parts.contains(&Part::Removed("hack".into())), "{parts:?}");
        assert!(parts.contains(&Part::Added("secure".into())), "{parts:?}");
        let rebuilt: String = parts
            .iter()
            .filter_map(|p| match p {
                Part::Same(s) | Part::Added(s) => Some(s.as_str()),
                Part::Removed(_) => None,
            })
            .collect();
        assert_eq!(rebuilt, "I can help you secure it");
    }
}
