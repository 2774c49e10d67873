//! Few-shot examples shown before the row's own conversation, in NeMo-Aligner's layout:
//! `{"samples": [[six messages], …]}`, each message `{"role": "User"|"Assistant", "content"}`,
//! in the order prompt, response, critique request, critique, revision request, revision.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use caiflow_llm::Message;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FewShotSample {
    pub prompt: String,
    pub response: String,
    pub critique_request: String,
    pub critique: String,
    pub revision_request: String,
    pub revision: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FewShot {
    pub source: String,
    pub samples: Vec<FewShotSample>,
}

#[derive(Deserialize)]
struct File {
    samples: Vec<Vec<FileMessage>>,
}

#[derive(Deserialize)]
struct FileMessage {
    role: String,
    content: String,
}

/// The project's own few-shot examples (`data/few_shot.json`).
pub const DEFAULT_FEW_SHOT: &str = include_str!("../../../../data/few_shot.json");

impl FewShot {
    /// `default` for the embedded examples, `none` for no examples, otherwise a path.
    pub fn resolve(spec: &str) -> Result<FewShot> {
        match spec.trim() {
            "" | "default" => {
                Ok(Self::parse(DEFAULT_FEW_SHOT, "default")
                    .expect("embedded few-shot file is valid"))
            }
            "none" => Ok(FewShot {
                source: "none".into(),
                samples: vec![],
            }),
            path => {
                let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
                Self::parse(&text, path).map_err(|e| {
                    EngineError::bad_file(path, format!("not a valid few-shot file: {e}"))
                })
            }
        }
    }

    pub fn parse(text: &str, source: &str) -> std::result::Result<FewShot, String> {
        let file: File = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let samples = file
            .samples
            .into_iter()
            .enumerate()
            .map(|(i, msgs)| {
                if msgs.len() != 6 {
                    return Err(format!(
                        "sample {i} has {} messages, expected 6",
                        msgs.len()
                    ));
                }
                for (j, m) in msgs.iter().enumerate() {
                    let want = if j % 2 == 0 { "user" } else { "assistant" };
                    if m.role.to_ascii_lowercase() != want {
                        return Err(format!(
                            "sample {i} message {j} has role '{}', expected '{want}'",
                            m.role
                        ));
                    }
                }
                let mut it = msgs.into_iter().map(|m| m.content);
                let mut next = || it.next().unwrap_or_default();
                Ok(FewShotSample {
                    prompt: next(),
                    response: next(),
                    critique_request: next(),
                    critique: next(),
                    revision_request: next(),
                    revision: next(),
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(FewShot {
            source: source.to_string(),
            samples,
        })
    }

    /// The examples as chat turns, to put before a row's own turns.
    pub fn messages(&self) -> Vec<Message> {
        self.samples
            .iter()
            .flat_map(|s| {
                [
                    Message::user(&s.prompt),
                    Message::assistant(&s.response),
                    Message::user(&s.critique_request),
                    Message::assistant(&s.critique),
                    Message::user(&s.revision_request),
                    Message::assistant(&s.revision),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_examples_load() {
        let f = FewShot::resolve("default").unwrap();
        assert!(!f.samples.is_empty());
        assert_eq!(f.messages().len(), 6 * f.samples.len());
        assert!(FewShot::resolve("none").unwrap().samples.is_empty());
    }

    #[test]
    fn wrong_shape_is_reported() {
        let e =
            FewShot::parse(r#"{"samples": [[{"role":"User","content":"x"}]]}"#, "t").unwrap_err();
        assert!(e.contains("expected 6"), "{e}");
    }
}
