//! Rendering chat turns into one string, for servers and files that take plain text
//! (NeMo's text-generation server, NeMo reward-model JSONL).

use serde::{Deserialize, Serialize};

use crate::Message;

/// A turn-marker template. The default is NeMo's `<extra_id_*>` template:
/// `<extra_id_0>System\n{system}\n<extra_id_1>User\n{user}\n<extra_id_1>Assistant\n{reply}\n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatTemplate {
    pub system_prefix: String,
    pub user_prefix: String,
    pub assistant_prefix: String,
    /// Written after every complete turn.
    pub turn_suffix: String,
    /// What the model emits to end its turn; the text before it is the answer.
    pub eos: String,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate {
            system_prefix: "<extra_id_0>System\n".into(),
            user_prefix: "<extra_id_1>User\n".into(),
            assistant_prefix: "<extra_id_1>Assistant\n".into(),
            turn_suffix: "\n".into(),
            eos: "<extra_id_1>".into(),
        }
    }
}

impl ChatTemplate {
    /// Render turns; when `open_assistant` is set, end with an assistant marker for the model
    /// to continue. A missing system turn is rendered empty, as NeMo does.
    pub fn render(&self, messages: &[Message], open_assistant: bool) -> String {
        let mut out = String::new();
        let mut rest = messages;
        out.push_str(&self.system_prefix);
        if let Some(first) = messages.first().filter(|m| m.role == "system") {
            out.push_str(&first.content);
            rest = &messages[1..];
        }
        out.push_str(&self.turn_suffix);
        for m in rest {
            out.push_str(if m.role == "assistant" {
                &self.assistant_prefix
            } else {
                &self.user_prefix
            });
            out.push_str(&m.content);
            out.push_str(&self.turn_suffix);
        }
        if open_assistant {
            out.push_str(&self.assistant_prefix);
        }
        out
    }

    /// The model's answer inside a server reply that echoes prompt + completion: the text
    /// after the last assistant marker, cut at the last end-of-turn marker after it.
    pub fn extract_answer<'a>(&self, full: &'a str) -> &'a str {
        let start = full
            .rfind(&self.assistant_prefix)
            .map(|i| i + self.assistant_prefix.len())
            .unwrap_or(0);
        let tail = &full[start..];
        let end = if self.eos.is_empty() {
            None
        } else {
            tail.rfind(&self.eos)
        };
        tail[..end.unwrap_or(tail.len())].trim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nemo_template() {
        let t = ChatTemplate::default();
        let s = t.render(&[Message::user("hi"), Message::assistant("yo")], false);
        assert_eq!(
            s,
            "<extra_id_0>System\n\n<extra_id_1>User\nhi\n<extra_id_1>Assistant\nyo\n"
        );
        let open = t.render(&[Message::user("hi")], true);
        assert!(open.ends_with("<extra_id_1>User\nhi\n<extra_id_1>Assistant\n"));
    }

    #[test]
    fn extracts_answer_after_last_marker_before_last_eos() {
        let t = ChatTemplate::default();
        let prompt = t.render(&[Message::user("q")], true);
        assert_eq!(
            t.extract_answer(&format!("{prompt}The answer.\n<extra_id_1>")),
            "The answer."
        );
        assert_eq!(
            t.extract_answer(&format!("{prompt}No eos here")),
            "No eos here"
        );
    }
}
