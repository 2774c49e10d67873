//! What a judge reads from files: its comparison principles and its worked examples.
//!
//! **Principles** (`principles => …`, principle mode): `default` (8, written for caiflow),
//! `rl16` (16 in the manner of the CAI paper's RL principles), or a path: a text file with
//! one principle per line (`#` comments), or a JSON file in any of the layouts Anthropic's
//! and NeMo-Aligner's CAI files use — an array of strings, an array or object of objects
//! whose `principle`, `prompt` or `text` is a string or a list of strings (the first one is
//! taken), or an object of strings.
//!
//! **Few-shot** (`few_shot => …`, both modes): `none` (the default), `default` (two worked
//! comparisons written for caiflow) or a JSON file `{"examples": [{"prompt", "responses":
//! [..], "chosen", "rejected", "principle", "reasoning", "explanation"}]}`; `chosen` and
//! `rejected` are 1-based positions in `responses`. Principle mode uses examples with two
//! responses; `reasoning` is what a CoT judge shows before its answer.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

pub const DEFAULT_JUDGE_CONSTITUTION: &str =
    include_str!("../../../../../data/judge_constitution.txt");
pub const DEFAULT_JUDGE_PRINCIPLES: &str = include_str!("../../../../../data/judge_principles.txt");
pub const RL16_PRINCIPLES: &str = include_str!("../../../../../data/judge_principles_rl16.txt");
pub const DEFAULT_JUDGE_FEW_SHOT: &str = include_str!("../../../../../data/judge_few_shot.json");

/// The largest principles or few-shot file read (a judge's context, not a dataset).
const MAX_FILE_BYTES: u64 = 4 << 20;

fn read_bounded(path: &str, what: &str) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {what} {path}: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{what} {path} is {size} bytes: more than the {} MiB a judge reads",
            MAX_FILE_BYTES >> 20
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {path}: {e}"))
}

/// The judge's constitution text: `default` or a path.
pub fn constitution_text(spec: &str) -> Result<String, String> {
    match spec {
        "" | "default" => Ok(DEFAULT_JUDGE_CONSTITUTION.to_string()),
        path => read_bounded(path, "constitution"),
    }
}

/// One principle per non-comment line.
pub fn parse_principles(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The principle a JSON item stands for, if it holds one.
fn principle_of(item: &Value) -> Option<String> {
    match item {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => ["principle", "prompt", "text"]
            .iter()
            .find_map(|k| o.get(*k))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
                _ => None,
            }),
        _ => None,
    }
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
}

/// Principles from JSON in the layouts the module docs list.
pub fn parse_principles_json(text: &str) -> Result<Vec<String>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let items: Vec<&Value> = match &value {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => return Err("expected a JSON array or object of principles".into()),
    };
    Ok(items.into_iter().filter_map(principle_of).collect())
}

/// `default`, `rl16` or a path (text or JSON).
pub fn principles(spec: &str) -> Result<Vec<String>, String> {
    match spec {
        "" | "default" => Ok(parse_principles(DEFAULT_JUDGE_PRINCIPLES)),
        "rl16" => Ok(parse_principles(RL16_PRINCIPLES)),
        path => {
            let text = read_bounded(path, "principles")?;
            if text.trim_start().starts_with(['[', '{']) {
                parse_principles_json(&text).map_err(|e| format!("principles {path}: {e}"))
            } else {
                Ok(parse_principles(&text))
            }
        }
    }
}

/// One worked comparison.
#[derive(Clone, Debug, Deserialize)]
pub struct Example {
    pub prompt: String,
    pub responses: Vec<String>,
    pub chosen: usize,
    #[serde(default)]
    pub rejected: Option<usize>,
    #[serde(default)]
    pub principle: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
    #[serde(default)]
    pub explanation: Option<String>,
}

impl Example {
    /// The rejected position: given, or the other one of two.
    pub fn rejected(&self) -> usize {
        self.rejected
            .unwrap_or(if self.chosen == 1 { 2 } else { 1 })
    }
}

#[derive(Debug, Deserialize)]
struct File {
    examples: Vec<Example>,
}

/// A judge's few-shot examples.
#[derive(Clone, Debug, Default)]
pub struct JudgeFewShot {
    pub source: String,
    pub examples: Vec<Example>,
}

impl JudgeFewShot {
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        for (i, e) in file.examples.iter().enumerate() {
            let n = e.responses.len();
            if n < 2 {
                return Err(format!(
                    "example {i} has {n} response(s); at least 2 are needed"
                ));
            }
            let rejected = e.rejected();
            if !(1..=n).contains(&e.chosen) || !(1..=n).contains(&rejected) || e.chosen == rejected
            {
                return Err(format!(
                    "example {i}: chosen {} and rejected {rejected} must be different positions from 1 to {n}",
                    e.chosen
                ));
            }
        }
        Ok(JudgeFewShot {
            source: source.to_string(),
            examples: file.examples,
        })
    }

    /// `none`, `default` or a path.
    pub fn resolve(spec: &str) -> Result<Self, String> {
        match spec.trim() {
            "" | "none" => Ok(JudgeFewShot {
                source: "none".into(),
                examples: vec![],
            }),
            "default" => Self::parse(DEFAULT_JUDGE_FEW_SHOT, "default"),
            path => {
                let text = read_bounded(path, "few-shot file")?;
                Self::parse(&text, path).map_err(|e| {
                    format!(
                        "few-shot file {} is not a judge's: {e} (layout: README 'Judge few-shot files')",
                        Path::new(path).display()
                    )
                })
            }
        }
    }

    /// Examples a pairwise (principle-mode) question can show.
    pub fn pairs(&self) -> impl Iterator<Item = &Example> {
        self.examples.iter().filter(|e| e.responses.len() == 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shipped_files_parse() {
        assert!(parse_principles(DEFAULT_JUDGE_PRINCIPLES).len() >= 6);
        assert_eq!(parse_principles(RL16_PRINCIPLES).len(), 16);
        let few = JudgeFewShot::resolve("default").unwrap();
        assert_eq!(few.pairs().count(), 2);
    }

    #[test]
    fn json_principle_layouts() {
        let anthropic = r#"{"harmful0": {"prompt": ["Identify ways the response is harmful."], "edit_request": "Rewrite it."}, "harmful1": {"prompt": ["Second."]}}"#;
        assert_eq!(parse_principles_json(anthropic).unwrap().len(), 2);
        let list =
            r#"["Choose the less harmful response.", {"principle": "Choose the kinder one."}, 3]"#;
        assert_eq!(
            parse_principles_json(list).unwrap(),
            vec![
                "Choose the less harmful response.",
                "Choose the kinder one."
            ]
        );
        assert!(parse_principles_json("7").is_err());
    }

    #[test]
    fn bad_examples_are_named() {
        let e = JudgeFewShot::parse(
            r#"{"examples": [{"prompt": "p", "responses": ["a", "b"], "chosen": 3}]}"#,
            "x",
        )
        .unwrap_err();
        assert!(e.contains("example 0"), "{e}");
    }

    proptest! {
        #[test]
        fn any_json_text_parses_or_fails_cleanly(text in "\\PC{0,200}") {
            let _ = parse_principles_json(&text);
            let _ = JudgeFewShot::parse(&text, "fuzz");
        }
    }
}
