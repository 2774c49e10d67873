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

/// Whether part `i` is an added run right after a removed one with no whitespace between
/// them ("You" removed, "The" added): shown with a space, so they do not read "YouThe".
pub fn gap_before(parts: &[Part], i: usize) -> bool {
    let previous = i.checked_sub(1).and_then(|p| parts.get(p));
    match (previous, parts.get(i)) {
        (Some(Part::Removed(a)), Some(Part::Added(b))) => {
            !a.ends_with(char::is_whitespace) && !b.starts_with(char::is_whitespace)
        }
        _ => false,
    }
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

    #[test]
    fn a_replaced_word_is_shown_apart_from_its_replacement() {
        let parts = words("You can do it", "The plan can do it");
        let gaps: Vec<usize> = (0..parts.len())
            .filter(|i| gap_before(&parts, *i))
            .collect();
        assert_eq!(gaps.len(), 1, "{parts:?}");
        assert!(
            matches!(&parts[gaps[0] - 1], Part::Removed(s) if s == "You"),
            "{parts:?}"
        );
        assert!(!gap_before(&parts, 0));
    }
}
