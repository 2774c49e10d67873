//! Constitution file formats.
//!
//! - NeMo-Aligner's critique/revision JSON: `{"harmful0": {"prompt": ["\n\nCritiqueRequest: …
//!   \n\nCritique:"], "edit_request": "\n\nRevisionRequest: …\n\nRevision:"}, …}`; the
//!   wrappers are stripped.
//! - caiflow's own format, TOML or JSON: `[[principles]]` with `id`, `critique`, `revision`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Constitution, Principle};
use crate::error::{EngineError, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFile {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    principles: Vec<NativePrinciple>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativePrinciple {
    id: String,
    critique: String,
    revision: String,
}

pub fn load_constitution(path: &Path) -> Result<Constitution> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    parse_constitution(&text, &path.display().to_string())
        .map_err(|e| EngineError::bad_file(path, format!("not a valid constitution: {e}")))
}

/// Parse any supported format; `source` names it in messages.
pub fn parse_constitution(text: &str, source: &str) -> std::result::Result<Constitution, String> {
    let principles = if text.trim_start().starts_with('{') {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        if value.get("principles").is_some() {
            native(serde_json::from_value(value).map_err(|e| e.to_string())?)?
        } else {
            nemo(&value)?
        }
    } else {
        native(toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?)?
    };
    if principles.is_empty() {
        return Err("it holds no principles".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &principles {
        if !seen.insert(p.id.as_str()) {
            return Err(format!("principle id '{}' appears twice", p.id));
        }
        if p.critique_request.trim().is_empty() || p.revision_request.trim().is_empty() {
            return Err(format!(
                "principle '{}' has an empty critique or revision request",
                p.id
            ));
        }
    }
    Ok(Constitution {
        source: source.to_string(),
        principles,
    })
}

fn native(file: NativeFile) -> std::result::Result<Vec<Principle>, String> {
    Ok(file
        .principles
        .into_iter()
        .map(|p| Principle {
            id: p.id,
            critique_request: p.critique.trim().to_string(),
            revision_request: p.revision.trim().to_string(),
        })
        .collect())
}

/// `harmful0`, `harmful1`, … in numeric order (a plain sort would put `harmful10` second).
fn nemo(value: &Value) -> std::result::Result<Vec<Principle>, String> {
    let object = value.as_object().ok_or(
        "expected a JSON object of principles (NeMo-Aligner format) or {\"principles\": [...]}",
    )?;
    let keys = contiguous_keys(object.keys())?;
    keys.into_iter()
        .map(|key| {
            let entry = &object[key];
            let critique = match entry.get("prompt") {
                Some(Value::Array(items)) => items.first().and_then(Value::as_str),
                Some(Value::String(s)) => Some(s.as_str()),
                _ => None,
            }
            .ok_or_else(|| {
                format!("'{key}': missing \"prompt\" (a list holding the critique request)")
            })?;
            let revision = entry
                .get("edit_request")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    format!("'{key}': missing \"edit_request\" (the revision request)")
                })?;
            Ok(Principle {
                id: key.clone(),
                critique_request: strip_wrapper(critique, "CritiqueRequest:", "Critique:"),
                revision_request: strip_wrapper(revision, "RevisionRequest:", "Revision:"),
            })
        })
        .collect()
}

/// NeMo-Aligner numbers its principles `harmful0 … harmfulN-1`: one prefix, no gaps. Returns
/// the keys in numeric order (a plain sort would put `harmful10` second).
fn contiguous_keys<'a>(
    keys: impl Iterator<Item = &'a String>,
) -> std::result::Result<Vec<&'a String>, String> {
    let mut numbered = vec![];
    for key in keys {
        let digits_at = key.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, digits) = key.split_at(digits_at);
        let n: usize = digits.parse().map_err(|_| {
            format!("key '{key}' is not a name followed by a number (harmful0, harmful1, …)")
        })?;
        numbered.push((prefix, n, key));
    }
    numbered.sort_by_key(|(_, n, _)| *n);
    if let Some((prefix, _, _)) = numbered.first()
        && let Some((_, _, odd)) = numbered.iter().find(|(p, _, _)| p != prefix)
    {
        return Err(format!(
            "key '{odd}' does not share the prefix '{prefix}' of the other keys"
        ));
    }
    for (i, (prefix, n, _)) in numbered.iter().enumerate() {
        if *n != i {
            return Err(format!(
                "keys are not contiguous: '{prefix}{i}' is missing (keys must run {prefix}0 … {prefix}{})",
                numbered.len() - 1
            ));
        }
    }
    Ok(numbered.into_iter().map(|(_, _, k)| k).collect())
}

/// `"\n\nCritiqueRequest: X\n\nCritique:"` → `"X"`. Text without the wrapper is kept as is.
fn strip_wrapper(text: &str, head: &str, tail: &str) -> String {
    let mut s = text.trim();
    if let Some(rest) = s.strip_prefix(head) {
        s = rest.trim_start();
    }
    if let Some(rest) = s.strip_suffix(tail) {
        s = rest.trim_end();
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemo_wrappers_are_stripped_and_order_is_numeric() {
        let entry = |i: usize| {
            format!(
                r#""harmful{i}": {{"prompt": ["\n\nCritiqueRequest: ask {i}?\n\nCritique:"], "edit_request": "\n\nRevisionRequest: fix {i}\n\nRevision:"}}"#
            )
        };
        let order = [10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9];
        let text = format!(
            "{{{}}}",
            order
                .iter()
                .map(|i| entry(*i))
                .collect::<Vec<_>>()
                .join(",")
        );
        let c = parse_constitution(&text, "t").unwrap();
        assert_eq!(c.principles[2].id, "harmful2");
        assert_eq!(c.principles[2].critique_request, "ask 2?");
        assert_eq!(c.principles[10].revision_request, "fix 10");
        let gap = format!("{{{},{}}}", entry(0), entry(2));
        assert!(
            parse_constitution(&gap, "t")
                .unwrap_err()
                .contains("'harmful1' is missing")
        );
        let wrong_type = r#"{"harmful0": {"prompt": [5], "edit_request": "x"}}"#;
        assert!(
            parse_constitution(wrong_type, "t")
                .unwrap_err()
                .contains("prompt")
        );
    }

    #[test]
    fn malformed_files_name_the_problem() {
        let e = parse_constitution(r#"{"harmful0": {"prompt": ["x"]}}"#, "t").unwrap_err();
        assert!(
            parse_constitution("{}", "t")
                .unwrap_err()
                .contains("no principles")
        );
        assert!(e.contains("edit_request"), "{e}");
        assert!(
            parse_constitution("{not json", "t")
                .unwrap_err()
                .contains("invalid JSON")
        );
        assert!(
            parse_constitution("principles = []", "t")
                .unwrap_err()
                .contains("no principles")
        );
        let dup = "[[principles]]\nid='a'\ncritique='c'\nrevision='r'\n[[principles]]\nid='a'\ncritique='c'\nrevision='r'";
        assert!(parse_constitution(dup, "t").unwrap_err().contains("twice"));
    }
}
