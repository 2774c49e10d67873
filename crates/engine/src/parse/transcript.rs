//! Anthropic HH transcripts: `\n\nHuman: …\n\nAssistant: …` turns.

use caiflow_llm::Message;

const HUMAN: &str = "Human:";
const ASSISTANT: &str = "Assistant:";

/// Split a transcript into turns. A marker counts at the very start of the text or after a
/// blank line, so "Human:" inside a sentence is left alone.
pub fn parse_turns(transcript: &str) -> Vec<Message> {
    let mut marks: Vec<(usize, &str, usize)> = vec![]; // (marker start, role, content start)
    for (marker, role) in [(HUMAN, "user"), (ASSISTANT, "assistant")] {
        let mut from = 0;
        while let Some(pos) = transcript[from..].find(marker) {
            let at = from + pos;
            let prefix = &transcript[..at];
            if prefix.trim().is_empty() || prefix.ends_with("\n\n") || prefix.ends_with("\n") {
                marks.push((at, role, at + marker.len()));
            }
            from = at + marker.len();
        }
    }
    marks.sort_by_key(|m| m.0);
    marks
        .iter()
        .enumerate()
        .map(|(i, &(_, role, start))| {
            let end = marks.get(i + 1).map(|m| m.0).unwrap_or(transcript.len());
            Message::new(role, transcript[start..end].trim())
        })
        .collect()
}

/// The prompt as NeMo-Aligner takes it: the text between the first `Human:` and the first
/// `Assistant:` after it, stripped.
pub fn first_human_turn(transcript: &str) -> Result<String, &'static str> {
    let turns = parse_turns(transcript);
    let first = turns
        .iter()
        .find(|t| t.role == "user")
        .ok_or("no 'Human:' turn")?;
    if first.content.is_empty() {
        return Err("the first 'Human:' turn is empty");
    }
    Ok(first.content.clone())
}

/// All turns up to and including the last human turn: the conversation the model answers.
pub fn conversation_until_last_human(transcript: &str) -> Result<Vec<Message>, &'static str> {
    let mut turns = parse_turns(transcript);
    let last_user = turns
        .iter()
        .rposition(|t| t.role == "user")
        .ok_or("no 'Human:' turn")?;
    turns.truncate(last_user + 1);
    if turns
        .iter()
        .any(|t| t.role == "user" && t.content.is_empty())
    {
        return Err("a 'Human:' turn is empty");
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any transcript text (markers anywhere, multibyte text around them) is read or
        /// refused, never a panic.
        #[test]
        fn any_transcript_reads_or_fails_cleanly(
            parts in proptest::collection::vec(("\\PC{0,20}", proptest::bool::ANY), 0..8)
        ) {
            let text: String = parts
                .iter()
                .map(|(t, human)| format!("\n\n{}: {t}", if *human { "Human" } else { "Assistant" }))
                .collect();
            let _ = parse_turns(&text);
            let _ = first_human_turn(&text);
            let _ = conversation_until_last_human(&text);
        }
    }

    #[test]
    fn first_turn_between_markers() {
        let t =
            "\n\nHuman: How do I do X?\n\nAssistant: Like so.\n\nHuman: And Y?\n\nAssistant: No.";
        assert_eq!(first_human_turn(t).unwrap(), "How do I do X?");
        let conv = conversation_until_last_human(t).unwrap();
        assert_eq!(conv.len(), 3);
        assert_eq!(conv[2], Message::user("And Y?"));
    }

    #[test]
    fn missing_or_empty_turns_are_errors() {
        assert!(first_human_turn("just text").is_err());
        assert!(first_human_turn("\n\nHuman:   \n\nAssistant: hi").is_err());
        assert_eq!(first_human_turn("Human: hi there").unwrap(), "hi there");
    }

    #[test]
    fn inline_marker_words_are_not_turns() {
        let t = "\n\nHuman: What does Assistant: mean?\n\nAssistant: A label.";
        assert_eq!(first_human_turn(t).unwrap(), "What does Assistant: mean?");
    }
}
